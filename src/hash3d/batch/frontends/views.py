"""Evaluation orbits and writing the views, shared by the front-ends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def orbit_azimuths(n: int, start: float = 0.0) -> list[float]:
    """n azimuths evenly spaced over the full circle from `start` (degrees; 360° is not repeated)."""
    return [start + i * 360.0 / n for i in range(n)]


def view_path(folder: Path, index: int) -> Path:
    return folder / f"{index:03d}.png"


def save_rgb(path: Path, rgb: torch.Tensor) -> Path:
    """[H, W, 3] (or [3, H, W]) in [0, 1] -> an 8-bit RGB PNG."""
    if rgb.ndim == 3 and rgb.shape[0] == 3 and rgb.shape[-1] != 3:
        rgb = rgb.permute(1, 2, 0)
    array = np.clip(np.round(rgb.detach().float().cpu().numpy() * 255.0), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
