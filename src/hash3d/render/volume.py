"""NeRF volume renderer (threestudio's "nerf-volume-renderer"), functional and pure torch.

A render marches each ray at a fixed step (1.732·2·r / num_samples_per_ray) through the box [−r, r]³, drops the
intervals in empty cells of an optional occupancy grid and, optionally, those whose alpha (from a density-only
pass without gradients) is below a threshold, then evaluates the field once on the surviving samples and
composites them: w_i = T_i·α_i, opacity = Σw, rgb_fg = Σw·c, depth = Σw·t, rgb = rgb_fg + bg·(1 − opacity).
Samples are packed (flat, with ray indices), so work and memory scale with the samples actually kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..data.cameras import rays as camera_rays
from ..scene.field import FieldOutput, RadianceField
from .compositing import accumulate_along_rays, render_weights
from .material import Shading, shade
from .occupancy import OccupancyGrid, OccupancyGridConfig
from .sampling import march_rays


@dataclass
class VolumeRenderConfig:
    """Volume renderer settings (threestudio nerf-volume-renderer defaults)."""

    num_samples_per_ray: int = 512
    """Sets the step: 1.732·2·radius / num_samples_per_ray (the box diagonal in this many steps)."""
    stratified: bool = True
    """In training, shift each ray's samples by a random fraction of a step."""
    prune_alpha_threshold: float = 0.01
    """Drop samples whose alpha (density-only pass, no gradient) is below this; 0 = keep all."""
    early_stop_eps: float = 1e-4
    """Also drop samples behind which the transmittance has fallen below this (0 = never); 1e-4 is nerfacc's
    OccGridEstimator default, which threestudio keeps."""
    near_plane: float = 0.0
    """Samples start no closer than this to the camera."""
    grid: OccupancyGridConfig = field(default_factory=OccupancyGridConfig)
    """Occupancy grid used when one is passed to the renderer (the caller owns and updates it)."""
    return_normal: bool = True
    """Composite normals (needs a field with normals); shading other than albedo needs them anyway."""
    eval_chunk_size: int = 160000
    """Outside training, render at most this many rays at a time (so 512×512 renders fit in memory)."""
    field_chunk_size: int = 2**19
    """Points per field call in the density-only pruning pass and, without gradients, in the main pass (bounds the
    memory of evaluation renders; with gradients the field sees all samples of the batch at once)."""
    march_chunk_elements: int = 2**22
    """Candidate samples per chunk while marching."""

    def __post_init__(self) -> None:
        if self.num_samples_per_ray < 1:
            raise ValueError(f"renderer.num_samples_per_ray must be >= 1; got {self.num_samples_per_ray}")
        if self.eval_chunk_size < 1:
            raise ValueError(f"renderer.eval_chunk_size must be >= 1; got {self.eval_chunk_size}")

    def step_size(self, radius: float) -> float:
        return 1.732 * 2.0 * radius / self.num_samples_per_ray


@dataclass
class RenderOutput:
    """Renderer output. Per-ray tensors have leading shape [R] (render_rays) or [B, H, W] (render_cameras)."""

    rgb: torch.Tensor
    """[..., C] colour composited over the background (C = 3, or the channels of a feature material)."""
    rgb_fg: torch.Tensor
    """[..., C] Σ w·colour (black background)."""
    opacity: torch.Tensor
    """[..., 1] Σ w."""
    depth: torch.Tensor
    """[..., 1] Σ w·t (not divided by the opacity, as threestudio)."""
    normal: torch.Tensor | None = None
    """[..., 3] unit world-space normal, normalise(Σ w·n); zero where nothing was hit."""
    normal_vis: torch.Tensor | None = None
    """[..., 3] (normal + 1)/2 · opacity: threestudio's comp_normal, for images and the 2D smoothness loss."""
    weights: torch.Tensor | None = None
    """[M, 1] per-sample weights (packed; None for renders split into evaluation chunks)."""
    ray_indices: torch.Tensor | None = None
    """[M] ray of each sample (index into the flattened rays)."""
    t_starts: torch.Tensor | None = None
    """[M] sample interval starts."""
    t_ends: torch.Tensor | None = None
    """[M] sample interval ends."""
    positions: torch.Tensor | None = None
    """[M, 3] sample points (e.g. for normal perturbation losses)."""
    sample_normals: torch.Tensor | None = None
    """[M, 3] field normals at the samples (orientation loss)."""
    mesh: Any = None
    """The differentiable `Mesh` a mesh renderer drew (None for volume renders); mesh regularisers read it."""

    PER_RAY = ("rgb", "rgb_fg", "opacity", "depth", "normal", "normal_vis")

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def _background(background: torch.Tensor | None, n_rays: int, like: torch.Tensor) -> torch.Tensor:
    if background is None:
        return torch.ones(n_rays, 3, dtype=like.dtype, device=like.device)
    bg = background.to(dtype=like.dtype, device=like.device)
    return bg.expand(n_rays, bg.shape[-1]) if bg.dim() == 1 else bg


