"""A mesh from 3D Gaussians: opacity field on a grid -> marching cubes -> clean-up -> decimation -> vertex colours.

DreamGaussian's recipe (stage 1 `extract_mesh`): the field is ρ(x) = Σᵢ oᵢ·exp(−½ (x−μᵢ)ᵀ Σᵢ⁻¹ (x−μᵢ)) over
Gaussians with opacity > 0.005, sampled on a 128³ grid over the box that holds their centres, recentred and
scaled so that its longest side fills 1.8 of the [−1, 1] grid; the surface is the level set ρ = 1
(density_thresh). Here each Gaussian is cut off at Mahalanobis distance 3 (beyond, its contribution is below
1.2 %·oᵢ), and the grid is padded with one layer of zero density so that a surface reaching the box is closed
there instead of left open.

Clean-up and decimation: upstream cleans and remeshes with pymeshlab (isotropic remesh 0.015, not done here);
here components with fewer than 1 % of the faces are dropped (threestudio's rule, shared with
`hash3d.scene.isosurface`), then the mesh is decimated to 1e5 faces with `fast-simplification` when it is
installed (`pip install fast-simplification`, in the `mesh` extra; otherwise the step is skipped with a
warning). Vertex colours are the field-weighted mean of the Gaussians' degree-0 colours, Σ wᵢcᵢ / Σ wᵢ.

The result is a `hash3d.scene.isosurface.Mesh`, so `hash3d.export.mesh_files.export_mesh` writes it; pass
`field=GaussianField.from_model(model)` there to bake a UV texture from the same colour field.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import Tensor

from hash3d.splatting import quat_to_rotmat
from hash3d.scene.field import FieldOutput
from hash3d.scene.isosurface import Mesh, NoSurfaceError, marching_cubes, remove_small_components

logger = logging.getLogger(__name__)

__all__ = ["GaussianMeshConfig", "GaussianField", "gaussian_density_grid", "extract_gaussian_mesh"]


@dataclasses.dataclass
class GaussianMeshConfig:
    """Knobs of `extract_gaussian_mesh`. Defaults: DreamGaussian stage 1 (128³, density_thresh 1, 1e5 faces)."""

    resolution: int = 128
    """Grid points per axis."""
    density_threshold: float = 1.0
    """Iso level of the opacity field."""
    box_fill: float = 1.8
    """The centres' bounding box is scaled so that its longest side spans box_fill of the grid's [−1, 1]."""
    min_opacity: float = 0.005
    """Gaussians below this opacity are ignored."""
    cutoff_sigma: float = 3.0
    """Each Gaussian contributes within Mahalanobis distance cutoff_sigma of its centre."""
    min_component_fraction: float = 0.01
    """Connected components with fewer than this fraction of the faces are removed (0: keep all)."""
    decimate_target: int | None = 100_000
    """Decimate to this many faces when there are more (None: never)."""
    blocks_per_axis: int = 8
    """The field is evaluated block by block, each with only the Gaussians that reach it."""
    max_chunk_elements: int = 1 << 22
    """At most this many (point, Gaussian) pairs per evaluation chunk."""


class GaussianField:
    """The Gaussians' opacity field as a `hash3d.scene.field.RadianceField`: density ρ(x) and albedo = the
    ρ-weighted mean degree-0 colour (grey where ρ = 0). No gradients."""

    def __init__(
        self,
        means: Tensor,  # [G, 3]
        quats: Tensor,  # [G, 4] wxyz
        scales: Tensor,  # [G, 3] activated
        opacities: Tensor,  # [G] activated
        colors: Tensor | None = None,  # [G, 3] in [0, 1]; None = grey
        cutoff_sigma: float = 3.0,
        blocks_per_axis: int = 8,
        max_chunk_elements: int = 1 << 22,
    ):
        with torch.no_grad():
            self.means = means.detach().double()
            self.opacities = opacities.detach().double()
            self.colors = (colors.detach().double() if colors is not None else torch.full_like(self.means, 0.5)).clamp(0, 1)
            self.quats = quats.detach().double()
            self.scales = s = scales.detach().double()
            R = quat_to_rotmat(self.quats)  # columns are the local axes
            A = (R / s.clamp_min(1e-12)[:, None, :] ** 2) @ R.transpose(-1, -2)  # Σ⁻¹  [G, 3, 3]
            self._A = A
            # q(x) = (x−μ)ᵀA(x−μ) = [x², y², z², 2xy, 2xz, 2yz]·a − 2x·(Aμ) + μᵀAμ: two matrix products per block
            self._quad = torch.stack([A[:, 0, 0], A[:, 1, 1], A[:, 2, 2], A[:, 0, 1], A[:, 0, 2], A[:, 1, 2]], 1)
            self._reach = cutoff_sigma * s.max(dim=-1).values  # [G] culling box half size
        self.cutoff_sigma = cutoff_sigma
        self.blocks_per_axis = blocks_per_axis
        self.max_chunk_elements = max_chunk_elements
        self.radius = float(((self.means.abs() + self._reach[:, None]).max()) if len(self.means) else 1.0)

    @classmethod
    def from_model(cls, model, min_opacity: float = 0.0, **kwargs) -> "GaussianField":
        """From a `hash3d.scene.gaussians.GaussianModel` (colours from its degree-0 SH term), keeping Gaussians
        with opacity > min_opacity."""
        with torch.no_grad():
            keep = model.opacities > min_opacity
            return cls(model.means[keep], model.quats[keep], model.scales[keep], model.opacities[keep], model.rgb[keep], **kwargs)

    def subset(self, keep: Tensor) -> "GaussianField":
        """The field of the Gaussians where `keep` [G] is True."""
        return GaussianField(
            self.means[keep], self.quats[keep], self.scales[keep], self.opacities[keep], self.colors[keep],
            self.cutoff_sigma, self.blocks_per_axis, self.max_chunk_elements,
        )  # fmt: skip

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @torch.no_grad()
    def evaluate(self, points: Tensor, with_colors: bool = True) -> tuple[Tensor, Tensor | None]:
        """points [P, 3] -> density [P] and Σ wᵢcᵢ [P, 3] (unnormalised; None unless with_colors), float64."""
        pts_all = points.detach().to(self.means.device, torch.float64)
        P = pts_all.shape[0]
        dens = pts_all.new_zeros(P)
        acc = pts_all.new_zeros(P, 3) if with_colors else None
        if P == 0 or self.num_gaussians == 0:
            return dens, acc
        nb = max(1, self.blocks_per_axis)
        lo, hi = pts_all.min(0).values, pts_all.max(0).values
        size = (hi - lo).clamp_min(1e-9) / nb
        cell = ((pts_all - lo) / size).floor().clamp(0, nb - 1).long()  # [P, 3]
        block_id = (cell[:, 0] * nb + cell[:, 1]) * nb + cell[:, 2]
        order = torch.argsort(block_id)
        bounds = torch.searchsorted(block_id[order], torch.arange(nb**3 + 1, device=pts_all.device)).tolist()
        cut = self.cutoff_sigma**2
        for b in range(nb**3):
            s, e = bounds[b], bounds[b + 1]
            if s == e:
                continue
            pid = order[s:e]
            pts = pts_all[pid]
            bmin, bmax = pts.min(0).values, pts.max(0).values
            reach = self._reach[:, None]
            gid = torch.nonzero(((self.means + reach >= bmin) & (self.means - reach <= bmax)).all(-1)).squeeze(1)
            if gid.numel() == 0:
                continue
            origin = (bmin + bmax) / 2  # local coordinates keep the expansion well conditioned
            x = pts - origin  # [p, 3]
            feats = torch.stack(
                [x[:, 0] ** 2, x[:, 1] ** 2, x[:, 2] ** 2, 2 * x[:, 0] * x[:, 1], 2 * x[:, 0] * x[:, 2], 2 * x[:, 1] * x[:, 2]], 1
            )  # [p, 6]
            step = max(1, self.max_chunk_elements // pts.shape[0])
            for g0 in range(0, gid.numel(), step):
                g = gid[g0 : g0 + step]
                mu = self.means[g] - origin  # [g, 3]
                Amu = (self._A[g] @ mu[:, :, None])[..., 0]  # [g, 3]
                q = feats @ self._quad[g].T - 2.0 * (x @ Amu.T) + (mu * Amu).sum(-1)[None]  # [p, g]
                w = self.opacities[g][None] * torch.exp(-0.5 * q.clamp_min(0))
                w = torch.where(q <= cut, w, torch.zeros_like(w))
                dens[pid] += w.sum(1)
                if acc is not None:
                    acc[pid] += w @ self.colors[g]
        return dens, acc

    def forward_density(self, points: Tensor) -> Tensor:
        """points [N, 3] -> density [N, 1] (float32, on the points' device)."""
        dens, _ = self.evaluate(points, with_colors=False)
        return dens.to(points.device, torch.float32)[:, None]

    def __call__(self, points: Tensor, with_normal: bool = False) -> FieldOutput:
        dens, acc = self.evaluate(points, with_colors=True)
        albedo = torch.where(dens[:, None] > 1e-12, acc / dens.clamp_min(1e-12)[:, None], torch.full_like(acc, 0.5))
        return FieldOutput(
            density=dens.to(points.device, torch.float32)[:, None],
            albedo=albedo.clamp(0, 1).to(points.device, torch.float32),
        )


@torch.no_grad()
def gaussian_density_grid(field: GaussianField, config: GaussianMeshConfig | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """DreamGaussian's grid: resolution³ points over the centres' box scaled by 1/box_fill about its centre ->
    (density [R, R, R] indexed [x, y, z], float32 CPU; box min [3]; box max [3])."""
    cfg = config or GaussianMeshConfig()
    means = field.means
    center = (means.min(0).values + means.max(0).values) / 2
    half = (means.max(0).values - means.min(0).values).max().clamp_min(1e-6) / cfg.box_fill
    lo, hi = center - half, center + half
    R = cfg.resolution
    axes = [torch.linspace(float(lo[i]), float(hi[i]), R, dtype=torch.float64, device=means.device) for i in range(3)]
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    dens, _ = field.evaluate(pts, with_colors=False)
    return dens.reshape(R, R, R).float().cpu(), lo.cpu(), hi.cpu()


@torch.no_grad()
def extract_gaussian_mesh(gaussians, config: GaussianMeshConfig | None = None) -> Mesh:
    """Gaussians (a `GaussianModel` or a `GaussianField`) -> `Mesh` with vertex colours (see the module
    docstring). Raises `NoSurfaceError` (a ValueError) when the field never reaches the threshold."""
    cfg = config or GaussianMeshConfig()
    if isinstance(gaussians, GaussianField):
        field = gaussians.subset(gaussians.opacities > cfg.min_opacity)
    else:
        field = GaussianField.from_model(
            gaussians, cfg.min_opacity, cutoff_sigma=cfg.cutoff_sigma, blocks_per_axis=cfg.blocks_per_axis,
            max_chunk_elements=cfg.max_chunk_elements,
        )  # fmt: skip
    if field.num_gaussians == 0:
        raise NoSurfaceError(f"no Gaussian has opacity above {cfg.min_opacity}: nothing to mesh", None)

    grid, lo, hi = gaussian_density_grid(field, cfg)
    if not float(grid.max()) > cfg.density_threshold:
        raise NoSurfaceError(
            f"no surface at density threshold {cfg.density_threshold:g}: the Gaussians' opacity field peaks at "
            f"{float(grid.max()):.4g} on the {cfg.resolution}³ grid (lower the threshold, or train longer)",
            float(grid.max()) / 2,
        )
    spacing = (hi - lo) / (cfg.resolution - 1)
    grid = torch.nn.functional.pad(grid, (1, 1, 1, 1, 1, 1))  # zero border: the surface closes at the box
    verts, faces = marching_cubes(grid, cfg.density_threshold, lo - spacing, hi + spacing)
    verts, faces = remove_small_components(verts, faces, cfg.min_component_fraction)
    if len(faces) == 0:
        raise NoSurfaceError("only tiny components remained after marching cubes", None)

    if cfg.decimate_target is not None and len(faces) > cfg.decimate_target:
        try:
            import fast_simplification  # noqa: PLC0415
        except ImportError:
            logger.warning(
                "mesh decimation skipped (%d faces > %d): pip install fast-simplification", len(faces), cfg.decimate_target
            )
        else:
            v, f = fast_simplification.simplify(verts.astype(np.float64), faces.astype(np.int32), target_count=int(cfg.decimate_target))
            verts, faces = remove_small_components(np.asarray(v, np.float32), np.asarray(f, np.int64), 0.0)

    vertices = torch.from_numpy(np.ascontiguousarray(verts, dtype=np.float32))
    colors = field(vertices).albedo.cpu()
    return Mesh(vertices=vertices, faces=torch.from_numpy(np.ascontiguousarray(faces, dtype=np.int64)), colors=colors)

