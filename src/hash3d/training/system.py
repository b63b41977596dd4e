"""The contract between the training loop and a 3D generation system (image-to-3D, text-to-3D, Gaussians).

A system is an `nn.Module` registered under kind 'system' with its config dataclass:

    @dataclass
    class Zero123SystemConfig(SystemConfig):
        geometry_type: str = "implicit-volume"
        geometry: Any = block("geometry")
        guidance_type: str = "stable-zero123-guidance"
        guidance: Any = block("guidance")
        loss: Zero123LossConfig = field(default_factory=Zero123LossConfig)

    @register("system", "zero123-system", config=Zero123SystemConfig)
    class Zero123System(System):
        def configure(self):
            self.geometry = build_block(self.cfg, "geometry", device=self.device)
        def training_step(self, batch, step): ... return {"loss": loss, "loss_sds": ...}
        def test_step(self, batch, index): ... return {"rgb": rgb, "opacity": opacity}

The loop calls, in order: `set_save_dir(trial save/ folder)` (also before validate / test / export),
`on_fit_start(datamodule)`, `configure_optimizers()`, the checkpoint restore (when resuming:
`load_checkpoint_state_dict`, `load_extra_state`, optimizer state, `load_guidance_state`), then per step
`update_step(step, max_steps)`, `training_step(batch, step)`, backward, `on_before_optimizer_step`,
optimizer step, `on_after_optimizer_step`; `validation_step` / `test_step` render views (under no_grad,
`eval()` mode; code that needs autograd there opens `torch.enable_grad()` itself);
`export(out_dir)` writes files. `global_step` is the step being trained; at `on_test_start` and in `test_step`
it is the number of steps trained (what the loop names the test files by).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..config.errors import ConfigError
from .loggers import LoggersConfig
from .lr_schedule import LRSchedulerConfig, build_scheduler


@dataclass
class OptimizerArgs:
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class ParamGroupConfig:
    """Overrides for the parameters under one attribute prefix (e.g. 'geometry.encoding')."""

    lr: float | None = None
    weight_decay: float | None = None


@dataclass
class OptimizerConfig:
    """threestudio's `system.optimizer` block: name, default args, per-module learning rates."""

    name: Literal["Adam", "AdamW", "SGD"] = "Adam"
    args: OptimizerArgs = field(default_factory=OptimizerArgs)
    params: dict[str, ParamGroupConfig] = field(default_factory=dict)
    """Module prefix -> group overrides; parameters under no listed prefix use `args` (one group named 'default')."""


@dataclass
class SystemConfig:
    """Options every system has; systems subclass it and add their blocks (geometry, guidance, loss, …)."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: LRSchedulerConfig | None = None
    """Learning-rate scheduler stepped after every optimizer step (None: constant rates)."""
    weights: str | None = None
    """Initialise the model from this checkpoint's weights (no optimizer state, step starts at 0)."""
    weights_ignore_modules: list[str] = field(default_factory=list)
    """Parameter-name prefixes not loaded from `weights`."""
    val_as_video: bool = False
    """Write each validation as save/it{N}-val.mp4 (frames deleted) instead of save/it{N}-{i}.png."""
    keep_test_frames: bool = True
    """Keep save/it{N}-test/{i}.png next to the test video."""
    video_fps: int = 30
    cleanup_after_validation_step: bool = False
    """Empty the CUDA cache after each validation view."""
    cleanup_after_test_step: bool = False
    loggers: LoggersConfig = field(default_factory=LoggersConfig)
    """Weights & Biases / TensorBoard next to the CSV log (threestudio's block; off by default)."""