def _chunk_shading(shading: Shading | None, lo: int, hi: int) -> Shading | None:
    if shading is None:
        return None
    cut = lambda v: v[lo:hi] if isinstance(v, torch.Tensor) and v.dim() == 2 else v  # noqa: E731
    return replace(shading, light_positions=cut(shading.light_positions), ambient=cut(shading.ambient), diffuse=cut(shading.diffuse))


def _density_in_chunks(field: RadianceField, points: torch.Tensor, chunk: int) -> torch.Tensor:
    if points.shape[0] == 0:
        return points.new_zeros(0)
    return torch.cat([field.forward_density(p).reshape(-1) for p in points.split(chunk)])


def _field_in_chunks(field: RadianceField, points: torch.Tensor, with_normal: bool, chunk: int) -> FieldOutput:
    if torch.is_grad_enabled() or points.shape[0] <= chunk:
        return field(points, with_normal=with_normal)
    parts = [field(p, with_normal=with_normal) for p in points.split(chunk)]
    cat = lambda name: None if getattr(parts[0], name) is None else torch.cat([getattr(o, name) for o in parts])  # noqa: E731
    return FieldOutput(cat("density"), cat("albedo"), cat("normal"), cat("features"))


def _render_packed(
    field: RadianceField,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    config: VolumeRenderConfig,
    background: torch.Tensor,
    shading: Shading | None,
    occupancy: OccupancyGrid | None,
    training: bool,
    generator: torch.Generator | None,
) -> RenderOutput:
    n_rays = rays_o.shape[0]
    step = config.step_size(field.radius)
    jitter = None
    if training and config.stratified:
        jitter = torch.rand(n_rays, device=rays_o.device, generator=generator)
    grid = occupancy if (occupancy is not None and occupancy.config.enabled) else None
    samples = march_rays(
        rays_o, rays_d, field.radius, step, config.near_plane, jitter, grid, config.march_chunk_elements
    )

    positions = samples.positions(rays_o, rays_d)
    if (config.prune_alpha_threshold > 0 or config.early_stop_eps > 0) and len(samples) > 0:
        with torch.no_grad():
            sigma = _density_in_chunks(field, positions, config.field_chunk_size)
            _, transmittance, alphas = render_weights(sigma, samples.deltas, samples.ray_indices, n_rays)
            keep = alphas >= config.prune_alpha_threshold
            if config.early_stop_eps > 0:
                keep &= transmittance >= config.early_stop_eps
            keep = keep.nonzero().squeeze(-1)  # one host sync for all the selections
            samples, positions = samples.select(keep), positions.index_select(0, keep)

    shading = shading or Shading()
    need_normal = config.return_normal or shading.needs_normals
    out = _field_in_chunks(field, positions, need_normal, config.field_chunk_size)
    sigma = out.density.reshape(-1)
    weights, _, _ = render_weights(sigma, samples.deltas, samples.ray_indices, n_rays)
    if shading.feature_map is not None:
        if out.features is None:
            raise ValueError("the material colours samples from features, but the geometry returns none")
        colors = shading.feature_map(out.features)
    else:
        colors = shade(out.albedo, out.normal, positions, samples.ray_indices, shading)

    opacity = accumulate_along_rays(weights, None, samples.ray_indices, n_rays)
    rgb_fg = accumulate_along_rays(weights, colors, samples.ray_indices, n_rays)
    depth = accumulate_along_rays(weights, samples.t_mid[:, None], samples.ray_indices, n_rays)
    normal = normal_vis = None
    if config.return_normal and out.normal is not None:
        normal = F.normalize(accumulate_along_rays(weights, out.normal, samples.ray_indices, n_rays), dim=-1)
        normal_vis = (normal + 1.0) / 2.0 * opacity
    return RenderOutput(
        rgb=rgb_fg + background * (1.0 - opacity),
        rgb_fg=rgb_fg,
        opacity=opacity,
        depth=depth,
        normal=normal,
        normal_vis=normal_vis,
        weights=weights[:, None],
        ray_indices=samples.ray_indices,
        t_starts=samples.t_starts,
        t_ends=samples.t_ends,
        positions=positions,
        sample_normals=out.normal,
    )


