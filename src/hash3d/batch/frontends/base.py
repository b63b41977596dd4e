"""What the batch needs from a front-end: check a config, train one item, render its evaluation views."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Kind
from ..errors import BatchError
from ..jobs import JobSpec

PLACEHOLDER = "__item__"
"""The item values a config is inspected with (no real item yet)."""


@dataclass(frozen=True)
class ConfigInfo:
    """A config as the batch sees it, loaded with the batch's overrides and placeholder item values."""

    kinds: tuple[Kind, ...]
    """What items it takes: ('text',), ('image',) or both."""
    digest: str
    cache: bool | None
    data: dict[str, Any]
    """The resolved config as plain data (to list the differences between two configs)."""


@dataclass
class TrainRecord:
    """What a finished training run reports."""

    steps: int
    max_steps: int
    train_s: float
    """Wall time of the training loop (model loading and output writing left out)."""
    cache: dict[str, float] = field(default_factory=dict)
    """hit_rate, queries, hits, unet_calls_saved, unet_calls_run (empty when the cache is off)."""
    outputs: str = ""
    """The run's folder (threestudio trial folder, DreamGaussian outdir)."""
    state: Any = None
    """In-memory result the views may be rendered from (not saved)."""

    @property
    def it_s(self) -> float | None:
        return self.steps / self.train_s if self.train_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "max_steps": self.max_steps, "train_s": self.train_s, "it_s": self.it_s,
                "cache": self.cache, "outputs": self.outputs}


def quote(value: str) -> str:
    """A string as an OmegaConf dotlist value that reads back unchanged (YAML single quotes, interpolation escaped):
    prompts may hold ':', ',', '#', quotes or words such as 'yes' and 'null'."""
    quoted = "'" + value.replace("'", "''").replace("${", "\\${") + "'"
    from omegaconf import OmegaConf

    back = OmegaConf.to_container(OmegaConf.from_dotlist([f"k={quoted}"]), resolve=True)["k"]  # type: ignore[index]
    if back != value:
        raise BatchError(f"{value!r} cannot be passed to the config unchanged (it reads back as {back!r})")
    return quoted


def digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkout_root() -> Path:
    """The checkout holding src/hash3d (front-end folders live next to src/)."""
    return Path(__file__).resolve().parents[4]


class FrontEnd(ABC):
    name: str
    kinds: tuple[Kind, ...]
    reserved: tuple[str, ...]
    """Override keys the batch sets for each item (a user override of one of them is an error)."""

    def folder(self) -> Path | None:
        """The front-end's folder: ./<name>, the working folder itself, or <checkout>/<name>."""
        cwd = Path.cwd()
        for candidate in (cwd / self.name, cwd if cwd.name == self.name else None, checkout_root() / self.name):
            if candidate is not None and candidate.is_dir():
                return candidate
        return None

    def resolve_config(self, given: str) -> Path:
        """A config path as given, relative to the working folder or else to the front-end's folder."""
        path = Path(given).expanduser()
        if path.is_file():
            return path.resolve()
        folder = self.folder()
        if folder is not None and not path.is_absolute() and (folder / path).is_file():
            return (folder / path).resolve()
        where = f" or in {folder}" if folder is not None else ""
        configs = sorted(p.name for p in (folder / "configs").glob("*.yaml")) if folder and (folder / "configs").is_dir() else []
        hint = f" ({self.name} configs: {', '.join(configs)})" if configs else ""
        raise BatchError(f"config not found: {given} (looked in {os.getcwd()}{where}){hint}")

    def check_overrides(self, overrides: tuple[str, ...]) -> None:
        for token in overrides:
            if "=" not in token or token.startswith("=") or token.startswith("-"):
                raise BatchError(f"override {token!r} is not of the form key.sub=value")
            key = token.split("=", 1)[0].strip()
            if key in self.reserved:
                raise BatchError(f"{key} is set by the batch runner for each item: remove {token!r} from the overrides")

    @abstractmethod
    def inspect(self, config: Path, overrides: tuple[str, ...]) -> ConfigInfo:
        """Load and validate the config with the overrides (BatchError naming the config on failure)."""

    @abstractmethod
    def train(self, job: JobSpec, gpu: str | None, run_dir: Path) -> TrainRecord:
        """Train one item; gpu: a CUDA device index as seen by this process, or None for the CPU."""

    @abstractmethod
    def render_views(self, job: JobSpec, record: TrainRecord, gpu: str | None, views_dir: Path) -> list[Path]:
        """Render job.views of the trained result into views_dir/000.png, 001.png, …"""
