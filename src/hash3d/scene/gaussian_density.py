"""Adaptive density control of 3D Gaussians (3DGS clone / split / prune / opacity reset) as a strategy.

gsplat's `Strategy` shape: `GaussianDensifyStrategy` is a dataclass of knobs; `initialize_state()` returns a
`DensifyState` that the caller owns and passes back every step; `step_pre_backward` / `step_post_backward`
do the work. Parameters are an `nn.ParameterDict` using `hash3d.scene.gaussians` names (means, sh0, shN,
opacities, scales, quats); the optimiser has one group per parameter (found by identity), and its
per-Gaussian state (Adam's exp_avg / exp_avg_sq) is sliced and extended together with the parameters, new
Gaussians starting from zero moments.

One training step::

    rgb, alpha, meta = rasterize_splats(model.splats(), viewmats, Ks, W, H, bg)
    strategy.step_pre_backward(meta)          # keep the gradient of meta.means2d
    loss.backward()
    optimizer.step(); optimizer.zero_grad(set_to_none=True)
    strategy.step_post_backward(model.params, optimizer, state, step, meta)

(`step_post_backward` reads `meta.means2d.grad`, so it may also run before `optimizer.step()`, as the
upstream loops do.)

Statistics (3DGS): for every Gaussian, the norm of the gradient of its projected mean in NDC units
(pixel gradient × (W/2, H/2)) is summed over the views that saw it, and the views are counted; at a
refinement the mean gradient decides: ≥ `grad_threshold` and small (max scale, or the norm of the scales
with `size_measure="norm"`, ≤ percent_dense·extent) → cloned (an exact copy), ≥ threshold and large → split
into 2 samples drawn from the Gaussian, scales ÷ 1.6, the original removed. Then Gaussians with opacity
< `min_opacity` (and optionally too large ones) are pruned, and the statistics restart from zero. An opacity reset
(every `opacity_reset_every` steps) clamps the opacities to a small value (3DGS) or scales them by a factor
(threestudio-3dgs); Adam's moments of the opacities restart at zero.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from hash3d.splatting import RasterMeta, quat_to_rotmat

__all__ = [
    "DensifyState",
    "DensifyReport",
    "GaussianDensifyStrategy",
    "update_params_and_optimizer",
    "remove_gaussians",
    "append_gaussians",
    "reset_opacities",
]


@dataclasses.dataclass
class DensifyState:
    """Running statistics since the last refinement (None until the first update), all [N]."""

    grad2d: Tensor | None = None  # Σ ‖∂L/∂means2d‖ in NDC units
    count: Tensor | None = None  # number of samples added to grad2d
    max_radii: Tensor | None = None  # largest footprint radius seen, pixels

    def resize(self, n: int, device: torch.device) -> None:
        """Start over with zeros for n Gaussians."""
        self.grad2d = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)
        self.max_radii = torch.zeros(n, device=device)

    def slice(self, keep: Tensor) -> None:
        """Keep the statistics of the Gaussians where `keep` [N] is True (after a removal)."""
        self.grad2d, self.count, self.max_radii = self.grad2d[keep], self.count[keep], self.max_radii[keep]


@dataclasses.dataclass
class DensifyReport:
    """What one `step_post_backward` did."""

    refined: bool = False
    cloned: int = 0
    split: int = 0
    pruned: int = 0
    opacity_reset: bool = False
    num_gaussians: int = 0


@dataclasses.dataclass
class GaussianDensifyStrategy:
    """3DGS adaptive density control. Defaults: DreamGaussian stage 1 (see `dreamgaussian()`,
    `gaussiandreamer()`). Steps are the caller's global step numbers; windows are inclusive."""

    grad_threshold: float = 0.01
    """Mean NDC gradient norm that triggers clone / split (DreamGaussian 0.01, 3DGS and GaussianDreamer 0.0002)."""
    percent_dense: float = 0.01
    """Clone when the size (`size_measure`) ≤ percent_dense·scene_extent, else split."""
    size_measure: Literal["max", "norm"] = "max"
    """A Gaussian's size for clone / split: its largest scale (3DGS) or the norm of its three scales
    (threestudio-3dgs); an isotropic Gaussian has its one scale on all three axes."""
    scene_extent: float = 4.0
    min_opacity: float = 0.01
    """Prune Gaussians whose opacity falls below this at every refinement."""
    stats_start: int = 100
    stats_stop: int = 3000
    """Gradient statistics are gathered at steps in [stats_start, stats_stop]."""
    refine_start: int = 100
    refine_stop: int = 3000
    refine_every: int = 100
    """Refine at steps s in [refine_start, refine_stop] with s % refine_every == 0."""
    opacity_reset_every: int | None = 700
    """Reset the opacities at steps s > 0 with s % every == 0 inside `opacity_reset_window` (None: never)."""
    opacity_reset_value: float = 0.01
    """The 3DGS reset (DreamGaussian): opacity = min(opacity, opacity_reset_value) ..."""
    opacity_reset_factor: float | None = None
    """... unless this is set: opacity = opacity · opacity_reset_factor (threestudio-3dgs: 0.9)."""
    opacity_reset_window: Literal["stats", "prune"] = "stats"
    """"stats": a reset step must lie in the statistics window (3DGS); "prune": it must be a step of the separate
    prune schedule (`prune_every`), the reset following the pruning (threestudio-3dgs resets in its prune branch)."""
    prune_world_scale: float | None = 0.1
    """Also prune Gaussians whose max scale exceeds prune_world_scale·scene_extent (None: off) ..."""
    prune_world_scale_start: int = 0
    """... from this step on."""
    prune_screen_size: float | None = None
    """Also prune Gaussians whose footprint radius exceeded this many pixels since the last refinement.
    Upstream passes max_screen_size (DreamGaussian 1, GaussianDreamer 20) but its record of radii is zeroed by
    the densification just before the check, so it never fires there; None reproduces that."""
    split_count: int = 2
    split_scale_divisor: float = 1.6
    """Scales of split children are divided by this (3DGS: 0.8·split_count)."""
    split_std_divisor: float = 1.0
    """Split children are drawn from N(0, scale / split_std_divisor) around the parent (3DGS: 1; threestudio-3dgs
    divides by split_count)."""
    prune_every: int | None = None
    """None: pruning is part of every refinement (3DGS). Else pruning has its own schedule, after the step's
    refinement: at steps s in [prune_start, prune_stop] with s % prune_every == 0 (threestudio-3dgs)."""
    prune_start: int = 0
    prune_stop: int = 0
    cap_gaussians: int | None = None
    """threestudio-3dgs' `max_num`: a step that starts with at least cap_gaussians + 100 Gaussians keeps a random
    cap_gaussians of them and gathers no statistics (None: no cap)."""
    max_gaussians: int | None = None
    """No cloning or splitting once the model has this many Gaussians (None: unbounded)."""
    view_reduction: Literal["per_view", "sum"] = "per_view"
    """"per_view" (3DGS, DreamGaussian): each camera that saw a Gaussian adds one sample;
    "sum" (GaussianDreamer): gradients are summed over the cameras of the step, one sample per step."""
    cameras_averaged: bool = False
    """Set when the loss is a mean over the C cameras of a step: gradients are multiplied by C first."""

    def __post_init__(self) -> None:
        if self.opacity_reset_window == "prune" and self.opacity_reset_every and self.prune_every is None:
            raise ValueError("opacity_reset_window='prune' needs the separate prune schedule (set prune_every)")
        if self.opacity_reset_factor is not None and not 0.0 < self.opacity_reset_factor < 1.0:
            raise ValueError(f"opacity_reset_factor must be in (0, 1); got {self.opacity_reset_factor}")

    # ------------------------------------------------------------------ presets

    @classmethod
    def dreamgaussian(cls, **overrides) -> "GaussianDensifyStrategy":
        """DreamGaussian stage 1: densify every 100 steps in [100, 3000], threshold 0.01, min opacity 0.01,
        extent 4 with world-size pruning (> 0.4), opacity reset every 700 steps."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def gaussiandreamer(cls, **overrides) -> "GaussianDensifyStrategy":
        """GaussianDreamer: statistics while step < 900 summed over the batch's views, refine when step > 300
        and step % 100 == 0, threshold 0.0002, min opacity 0.05, world-size pruning (> 0.4) once step > 500,
        no opacity reset."""
        base = cls(
            grad_threshold=0.0002,
            min_opacity=0.05,
            stats_start=0,
            stats_stop=899,
            refine_start=301,
            refine_stop=899,
            refine_every=100,
            opacity_reset_every=None,
            prune_world_scale=0.1,
            prune_world_scale_start=501,
            view_reduction="sum",
        )
        return dataclasses.replace(base, **overrides)

    # ------------------------------------------------------------------ strategy interface

    def check_sanity(self, params: nn.ParameterDict | dict[str, Tensor], optimizer: torch.optim.Optimizer) -> None:
        """Every parameter has the same leading size N and sits alone in one optimiser group."""
        sizes = {name: p.shape[0] for name, p in params.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"parameters disagree on the number of Gaussians: {sizes}")
        for name, p in params.items():
            _find_group(optimizer, p, name)
        for key in ("means", "scales", "quats", "opacities"):
            if key not in params:
                raise KeyError(f"densification needs parameter {key!r}")

    def initialize_state(self) -> DensifyState:
        return DensifyState()

    def step_pre_backward(self, meta: RasterMeta) -> None:
        """Keep the gradient of the projected means (the renderers already do; harmless to repeat)."""
        if meta.means2d.requires_grad and not meta.means2d.is_leaf:
            meta.means2d.retain_grad()

    @torch.no_grad()
    def step_post_backward(
        self,
        params: nn.ParameterDict,
        optimizer: torch.optim.Optimizer,
        state: DensifyState,
        step: int,
        meta: RasterMeta | None,
        generator: torch.Generator | None = None,
    ) -> DensifyReport:
        """Gather statistics from `meta` (after backward), then refine / reset when the schedule says so."""
        n = params["means"].shape[0]
        device = params["means"].device
        if state.grad2d is None or state.grad2d.shape[0] != n:
            state.resize(n, device)
        report = DensifyReport(num_gaussians=n)
        if self.cap_gaussians is not None and n >= self.cap_gaussians + 100:
            order = torch.randperm(n, generator=generator, device=generator.device if generator is not None else device)
            keep = torch.zeros(n, dtype=torch.bool, device=device)
            keep[order[: self.cap_gaussians].to(device)] = True
            remove_gaussians(params, optimizer, keep)
            state.slice(keep)
            report.pruned = n - self.cap_gaussians
            report.num_gaussians = self.cap_gaussians
            return report
        if self.stats_start <= step <= self.stats_stop and meta is not None:
            self.update_state(state, meta)
        if self.refine_start <= step <= self.refine_stop and step % self.refine_every == 0:
            report = self.refine(params, optimizer, state, step, generator)
        if self.prunes_at(step):
            prune = self.prune_mask(params, state.max_radii, step)
            n_prune = int(prune.sum())
            if n_prune:
                remove_gaussians(params, optimizer, ~prune)
                state.slice(~prune)
            report.pruned += n_prune
        if self.resets_opacity_at(step):
            reset_opacities(params, optimizer, self.opacity_reset_value, self.opacity_reset_factor)
            report.opacity_reset = True
        report.num_gaussians = params["means"].shape[0]
        return report

    # ------------------------------------------------------------------ schedules

    def prunes_at(self, step: int) -> bool:
        """Whether `step` is a step of the separate prune schedule (never when pruning is part of refinement)."""
        if self.prune_every is None:
            return False
        return self.prune_start <= step <= self.prune_stop and step % self.prune_every == 0

    def resets_opacity_at(self, step: int) -> bool:
        """Whether `step_post_backward` at `step` resets the opacities (unless the max_num cap acts first)."""
        if not self.opacity_reset_every or step <= 0 or step % self.opacity_reset_every:
            return False
        if self.opacity_reset_window == "prune":
            return self.prunes_at(step)
        return self.stats_start <= step <= self.stats_stop

    # ------------------------------------------------------------------ pieces

    @torch.no_grad()
    def update_state(self, state: DensifyState, meta: RasterMeta) -> None:
        """Add one step's gradient statistics. `meta.means2d.grad` must be set (backward has run)."""
        grads = meta.means2d_grad_ndc()  # [C, N, 2]
        if grads is None:
            return
        if self.cameras_averaged:
            grads = grads * meta.n_cameras
        visible = meta.visible  # [C, N]
        radii = meta.radii.max(dim=-1).values.to(state.max_radii.dtype)  # [C, N]
        if self.view_reduction == "sum":
            seen = visible.any(0)  # [N]
            norm = grads.sum(0).norm(dim=-1)  # [N]
            state.grad2d += torch.where(seen, norm, torch.zeros_like(norm))
            state.count += seen.to(state.count.dtype)
        else:
            norm = grads.norm(dim=-1)  # [C, N]
            state.grad2d += torch.where(visible, norm, torch.zeros_like(norm)).sum(0)
            state.count += visible.sum(0).to(state.count.dtype)
        state.max_radii = torch.maximum(state.max_radii, (radii * visible).max(0).values)

    @torch.no_grad()
    def refine(
        self,
        params: nn.ParameterDict,
        optimizer: torch.optim.Optimizer,
        state: DensifyState,
        step: int,
        generator: torch.Generator | None = None,
    ) -> DensifyReport:
        """Clone, split, then prune (3DGS `densify_and_prune`); statistics restart from zero."""
        n0 = params["means"].shape[0]
        device = params["means"].device
        grads = state.grad2d / state.count.clamp_min(1)  # mean NDC gradient; 0 where never seen
        grow = self.max_gaussians is None or n0 < self.max_gaussians
        extent_cut = self.percent_dense * self.scene_extent
        max_radii = state.max_radii

        n_clone = n_split = 0
        if grow:
            big_grad = grads >= self.grad_threshold
            is_small = self.size(params["scales"]) <= extent_cut
            clone = big_grad & is_small
            n_clone = int(clone.sum())
            if n_clone:
                append_gaussians(params, optimizer, {k: p[clone] for k, p in params.items()})
                max_radii = torch.cat([max_radii, max_radii[clone]])
                big_grad = torch.cat([big_grad, torch.zeros(n_clone, dtype=torch.bool, device=device)])
            # the fresh clones are small and carry no gradient, so they are never split
            split = big_grad & (self.size(params["scales"]) > extent_cut)
            n_split = int(split.sum())
            if n_split:
                new = self._split_children(params, split, generator)
                append_gaussians(params, optimizer, new)
                max_radii = torch.cat([max_radii, torch.zeros(n_split * self.split_count, device=device)])
                keep = torch.cat([~split, torch.ones(n_split * self.split_count, dtype=torch.bool, device=device)])
                remove_gaussians(params, optimizer, keep)
                max_radii = max_radii[keep]

        n_prune = 0
        if self.prune_every is None:
            prune = self.prune_mask(params, max_radii, step)
            n_prune = int(prune.sum())
            if n_prune:
                remove_gaussians(params, optimizer, ~prune)
        state.resize(params["means"].shape[0], device)
        return DensifyReport(
            refined=True, cloned=n_clone, split=n_split, pruned=n_prune, num_gaussians=params["means"].shape[0]
        )

    def size(self, log_scales: Tensor) -> Tensor:
        """[N] size of each Gaussian compared with the clone / split cut (see `size_measure`)."""
        scales = torch.exp(log_scales).expand(-1, 3)
        return scales.norm(dim=-1) if self.size_measure == "norm" else scales.max(dim=-1).values

    def prune_mask(self, params: nn.ParameterDict, max_radii: Tensor, step: int) -> Tensor:
        """[N] Gaussians to prune: opacity below `min_opacity`, or too large in the world or on screen (when on)."""
        prune = torch.sigmoid(params["opacities"]) < self.min_opacity
        if self.prune_world_scale is not None and step >= self.prune_world_scale_start:
            prune |= torch.exp(params["scales"]).max(dim=-1).values > self.prune_world_scale * self.scene_extent
        if self.prune_screen_size is not None:
            prune |= max_radii > self.prune_screen_size
        return prune

    def _split_children(
        self, params: nn.ParameterDict, mask: Tensor, generator: torch.Generator | None
    ) -> dict[str, Tensor]:
        """`split_count` children per selected Gaussian, positions drawn from it, scales ÷ split_scale_divisor."""
        k = self.split_count
        scales = torch.exp(params["scales"][mask]).repeat(k, 1)  # [k·S, 3]
        rot = quat_to_rotmat(params["quats"][mask]).repeat(k, 1, 1)  # [k·S, 3, 3]
        # [k·S, 3] also for isotropic Gaussians (one scale column): offsets are 3D, the children stay isotropic
        noise = torch.randn((scales.shape[0], 3), device=scales.device, dtype=scales.dtype, generator=generator)
        offsets = (rot @ (noise * scales / self.split_std_divisor)[..., None])[..., 0]
        new = {name: p[mask].repeat((k,) + (1,) * (p.dim() - 1)) for name, p in params.items()}
        new["means"] = params["means"][mask].repeat(k, 1) + offsets
        new["scales"] = torch.log(scales / self.split_scale_divisor)
        return new

    @torch.no_grad()
    def final_prune(
        self,
        params: nn.ParameterDict,
        optimizer: torch.optim.Optimizer,
        state: DensifyState,
        min_opacity: float = 0.01,
        max_world_scale: float | None = 0.1,
    ) -> int:
        """DreamGaussian's clean-up after training (`prune(min_opacity=0.01, extent=1, ...)`): drop Gaussians with
        opacity < min_opacity or max scale > max_world_scale. Returns how many were removed."""
        prune = torch.sigmoid(params["opacities"]) < min_opacity
        if max_world_scale is not None:
            prune |= torch.exp(params["scales"]).max(dim=-1).values > max_world_scale
        n = int(prune.sum())
        if n:
            remove_gaussians(params, optimizer, ~prune)
        state.resize(params["means"].shape[0], params["means"].device)
        return n