def render_rays(
    field: RadianceField,
    rays_o: torch.Tensor,  # [R, 3] world origins
    rays_d: torch.Tensor,  # [R, 3] world unit directions
    config: VolumeRenderConfig | None = None,
    background: torch.Tensor | None = None,  # [3] or [R, 3]; None = white
    shading: Shading | None = None,  # None = albedo
    occupancy: OccupancyGrid | None = None,
    training: bool = False,
    generator: torch.Generator | None = None,
) -> RenderOutput:
    """Volume-render a batch of rays through `field`.

    training: jitter the samples (if config.stratified) and never split into chunks. Outside training, more
    than `config.eval_chunk_size` rays are rendered chunk by chunk and only the per-ray outputs are returned.
    """
    config = config or VolumeRenderConfig()
    n_rays = rays_o.shape[0]
    background = _background(background, n_rays, rays_o)
    if training or n_rays <= config.eval_chunk_size:
        return _render_packed(field, rays_o, rays_d, config, background, shading, occupancy, training, generator)
    parts = []
    for lo in range(0, n_rays, config.eval_chunk_size):
        hi = min(lo + config.eval_chunk_size, n_rays)
        part = _render_packed(
            field, rays_o[lo:hi], rays_d[lo:hi], config, background[lo:hi], _chunk_shading(shading, lo, hi),
            occupancy, False, generator,
        )
        parts.append({k: getattr(part, k) for k in RenderOutput.PER_RAY})
    merged = {k: (torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None) for k in RenderOutput.PER_RAY}
    return RenderOutput(**merged)


def render_cameras(
    field: RadianceField,
    c2w: torch.Tensor,  # [B, 4, 4] OpenGL camera-to-world
    fovy_deg: torch.Tensor,  # [B] vertical field of view, degrees
    height: int,
    width: int,
    config: VolumeRenderConfig | None = None,
    background: torch.Tensor | None = None,  # [3], [B, 3] or [B, H, W, 3]; None = white
    shading: Shading | None = None,  # light_positions [3] or [B, 3]
    occupancy: OccupancyGrid | None = None,
    training: bool = False,
    generator: torch.Generator | None = None,
) -> RenderOutput:
    """Render B pinhole cameras (threestudio convention, `hash3d.data.cameras.rays`) -> images [B, H, W, C]."""
    n_cams = c2w.shape[0]
    origins, directions = camera_rays(c2w, fovy_deg.reshape(-1).to(c2w.device), height, width)
    rays_o, rays_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    per_pixel = height * width

    def per_ray(value):
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            return value
        value = value.to(rays_o.device)
        if value.dim() == 2:  # [B, C] per camera
            return value[:, None, :].expand(n_cams, per_pixel, value.shape[-1]).reshape(-1, value.shape[-1])
        return value.reshape(-1, value.shape[-1])  # [B, H, W, C]

    bg = per_ray(background)
    if shading is not None:
        shading = replace(
            shading,
            light_positions=per_ray(shading.light_positions),
            ambient=per_ray(shading.ambient),
            diffuse=per_ray(shading.diffuse),
        )
    out = render_rays(field, rays_o, rays_d, config, bg, shading, occupancy, training, generator)
    for name in RenderOutput.PER_RAY:
        value = getattr(out, name)
        if value is not None:
            setattr(out, name, value.reshape(n_cams, height, width, value.shape[-1]))
    return out
