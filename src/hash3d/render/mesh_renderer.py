"""The mesh renderer for training (threestudio's "nvdiff-rasterizer"): mesh from the geometry -> rasterised
colour, opacity, normals and depth, shaded by the material, over the background, with silhouette anti-aliasing.

Visibility and barycentrics come from `rasterize_mesh` (nvdiffrast on CUDA, the pure-torch rasteriser
elsewhere); positions and vertex normals are interpolated with those barycentrics, the geometry's texture field
gives the albedo at the covered pixels, `shade` lights them, and `antialias` blends the silhouettes, against the
background and over farther parts of the mesh (which is what carries gradients to the mesh's outlines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config.registry import register
from ..data.cameras import intrinsics, world_to_camera_opencv
from ..profiling import timed
from ..scene.mesh_ops import vertex_normals
from .material import Shading, shade
from .mesh_antialias import antialias
from .mesh_raster import project_vertices, rasterize_mesh
from .volume import RenderOutput


@dataclass
class MeshRendererConfig:
    context_type: Literal["gl", "cuda"] = "cuda"
    """Accepted for threestudio configs; nvdiffrast's CUDA rasteriser is the one used (no OpenGL/EGL needed)."""
    backend: Literal["auto", "torch", "nvdiffrast"] = "auto"
    """auto: nvdiffrast for CUDA tensors when installed, else the pure-torch rasteriser."""


def _per_pixel(value, n_cams: int, n_pixels: int):
    """A per-camera [B, C] value -> per pixel [B·H·W, C]; numbers and [C] pass through."""
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        return value
    if value.dim() == 2:
        return value[:, None, :].expand(n_cams, n_pixels, value.shape[-1]).reshape(-1, value.shape[-1])
    return value.reshape(-1, value.shape[-1])


@register("renderer", "nvdiff-rasterizer", config=MeshRendererConfig)
class MeshRenderer(nn.Module):
    def __init__(self, config: MeshRendererConfig | None = None, device: torch.device | str | None = None, **_runtime):
        super().__init__()
        self.config = config or MeshRendererConfig()

    def refresh_occupancy(self, global_step: int, geometry=None, generator=None) -> bool:
        """A mesh has no occupancy grid to refresh."""
        return False

    @timed("render")
    def forward(
        self,
        geometry,
        c2w: torch.Tensor,  # [B, 4, 4] OpenGL camera-to-world
        fovy_deg: torch.Tensor,  # [B]
        height: int,
        width: int,
        background: torch.Tensor | None = None,  # [3], [B, 3] or [B, H, W, 3]; None = white
        shading: Shading | None = None,
        training: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        mesh = geometry.isosurface()
        vertices, faces = mesh.vertices, mesh.faces
        B, P = c2w.shape[0], height * width
        viewmats = world_to_camera_opencv(c2w).to(vertices)
        Ks = intrinsics(fovy_deg.reshape(-1).to(c2w.device), height, width).to(vertices)
        normals = vertex_normals(vertices, faces)
        attrs, _, meta = rasterize_mesh(
            vertices, faces, viewmats, Ks, width, height, colors=torch.cat([vertices, normals], -1), backend=self.config.backend
        )
        covered = meta.mask  # [B, H, W, 1]
        positions = attrs[..., :3]
        normal = torch.where(covered, F.normalize(attrs[..., 3:], dim=-1), torch.zeros_like(positions))

        flat_covered = covered.reshape(-1)
        ray_indices = torch.nonzero(flat_covered).squeeze(1)
        points = positions.reshape(-1, 3)[ray_indices]
        albedo = geometry(points).albedo
        if shading is not None and shading.mode != "albedo":
            per = lambda v: _per_pixel(v, B, P)  # noqa: E731
            shading = Shading(shading.mode, per(shading.light_positions), per(shading.ambient), per(shading.diffuse))
            color = shade(albedo, normal.reshape(-1, 3)[ray_indices], points, ray_indices, shading)
        else:
            color = albedo
        rgb_fg = torch.zeros(B * P, 3, dtype=color.dtype, device=color.device).index_put((ray_indices,), color)
        rgb_fg = rgb_fg.reshape(B, height, width, 3)

        if background is None:
            background = torch.ones(3, device=c2w.device)
        bg = background.to(rgb_fg)
        if bg.dim() == 1:
            bg = bg.expand(B, height, width, 3)
        elif bg.dim() == 2:
            bg = bg[:, None, None, :].expand(B, height, width, 3)
        opacity = covered.to(rgb_fg.dtype)
        rgb = torch.where(covered, rgb_fg, bg)
        normal_vis = (normal + 1) / 2 * opacity
        # one anti-aliasing pass over every image the silhouette shapes
        pixels, _ = project_vertices(vertices, viewmats, Ks)
        stacked = antialias(torch.cat([rgb, opacity, normal_vis], -1), meta.face_id, pixels, faces, meta.depth)
        rgb, opacity, normal_vis = stacked[..., :3], stacked[..., 3:4], stacked[..., 4:]
        return RenderOutput(
            rgb=rgb, rgb_fg=rgb_fg, opacity=opacity, depth=meta.depth, normal=normal, normal_vis=normal_vis, mesh=mesh
        )
