"""threestudio-3dgs' `gaussian-splatting` geometry block: the one `GaussianModel` with its recipe's knobs.

The block keeps threestudio-3dgs' key names; this module turns them into what the shared Gaussian code takes:
learning rates per parameter group at a step (`learning_rates`, every rate a threestudio schedule interpolated in
log space, as upstream's `C(..., interpolation="exp")`) and a `GaussianDensifyStrategy` (`densify_strategy`).

Upstream semantics kept here:
- `scale_lr` is never read (upstream does not read it either): the scaling group's rate is `scaling_lr`.
- `opacity_reset_interval`: at a prune step s (prune_from_iter < s < prune_until_iter, s % prune_interval == 0) with
  s % opacity_reset_interval == 0, after the pruning, every opacity is multiplied by 0.9 and Adam's moments of the
  opacities restart at zero (threestudio-3dgs' `reset_opacity`, not 3DGS' clamp to 0.01). The shipped configs use
  5e7 and 1e5, beyond their runs.
- `sphere: true`: isotropic Gaussians. Upstream keeps three log scales and renders exp(their mean) on every axis;
  here the scale parameter has one column (the same trajectory under Adam up to its eps: each of upstream's columns
  gets a third of this column's gradient), read as three equal scales for rendering, densification and the .ply, whose three scale
  columns are equal (upstream writes its three raw, unequal columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..diffusion.schedule import ScheduleValue, check_schedule, schedule_value
from .gaussian_density import GaussianDensifyStrategy
from .gaussians import GaussianModel

SPLIT_COUNT = 2
OPACITY_RESET_FACTOR = 0.9


@dataclass
class GaussianSplattingConfig:
    sh_degree: int = 0
    max_num: int = 500000
    """A step that starts with max_num + 100 Gaussians or more keeps a random max_num of them."""
    position_lr: ScheduleValue = (0, 0.001, 0.00002, 1000)
    scale_lr: ScheduleValue | None = None
    """Accepted and ignored, as upstream: the scaling group's rate is `scaling_lr`."""
    scaling_lr: ScheduleValue = 0.005
    feature_lr: ScheduleValue = 0.01
    """sh0; the higher SH bands use feature_lr / 20."""
    opacity_lr: ScheduleValue = 0.05
    rotation_lr: ScheduleValue = 0.001
    densification_interval: int = 100
    prune_interval: int = 100
    opacity_reset_interval: int = 100000
    """At prune steps that are multiples of this, opacities are multiplied by 0.9 (their Adam moments restart)."""
    densify_from_iter: int = 0
    densify_until_iter: int = 1000
    """Clone / split at steps s with densify_from_iter < s < densify_until_iter and s % densification_interval == 0."""
    prune_from_iter: int = 0
    prune_until_iter: int = 1000
    """Prune at steps s with prune_from_iter < s < prune_until_iter and s % prune_interval == 0."""
    densify_grad_threshold: float = 0.01
    """Mean NDC gradient of the projected centre (over the views that saw the Gaussian) that triggers clone / split."""
    min_opac_prune: float = 0.005
    split_thresh: float = 0.02
    """Norm of the three scales (world units) up to which a Gaussian is cloned; larger ones are split (as upstream)."""
    radii2d_thresh: float = 1000.0
    """With prune_big_points: also prune Gaussians whose screen radius (pixels) exceeded this."""
    prune_big_points: bool = False
    sphere: bool = False
    """Isotropic Gaussians: one scale per Gaussian (the .ply gets three equal scale columns)."""
    color_clip: ScheduleValue = 2.0
    """The DC colour coefficients are clamped to ±color_clip when rendered (a schedule, read at each step)."""
    init_num_pts: int = 4096
    pc_init_radius: float = 0.5
    opacity_init: float = 0.05
    geometry_convert_from: str = ""
    """A 3DGS .ply to start from instead of the random ball ('' : random ball)."""
    load_ply_only_vertex: bool = False
    """Accepted for upstream configs (a .ply start here always takes every property it has)."""
    seed: int = 0
    """Seed of the random ball."""

    def __post_init__(self) -> None:
        for name in ("position_lr", "scaling_lr", "feature_lr", "opacity_lr", "rotation_lr", "color_clip"):
            check_schedule(f"geometry.{name}", getattr(self, name))
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"geometry.sh_degree must be 0..3; got {self.sh_degree}")
        if not 0 < self.opacity_init < 1:
            raise ValueError(f"geometry.opacity_init must be in (0, 1); got {self.opacity_init}")
        if self.init_num_pts < 1 or self.max_num < 1:
            raise ValueError("geometry.init_num_pts and geometry.max_num must be >= 1")
        for name in ("densification_interval", "prune_interval", "opacity_reset_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"geometry.{name} must be >= 1; got {getattr(self, name)}")
        src = self.geometry_convert_from
        if src and not src.endswith(".ply"):
            raise ValueError(f"geometry.geometry_convert_from: only a 3DGS .ply is supported here; got {src!r}")
        if src and not Path(src).is_file():
            raise ValueError(f"geometry.geometry_convert_from: no file {src}")

    def learning_rates(self, step: int) -> dict[str, float]:
        """The rate of every GaussianModel parameter group at `step`."""
        at = lambda v: schedule_value(v, step, "exp")  # noqa: E731
        feature = at(self.feature_lr)
        return {
            "means": at(self.position_lr),
            "sh0": feature,
            "shN": feature / 20.0,
            "opacities": at(self.opacity_lr),
            "scales": at(self.scaling_lr),
            "quats": at(self.rotation_lr),
        }

    def densify_strategy(self) -> GaussianDensifyStrategy:
        """threestudio-3dgs' densification as the shared strategy: statistics every step from every view that saw a
        Gaussian; clone when the norm of the scales <= split_thresh, split (2 children from N(0, scale/2), scales
        / 1.6) when larger; pruning on its own schedule, followed at multiples of opacity_reset_interval by the
        opacity reset; the max_num cap."""
        return GaussianDensifyStrategy(
            grad_threshold=self.densify_grad_threshold,
            percent_dense=self.split_thresh,
            size_measure="norm",
            scene_extent=1.0,
            min_opacity=self.min_opac_prune,
            stats_start=0,
            stats_stop=2**62,
            refine_start=self.densify_from_iter + 1,
            refine_stop=self.densify_until_iter - 1,
            refine_every=self.densification_interval,
            opacity_reset_every=self.opacity_reset_interval,
            opacity_reset_factor=OPACITY_RESET_FACTOR,
            opacity_reset_window="prune",
            prune_world_scale=None,
            prune_screen_size=self.radii2d_thresh if self.prune_big_points else None,
            split_count=SPLIT_COUNT,
            split_scale_divisor=0.8 * SPLIT_COUNT,
            split_std_divisor=float(SPLIT_COUNT),
            prune_every=self.prune_interval,
            prune_start=self.prune_from_iter + 1,
            prune_stop=self.prune_until_iter - 1,
            cap_gaussians=self.max_num,
            view_reduction="per_view",
        )


def make_gaussians(cfg: GaussianSplattingConfig, device: torch.device | str | None = None, **_runtime) -> GaussianModel:
    """The initial Gaussians: the .ply of `geometry_convert_from`, or `init_num_pts` in a ball of `pc_init_radius`;
    isotropic (one scale each, the mean log scale) when `sphere`."""
    if cfg.geometry_convert_from:
        model = GaussianModel.from_ply(cfg.geometry_convert_from, device=device)
    else:
        generator = torch.Generator().manual_seed(cfg.seed)
        model = GaussianModel.random_ball(
            cfg.init_num_pts, cfg.pc_init_radius, sh_degree=cfg.sh_degree, init_opacity=cfg.opacity_init,
            generator=generator, device=device,
        )  # fmt: skip
    return model.to_isotropic() if cfg.sphere else model


def empty_gaussians(cfg: GaussianSplattingConfig, device: torch.device | str | None = None) -> GaussianModel:
    """N = 0 Gaussians of the configured SH degree and scale columns (a checkpoint load adopts its own count)."""
    k = (cfg.sh_degree + 1) ** 2 - 1
    z = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
    scales = z(0, 1 if cfg.sphere else 3)
    return GaussianModel(z(0, 3), z(0, 1, 3), z(0, k, 3), z(0), scales, z(0, 4), active_sh_degree=0)


__all__ = ["OPACITY_RESET_FACTOR", "GaussianSplattingConfig", "empty_gaussians", "make_gaussians"]
