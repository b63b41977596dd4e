"""threestudio's `system.scheduler` block: a learning-rate scheduler stepped once per training step.

    scheduler:
      name: SequentialLR
      interval: step
      milestones: [100]
      schedulers:
        - {name: LinearLR, args: {start_factor: 0.1, end_factor: 1.0, total_iters: 100}}
        - {name: ExponentialLR, args: {gamma: 0.99976}}

`name` is a class of `torch.optim.lr_scheduler` (SequentialLR and ChainedScheduler take `schedulers`); `args` are its
keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..config.errors import ConfigError

NESTING = ("SequentialLR", "ChainedScheduler")


@dataclass
class LRSchedulerConfig:
    name: str = "ExponentialLR"
    """A class of torch.optim.lr_scheduler (LinearLR, ExponentialLR, SequentialLR, ...)."""
    interval: Literal["step"] = "step"
    """Stepped after every optimizer step (threestudio's 'step'; epochs do not exist in these runs)."""
    args: dict[str, float | int | list[int] | list[float]] = field(default_factory=dict)
    """Keyword arguments of the scheduler class."""
    schedulers: list[LRSchedulerConfig] = field(default_factory=list)
    """The inner schedulers of SequentialLR / ChainedScheduler."""
    milestones: list[int] = field(default_factory=list)
    """SequentialLR: the steps at which the next inner scheduler takes over."""
    warmup_steps: int | None = None
    """Read by nothing here: threestudio configs keep the warm-up length in this key and interpolate it into
    `milestones` and the inner schedulers' args."""

    def __post_init__(self) -> None:
        if not isinstance(getattr(torch.optim.lr_scheduler, self.name, None), type):
            raise ValueError(f"scheduler name {self.name!r} is not a class of torch.optim.lr_scheduler")
        if self.name in NESTING and not self.schedulers:
            raise ValueError(f"scheduler {self.name} needs a list of `schedulers`")
        if self.name == "SequentialLR" and len(self.milestones) != len(self.schedulers) - 1:
            raise ValueError(
                f"SequentialLR with {len(self.schedulers)} schedulers needs {len(self.schedulers) - 1} milestones; "
                f"got {self.milestones}"
            )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: LRSchedulerConfig) -> torch.optim.lr_scheduler.LRScheduler:
    cls = getattr(torch.optim.lr_scheduler, cfg.name)
    if cfg.name == "SequentialLR":
        inner = [build_scheduler(optimizer, c) for c in cfg.schedulers]
        return cls(optimizer, schedulers=inner, milestones=list(cfg.milestones))
    if cfg.name == "ChainedScheduler":
        return cls([build_scheduler(optimizer, c) for c in cfg.schedulers])
    try:
        return cls(optimizer, **cfg.args)
    except TypeError as exc:
        raise ConfigError(f"system.scheduler {cfg.name}: bad args {cfg.args}: {exc}") from exc
