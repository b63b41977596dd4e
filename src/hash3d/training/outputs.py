"""The trial folder and what goes in it: configs, cmd.txt, images, videos and csv_logs/metrics.csv.

    outputs/<name>/<tag>@YYYYMMDD-HHMMSS/
        configs/parsed.yaml   the validated config, resolved (loading it gives the same config back)
        configs/raw.yaml      the --config file as given
        cmd.txt               the command line
        ckpts/                last.ckpt, epoch=0-step=N.ckpt
        save/                 it{N}-{i}.png (validation), it{N}-test/{i}.png + it{N}-test.mp4, it{N}-export/
        csv_logs/metrics.csv  one row per logged step: loss, lr, it/s, cache hits and UNet calls saved
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("hash3d")
from PIL import Image


@dataclass(frozen=True)
class TrialDir:
    root: Path

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def ckpts(self) -> Path:
        return self.root / "ckpts"

    @property
    def save(self) -> Path:
        return self.root / "save"

    @property
    def csv_logs(self) -> Path:
        return self.root / "csv_logs"

    @property
    def metrics(self) -> Path:
        return self.csv_logs / "metrics.csv"

    @property
    def last_ckpt(self) -> Path:
        return self.ckpts / "last.ckpt"

    def step_ckpt(self, step: int) -> Path:
        return self.ckpts / f"epoch=0-step={step}.ckpt"

    def create(self) -> Path | None:
        """Make the folders; returns the topmost folder this call created (None when the trial folder existed)."""
        created = None
        for folder in (self.root, *self.root.parents):
            if folder.exists():
                break
            created = folder
        for d in (self.configs, self.ckpts, self.save, self.csv_logs):
            d.mkdir(parents=True, exist_ok=True)
        return created

    @contextmanager
    def removed_on_failure(self) -> Iterator[None]:
        """Create the folders; if the block fails before a result was written (say, a model that does not load),
        remove what this created, so a failed run leaves nothing behind."""
        created = self.create()
        try:
            yield
        except BaseException:
            if created is not None and not self.has_results():
                remove_tree(created)
            raise

    def has_results(self) -> bool:
        """Whether a checkpoint or a rendered/exported file was written (configs and logs alone are no result)."""
        return any(p.is_file() for d in (self.ckpts, self.save) if d.is_dir() for p in d.rglob("*"))

    def write_configs(self, parsed_yaml: str, raw_yaml: str | None) -> None:
        (self.configs / "parsed.yaml").write_text(parsed_yaml)
        if raw_yaml is not None:
            (self.configs / "raw.yaml").write_text(raw_yaml)

    def write_cmd(self, argv: Sequence[str], args: Mapping[str, Any]) -> None:
        (self.root / "cmd.txt").write_text(" ".join(argv) + "\n" + repr(dict(args)) + "\n")


# ---------------------------------------------------------------------- images
def _as_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[B, H, W, C] / [H, W, C] / [H, W] in [0, 1] (or uint8) -> float array [B, H, W, 3]."""
    arr = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None, ..., None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image must be [B, H, W, C] or [H, W, C] with C in (1, 3, 4); got shape {image.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3] * arr[..., 3:] + (1 - arr[..., 3:])  # RGBA on white
    return np.nan_to_num(arr.astype(np.float32), nan=0.0)


def compose_views(images: Mapping[str, torch.Tensor | np.ndarray]) -> list[np.ndarray]:
    """{name: [B, H, W, C]} -> B uint8 frames [H, sum W, 3], the images side by side in the mapping's order."""
    if not images:
        raise ValueError("an evaluation step returned no images")
    parts = [_as_hwc(v) for v in images.values()]
    batch, height = parts[0].shape[0], parts[0].shape[1]
    for name, p in zip(images, parts):
        if p.shape[0] != batch or p.shape[1] != height:
            raise ValueError(
                f"image '{name}' has shape {p.shape[:3]}, but every image of a step needs batch {batch} and height {height}"
            )
    row = np.concatenate(parts, axis=2)
    return [np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8) for f in row]


def save_image(path: Path, frame: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path)


def save_video(path: Path, frames: Sequence[np.ndarray], fps: int = 30) -> Path | None:
    """H.264 mp4 through imageio's ffmpeg (frames padded to even sizes, which yuv420p needs); the path written, or
    None when there are no frames or imageio-ffmpeg is missing (a warning then: the run's other outputs stand)."""
    import importlib.util

    import imageio.v2 as imageio

    if not frames:
        return None
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        logger.warning("no video written to %s: imageio-ffmpeg is not installed (fix: pip install imageio-ffmpeg)", path)
        return None
    h, w = frames[0].shape[:2]
    ph, pw = h % 2, w % 2
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(
        str(path), format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=1, ffmpeg_log_level="error", pixelformat="yuv420p"
    )
    try:
        for frame in frames:
            if ph or pw:
                frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
            writer.append_data(frame)
    finally:
        writer.close()
    return path


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------- metrics
class MetricsLogger:
    """csv_logs/metrics.csv: rows of scalars keyed by step; new columns rewrite the file, otherwise rows are appended."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = ["step"]
        self.written = 0
        self.written_columns: list[str] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if int(float(row.get("step", "inf"))) <= resume_step:
                            self._add({k: v for k, v in row.items() if v != ""})
                    except ValueError:
                        continue
            self.written_columns = []  # rewrite the kept rows on the first flush

    def _add(self, row: dict[str, Any]) -> None:
        for key in row:
            if key not in self.columns:
                self.columns.append(key)
        self.rows.append(row)

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        row: dict[str, Any] = {"step": step}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    continue
                value = value.item()
            if isinstance(value, (int, float, bool)):
                row[key] = value
        self._add(row)

    def flush(self) -> None:
        if self.columns == self.written_columns and self.written == len(self.rows):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.columns != self.written_columns:
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.columns)
                w.writeheader()
                w.writerows(self.rows)
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writerows(self.rows[self.written :])
        self.written = len(self.rows)
        self.written_columns = list(self.columns)
