"""Training: the System contract, the loop (checkpoints, exact resume, precision, validation/test renders), outputs."""

from .checkpoint import CheckpointError, check_config, config_differences, load_checkpoint
from .loop import Precision, Trainer, resolve_precision, seed_everything
from .outputs import MetricsLogger, TrialDir, compose_views, save_image, save_video
from .system import (
    OptimizerArgs,
    OptimizerConfig,
    ParamGroupConfig,
    System,
    SystemConfig,
    build_optimizer,
)

__all__ = [
    "CheckpointError",
    "MetricsLogger",
    "OptimizerArgs",
    "OptimizerConfig",
    "ParamGroupConfig",
    "Precision",
    "System",
    "SystemConfig",
    "Trainer",
    "TrialDir",
    "build_optimizer",
    "check_config",
    "compose_views",
    "config_differences",
    "load_checkpoint",
    "resolve_precision",
    "save_image",
    "save_video",
    "seed_everything",
]
