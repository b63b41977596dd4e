"""Experiment loggers users turn on next to the CSV log: Weights & Biases and TensorBoard (threestudio's
`system.loggers` block). Each is imported only when enabled; a missing package gives one notice and the run goes on
with the CSV log (csv_logs/metrics.csv), which is always written."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("hash3d")


@dataclass
class WandbLoggerConfig:
    enable: bool = False
    project: str = "threestudio"
    name: str | None = None
    """Run name (None, or threestudio's string 'None': the trial name)."""
    entity: str | None = None


@dataclass
class TensorBoardLoggerConfig:
    enable: bool = False
    """Write <trial>/tb_logs (event files for `tensorboard --logdir`)."""


@dataclass
class LoggersConfig:
    wandb: WandbLoggerConfig = field(default_factory=WandbLoggerConfig)
    tensorboard: TensorBoardLoggerConfig = field(default_factory=TensorBoardLoggerConfig)


def _optional(module: str, package: str, what: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        log.info("note: %s is on but %s is not installed (pip install %s): logging to csv_logs only", what, package,
                 package)  # fmt: skip
        return None


class ExtraLoggers:
    """The enabled loggers of one run: scalars every logged step, images at every validation."""

    def __init__(self, cfg: LoggersConfig, trial_root: Path, run_name: str, config: Mapping[str, Any] | None = None):
        self.tensorboard = None
        self.wandb_run = None
        self.wandb = None
        if cfg.tensorboard.enable:
            tb = _optional("torch.utils.tensorboard", "tensorboard", "system.loggers.tensorboard.enable")
            if tb is not None:
                self.tensorboard = tb.SummaryWriter(log_dir=str(trial_root / "tb_logs"))
        if cfg.wandb.enable:
            wandb = _optional("wandb", "wandb", "system.loggers.wandb.enable")
            if wandb is not None:
                name = cfg.wandb.name if cfg.wandb.name not in (None, "None") else run_name
                self.wandb = wandb
                self.wandb_run = wandb.init(
                    project=cfg.wandb.project, name=name, entity=cfg.wandb.entity, dir=str(trial_root),
                    config=dict(config or {}),
                )  # fmt: skip

    @property
    def active(self) -> bool:
        return self.tensorboard is not None or self.wandb_run is not None

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(values), step=step)

    def log_images(self, step: int, tag: str, frames: list[np.ndarray]) -> None:
        """Frames HxWx3 uint8 (one per view)."""
        if not frames:
            return
        if self.tensorboard is not None:
            for i, frame in enumerate(frames):
                self.tensorboard.add_image(f"{tag}/{i}", frame, step, dataformats="HWC")
        if self.wandb_run is not None:
            self.wandb_run.log({tag: [self.wandb.Image(frame) for frame in frames]}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