# ----------------------------------------------------------------------------------------------
# parameter surgery that keeps the optimiser in step


def _find_group(optimizer: torch.optim.Optimizer, p: Tensor, name: str) -> tuple[dict, int]:
    for group in optimizer.param_groups:
        for i, q in enumerate(group["params"]):
            if q is p:
                return group, i
    raise KeyError(f"parameter {name!r} is not in the optimiser (make the optimiser from the same ParameterDict)")


def update_params_and_optimizer(
    params: nn.ParameterDict,
    optimizer: torch.optim.Optimizer | None,
    param_fn: Callable[[str, Tensor], Tensor],
    state_fn: Callable[[str, str, Tensor], Tensor],
    names: list[str] | None = None,
) -> None:
    """Replace each parameter by `param_fn(name, old)` (a new nn.Parameter in the dict and in its optimiser
    group) and each per-Gaussian optimiser state tensor (leading size N, e.g. exp_avg) by
    `state_fn(name, key, old)`. Scalar state (Adam's step) is kept."""
    for name in names or list(params.keys()):
        old = params[name]
        new = nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        if optimizer is not None:
            group, i = _find_group(optimizer, old, name)
            st = optimizer.state.pop(old, None)
            group["params"][i] = new
            if st is not None:
                for key, value in st.items():
                    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == old.shape[0]:
                        st[key] = state_fn(name, key, value)
                optimizer.state[new] = st
        params[name] = new


