"""DMTet geometry (threestudio's "tetrahedra-sdf-grid"): a learnable SDF and a bounded vertex deformation on a
tetrahedral grid over the object's box, meshed by marching tetrahedra, coloured by a hash-grid texture network.

The grid (`tet_grid`, unit cube) is mapped onto `isosurface_bbox`, a buffer that conversion from a coarse density
field sets to the coarse surface's grown bounding box (so the refine grid covers the object, not the whole scene).
Each grid vertex moves by at most (1/R)·tanh(deformation) in unit-cube coordinates, half a cube side. The texture
network reads world points in [−radius, radius]³ exactly as the implicit volume does, so the coarse stage's
encoding and feature network can be copied over unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..config.errors import ConfigError
from ..config.registry import register
from .field import FieldOutput
from .hash_grid import HashGrid, HashGridConfig
from .implicit_volume import contract_to_unit
from .isosurface import Mesh, NoSurfaceError, Threshold, surface_box, vertex_albedo
from .marching_tets import marching_tetrahedra
from .mlp import MLPConfig, make_mlp
from .tet_grid import tet_grid

log = logging.getLogger("hash3d")


@dataclass
class TetrahedraSDFGridConfig:
    """threestudio tetrahedra-sdf-grid options (the ones the Magic3D / Magic123 refine recipes use)."""

    radius: float = 2.0
    """The texture network's box [−radius, radius]³; must equal the coarse stage's radius."""
    isosurface_resolution: int = 128
    """Tetrahedral grid resolution (even; threestudio ships 32, 64 and 128)."""
    isosurface_deformable_grid: bool = True
    """Learn a per-vertex offset of at most half a grid cell."""
    fix_geometry: bool = False
    """Keep the SDF and the deformation fixed (texture-only refinement)."""
    n_feature_dims: int = 3
    """Channels of the feature network; the first 3 give the albedo."""
    pos_encoding_config: HashGridConfig = field(default_factory=HashGridConfig)
    mlp_network_config: MLPConfig = field(default_factory=MLPConfig)
    albedo_activation: Literal["sigmoid", "none"] = "sigmoid"

    def __post_init__(self) -> None:
        if self.radius <= 0:
            raise ValueError(f"geometry.radius must be > 0; got {self.radius}")
        if self.isosurface_resolution < 2 or self.isosurface_resolution % 2:
            raise ValueError(f"geometry.isosurface_resolution must be even and >= 2; got {self.isosurface_resolution}")
        if self.n_feature_dims < 3:
            raise ValueError(f"geometry.n_feature_dims must be >= 3 (albedo); got {self.n_feature_dims}")


@register("geometry", "tetrahedra-sdf-grid", config=TetrahedraSDFGridConfig)
class TetrahedraSDFGrid(nn.Module):
    """SDF (< 0 inside) and deformation per grid vertex + texture field; `isosurface()` gives the training mesh."""

    def __init__(self, config: TetrahedraSDFGridConfig | None = None, device: torch.device | str | None = None, **_runtime):
        super().__init__()
        self.config = cfg = config or TetrahedraSDFGridConfig()
        self.radius = float(cfg.radius)
        grid = tet_grid(cfg.isosurface_resolution)
        self.register_buffer("grid_vertices", grid.vertices.clone(), persistent=False)
        self.register_buffer("grid_tets", grid.tets.clone(), persistent=False)
        self.register_buffer("isosurface_bbox", torch.tensor([[-self.radius] * 3, [self.radius] * 3]))
        # a ball of half the box until a conversion (or a checkpoint) sets the real surface
        sdf = (grid.vertices - 0.5).norm(dim=-1, keepdim=True) - 0.25
        deformation = torch.zeros(grid.vertices.shape[0], 3)
        if cfg.fix_geometry:
            self.register_buffer("sdf", sdf)
            self.register_buffer("deformation", deformation)
        else:
            self.sdf = nn.Parameter(sdf)
            if cfg.isosurface_deformable_grid:
                self.deformation = nn.Parameter(deformation)
            else:
                self.register_buffer("deformation", deformation)
        self.encoding = HashGrid(cfg.pos_encoding_config)
        self.feature_network = make_mlp(self.encoding.n_output_dims, cfg.n_feature_dims, cfg.mlp_network_config)
        if device is not None:
            self.to(device)

    def update_step(self, global_step: int, max_steps: int | None = None) -> None:
        self.encoding.update_step(global_step, max_steps)

    def grid_positions(self) -> torch.Tensor:
        """[V, 3] world positions of the (deformed) grid vertices."""
        unit = self.grid_vertices
        if self.config.isosurface_deformable_grid:
            unit = unit + torch.tanh(self.deformation) / self.config.isosurface_resolution
        lo, hi = self.isosurface_bbox[0], self.isosurface_bbox[1]
        return lo + unit * (hi - lo)

    def isosurface(self) -> Mesh:
        """The training mesh: vertices differentiable in the SDF and the deformation. NoSurfaceError when empty."""
        vertices, faces = marching_tetrahedra(self.grid_positions(), self.grid_tets, self.sdf)
        if faces.shape[0] == 0:
            raise NoSurfaceError(
                "the DMTet SDF has no zero crossing: the mesh is empty (every grid vertex is on one side)", None
            )
        return Mesh(vertices, faces)

    @torch.no_grad()
    def extract_mesh(self) -> Mesh:
        """The mesh for export: detached, on the CPU, with albedo vertex colours."""
        mesh = self.isosurface()
        vertices = mesh.vertices.detach()
        return Mesh(vertices.float().cpu(), mesh.faces.cpu(), vertex_albedo(self, vertices).cpu())

    def albedo_from_features(self, features: torch.Tensor) -> torch.Tensor:
        rgb = features[..., :3]
        return torch.sigmoid(rgb) if self.config.albedo_activation == "sigmoid" else rgb

    def forward(self, points: torch.Tensor, with_normal: bool = False) -> FieldOutput:
        """points [N, 3] world -> albedo and features (a surface has no density; its normals come from the mesh)."""
        if with_normal:
            raise ValueError("DMTet geometry has no field normals: the mesh renderer uses the mesh's vertex normals")
        features = self.feature_network(self.encoding(contract_to_unit(points, self.radius)))
        return FieldOutput(None, self.albedo_from_features(features), None, features)

    # ------------------------------------------------------------------ conversion from a coarse stage
    @torch.no_grad()
    def initialize_from_density(self, volume, threshold: Threshold, copy_net: bool, override_key: str = "") -> float:
        """Set the SDF and `isosurface_bbox` from a density field's isosurface {density = threshold}; returns the
        threshold used ('auto' resolved). The box is the whole-box surface's bounding box grown by 10% (the coarse
        exporter's first pass); the SDF is clamp(threshold − density, −1, 1) at the grid vertices.

        copy_net: copy the field's `encoding` and `feature_network` (same shapes needed). override_key names the
        setting a user changes to pick another threshold, for the error when the threshold gives no surface.
        """
        cfg = self.config
        if abs(float(volume.radius) - self.radius) > 1e-6:
            raise ConfigError(
                f"geometry.radius is {self.radius:g} but the coarse geometry's radius is {float(volume.radius):g}: "
                "set the same radius in both stages"
            )
        fix = f"; set {override_key}=<number>" if override_key else ""
        try:
            lo, hi, value = surface_box(volume, cfg.isosurface_resolution, threshold, device=self.sdf.device)
        except NoSurfaceError as exc:
            better = f" (e.g. {exc.suggested_threshold:.4g})" if exc.suggested_threshold is not None else ""
            raise NoSurfaceError(f"converting the coarse geometry to DMTet: {exc}{fix}{better}", exc.suggested_threshold) from None
        self.isosurface_bbox.copy_(torch.stack([lo, hi]).to(self.isosurface_bbox))
        self.deformation.zero_()
        points = self.grid_positions()
        density = torch.cat([volume.forward_density(p).reshape(-1) for p in points.split(2**18)])
        sdf = (value - density).clamp(-1.0, 1.0)
        if not ((sdf < 0).any() and (sdf >= 0).any()):
            raise NoSurfaceError(
                f"converting the coarse geometry to DMTet: threshold {value:g} leaves the {cfg.isosurface_resolution}-grid "
                f"all {'inside' if (sdf < 0).all() else 'outside'} the surface{fix}", None
            )
        self.sdf.copy_(sdf[:, None].to(self.sdf))
        if copy_net:
            for name in ("encoding", "feature_network"):
                source, target = getattr(volume, name).state_dict(), getattr(self, name)
                shapes = {k: tuple(v.shape) for k, v in target.state_dict().items()}
                if {k: tuple(v.shape) for k, v in source.items()} != shapes:
                    key = "pos_encoding_config" if name == "encoding" else "mlp_network_config"
                    raise ConfigError(
                        f"cannot inherit the coarse stage's {name}: its shapes differ; give system.geometry.{key} the "
                        "coarse config's values (or set system.geometry_convert_inherit_texture=false)"
                    )
                target.load_state_dict(source)
        log.info("DMTet from the coarse density: threshold %.4g, box %s to %s", value, lo.tolist(), hi.tolist())
        return value
