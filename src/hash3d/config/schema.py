"""The top-level experiment schema, shaped like threestudio's YAML (name, tag, seed, data, system, trainer, checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .typed import block

PRECISIONS = {
    32: "32",
    "32": "32",
    "32-true": "32",
    16: "16-mixed",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
}


@dataclass
class TrainerConfig:
    """The `trainer` block (the names of Lightning's Trainer arguments that threestudio configs use)."""

    max_steps: int = 1000
    """Training steps in total (a resumed run continues up to this count)."""
    val_check_interval: int = 100
    """Validate after every N training steps (0: never)."""
    precision: int | str = 32
    """32, '16-mixed' or 'bf16-mixed' (autocast on the GPU; a CPU run uses 32 and says so)."""
    log_every_n_steps: int = 1
    """Write a row of csv_logs/metrics.csv (and refresh the progress bar) every N steps."""
    num_sanity_val_steps: int = 0
    """Validation views rendered before training starts (written as it0-…)."""
    enable_progress_bar: bool = True
    gradient_clip_val: float | None = None
    """Clip the global gradient norm to this value (None: no clipping)."""
    test_after_fit: bool = True
    """`--train` renders the test orbit (video) when training ends."""
    limit_val_batches: int | None = None
    """Render at most this many validation views (None: all)."""
    limit_test_batches: int | None = None
    """Render at most this many test views (None: all)."""
    benchmark: bool = False
    """cuDNN autotuning (`torch.backends.cudnn.benchmark`, Lightning's name) for the run: each new convolution shape
    is timed once and the fastest kernel kept (the VAE encoder's convolutions)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be 32, '16-mixed' or 'bf16-mixed'; got {self.precision!r}")
        self.precision = PRECISIONS[self.precision]
        if self.max_steps < 0:
            raise ValueError(f"trainer.max_steps must be >= 0; got {self.max_steps}")
        if self.val_check_interval < 0:
            raise ValueError(f"trainer.val_check_interval must be >= 0; got {self.val_check_interval}")
        if self.log_every_n_steps < 1:
            raise ValueError(f"trainer.log_every_n_steps must be >= 1; got {self.log_every_n_steps}")


@dataclass
class CheckpointConfig:
    """The `checkpoint` block: when `ckpts/*.ckpt` files are written."""

    save_last: bool = True
    """Keep `ckpts/last.ckpt` up to date (at every periodic save and at the end of training)."""
    save_top_k: int = -1
    """How many periodic `epoch=0-step=N.ckpt` files to keep: -1 all, 0 none, k the k most recent."""
    every_n_train_steps: int | None = None
    """Write `epoch=0-step=N.ckpt` every N steps (None: only last.ckpt at the end)."""
    check_config: bool = True
    """Refuse to resume from / test a checkpoint made with a different system (or, for training, data) config."""

    def __post_init__(self) -> None:
        if self.every_n_train_steps is not None and self.every_n_train_steps < 1:
            raise ValueError(f"checkpoint.every_n_train_steps must be >= 1 or null; got {self.every_n_train_steps}")
        if self.save_top_k < -1:
            raise ValueError(f"checkpoint.save_top_k must be -1, 0 or positive; got {self.save_top_k}")


@dataclass
class ExperimentConfig:
    """A whole run: the file `--config` names, after overrides. `configs/parsed.yaml` is this tree, resolved."""

    name: str = "default"
    """Experiment name: the folder under exp_root_dir."""
    description: str = ""
    tag: str = ""
    """Trial name prefix (the trial folder is `<tag>@<timestamp>`)."""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: str = ""
    """Set when the run starts (`@YYYYMMDD-HHMMSS`); a parsed.yaml carries it, so resuming reuses the trial folder."""
    exp_root_dir: str = "outputs"
    exp_dir: str = ""
    """Filled in by the launcher: exp_root_dir/name."""
    trial_name: str = ""
    """Filled in by the launcher: tag + timestamp."""
    trial_dir: str = ""
    """Filled in by the launcher: exp_dir/trial_name."""
    resume: str | None = None
    """Checkpoint to continue training from (--train) or to load (--validate/--test/--export)."""
    data_type: str = ""
    data: Any = block("data")
    system_type: str = ""
    system: Any = block("system")
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