def build_optimizer(module: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam/AdamW/SGD over `module`'s trainable parameters, grouped by the prefixes in `cfg.params`."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = []
    taken: set[str] = set()
    for prefix, group in cfg.params.items():
        params = [p for n, p in named if (n == prefix or n.startswith(prefix + ".")) and n not in taken]
        taken.update(n for n, _ in named if n == prefix or n.startswith(prefix + "."))
        if not params:
            raise ConfigError(f"system.optimizer.params.{prefix}: the system has no trainable parameters under '{prefix}'")
        g: dict[str, Any] = {"params": params, "name": prefix}
        if group.lr is not None:
            g["lr"] = group.lr
        if group.weight_decay is not None:
            g["weight_decay"] = group.weight_decay
        groups.append(g)
    rest = [p for n, p in named if n not in taken]
    if rest:
        groups.append({"params": rest, "name": "default"})
    if not groups:
        raise ConfigError("the system has no trainable parameters to optimise")
    a = cfg.args
    if cfg.name == "SGD":
        return torch.optim.SGD(groups, lr=a.lr, weight_decay=a.weight_decay)
    cls = torch.optim.Adam if cfg.name == "Adam" else torch.optim.AdamW
    return cls(groups, lr=a.lr, betas=a.betas, eps=a.eps, weight_decay=a.weight_decay)


class System(nn.Module):
    """Base of every system. Subclasses override `configure`, `training_step`, `test_step` (and optionally the rest)."""

    checkpoint_exclude: tuple[str, ...] = ("guidance.", "guidance_3d.", "prompt_processor.")
    """State-dict prefixes left out of checkpoints (frozen pretrained models, reloaded from their own files)."""
    automatic_optimization: bool = True
    """False: the loop neither calls backward nor steps the optimizer; `training_step` does it (it gets
    `self.optimizer`), e.g. for Gaussian densification that edits the parameter set."""

    def __init__(self, cfg: Any, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg
        self._device = torch.device(device)
        self.global_step = 0
        self.max_steps = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.save_dir: Path | None = None
        self.resuming = False  # set by the loop before on_fit_start: a checkpoint's state will be loaded after it
        self.configure()

    @property
    def device(self) -> torch.device:
        return self._device

    def move_to(self, device: str | torch.device) -> None:
        """Move the system's parameters and buffers to `device`, and make `device` say so."""
        self.to(device)
        self._device = torch.device(device)

    def set_save_dir(self, path: str | Path) -> None:
        """The trial's save/ folder (threestudio's name), for systems that write files of their own there. The
        loop sets it before any stage (fit, validate, test, export); None when the system runs outside the loop."""
        self.save_dir = Path(path)

    # ------------------------------------------------------------------ to override
    def configure(self) -> None:
        """Build the child modules (geometry, renderer, …); heavy frozen models may wait for `on_fit_start`."""

    def configure_optimizers(self) -> torch.optim.Optimizer | tuple[torch.optim.Optimizer, Any]:
        """An optimizer, or (optimizer, lr scheduler stepped once per training step)."""
        optimizer = build_optimizer(self, getattr(self.cfg, "optimizer", OptimizerConfig()))
        scheduler = getattr(self.cfg, "scheduler", None)
        return optimizer if scheduler is None else (optimizer, build_scheduler(optimizer, scheduler))

    def on_fit_start(self, datamodule: Any) -> None:
        """Before the optimizer is built and before a resume checkpoint is loaded: build lazy parts, give the guidance
        its condition image or prompt. A system whose parameter shapes change during training (Gaussians) overrides
        `load_checkpoint_state_dict` to resize them to the checkpoint's."""

    def on_fit_end(self) -> None:
        pass

    def on_test_start(self, datamodule: Any) -> None:
        """Before the test orbit is rendered (after training, or after loading a checkpoint for --test)."""

    def update_step(self, step: int, max_steps: int | None = None) -> None:
        """Step-dependent schedules. The default forwards to every direct child that has `update_step`: everything
        that changes with the step (guidance, geometry, hash grid) takes `update_step(global_step, max_steps=None)`."""
        self.global_step = step
        for child in self.children():
            if callable(getattr(child, "update_step", None)):
                child.update_step(step, max_steps)

    def training_step(self, batch: Any, step: int) -> dict[str, Any]:
        """-> {"loss": scalar tensor to minimise, **other scalars to log}."""
        raise NotImplementedError

    def validation_step(self, batch: Any, index: int) -> Mapping[str, torch.Tensor]:
        """Images of an evaluation batch (default: the same as `test_step`)."""
        return self.test_step(batch, index)

    def test_step(self, batch: Any, index: int) -> Mapping[str, torch.Tensor]:
        """Images of an evaluation batch: name -> [B, H, W, C] or [H, W, C] (C = 1 or 3) in [0, 1].

        The loop lays the images of each view side by side in the dict's order (e.g. rgb | normal | depth | opacity).
        """
        raise NotImplementedError

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """After backward (gradients unscaled), before the optimizer step."""

    def on_after_optimizer_step(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        pass

    def export(self, out_dir: Path) -> list[Path]:
        """Write the result (mesh, .ply, …) under `out_dir` and return the files written."""
        raise NotImplementedError(f"{type(self).__name__} has no export")

    # ------------------------------------------------------------------ cache statistics
    def cache_stats(self) -> dict[str, float]:
        """Hash3D cache counters summed over every child with `cache_stats()` (reads device counters: log steps only)."""
        totals: dict[str, float] = {}
        for module in self.modules():
            if module is self or not callable(getattr(module, "cache_stats", None)):
                continue
            stats = module.cache_stats()
            for key, value in (stats or {}).items():
                if key != "hit_rate" and isinstance(value, (int, float)):
                    totals[key] = totals.get(key, 0) + value
        if "queries" in totals:
            totals["hit_rate"] = totals.get("hits", 0) / totals["queries"] if totals["queries"] else 0.0
        return totals

    # ------------------------------------------------------------------ checkpoint state
    def _excluded(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.checkpoint_exclude)

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not self._excluded(k)}

    def load_checkpoint_state_dict(self, state: Mapping[str, torch.Tensor], ignore: tuple[str, ...] = ()) -> None:
        """Load a checkpoint's state dict; excluded prefixes and `ignore` prefixes are skipped, anything else must match."""
        skip = lambda k: self._excluded(k) or any(k.startswith(p) for p in ignore)  # noqa: E731
        own = {k for k in self.state_dict() if not skip(k)}
        given = {k: v for k, v in state.items() if not skip(k)}
        missing, unexpected = sorted(own - set(given)), sorted(set(given) - own)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:5])}" + (" …" if len(missing) > 5 else ""))
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected[:5])}" + (" …" if len(unexpected) > 5 else ""))
            raise KeyError("; ".join(parts))
        self.load_state_dict(given, strict=False)

    def generators(self) -> dict[str, torch.Generator]:
        """Every torch.Generator held by this module tree, by attribute path (saved for exact-step resume)."""
        found: dict[str, torch.Generator] = {}
        for prefix, module in self.named_modules():
            for attr, value in vars(module).items():
                if isinstance(value, torch.Generator):
                    found[f"{prefix}.{attr}" if prefix else attr] = value
        return found

    def extra_state(self) -> dict[str, Any]:
        """Checkpointed state besides the parameters (default: the generators' states)."""
        return {"generators": {name: g.get_state() for name, g in self.generators().items()}}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        own = self.generators()
        for name, value in state.get("generators", {}).items():
            if name in own:
                own[name].set_state(value)

    def _resumable(self) -> dict[str, nn.Module]:
        modules = self.named_modules()
        return {name: m for name, m in modules if m is not self and callable(getattr(m, "resume_state", None))}

    def guidance_state(self) -> dict[str, Any]:
        """Resume state of every child with `resume_state()` (the guidances: noise generator, Hash3D cache), by
        module path. Built lazily (on fit start) guidances are present only once built."""
        return {name: module.resume_state() for name, module in self._resumable().items()}

    def load_guidance_state(self, state: Mapping[str, Any]) -> None:
        own = self._resumable()
        for name, value in state.items():
            if name in own:
                own[name].load_resume_state(value)