def remove_gaussians(params: nn.ParameterDict, optimizer: torch.optim.Optimizer | None, keep: Tensor) -> None:
    """Keep only the Gaussians where `keep` [N] is True (parameters and optimiser state)."""
    update_params_and_optimizer(params, optimizer, lambda _, p: p[keep], lambda _n, _k, s: s[keep])


def append_gaussians(
    params: nn.ParameterDict, optimizer: torch.optim.Optimizer | None, new: dict[str, Tensor]
) -> None:
    """Append Gaussians (raw parameter values per name); their optimiser moments start at zero."""
    update_params_and_optimizer(
        params,
        optimizer,
        lambda name, p: torch.cat([p, new[name].to(p.dtype)]),
        lambda name, _k, s: torch.cat([s, s.new_zeros((new[name].shape[0],) + s.shape[1:])]),
    )


def reset_opacities(
    params: nn.ParameterDict, optimizer: torch.optim.Optimizer | None, value: float = 0.01, factor: float | None = None
) -> None:
    """Opacity reset: opacity = min(opacity, value) (3DGS), or opacity · factor when `factor` is given
    (threestudio-3dgs); the opacity group's moments restart at zero, its step count is kept."""
    if factor is None:
        cap = torch.logit(torch.tensor(value, dtype=params["opacities"].dtype, device=params["opacities"].device))
        new = lambda _, p: torch.minimum(p, cap)  # noqa: E731
    else:
        new = lambda _, p: torch.logit(torch.sigmoid(p) * factor)  # noqa: E731
    update_params_and_optimizer(params, optimizer, new, lambda _n, _k, s: torch.zeros_like(s), names=["opacities"])
