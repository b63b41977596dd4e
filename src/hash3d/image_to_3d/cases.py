"""Held-out test cases: a procedural object the mini model never saw, its input view and ground-truth novel views.

Objects come from `hash3d.mini.objects` with ids from `HELD_OUT_ID_BASE + offset` up (training drew ids below
`HELD_OUT_ID_BASE`; the model card's own evaluation used the first 64 held-out ids, so the default offset, 2000,
keeps these cases apart from those too). Every view is rendered by the sphere tracer that made the training data
(`hash3d.mini.render`), on white, with the model card's camera: distance 3.8, vertical fov 20°.

- input view: elevation `INPUT_ELEVATION` = 15° (threestudio sign: positive = camera above), azimuth 0. The
  DreamGaussian pipeline gets it as `elevation=-15` (its sign), azimuth 0 = its input view. 15° lies inside the
  model's training range (−10…40°) and shows a little of the object's top, as a photo of an object on a table.
- ground truth: `N_VIEWS` = 16 views at elevation 30°, azimuth = input azimuth + k·22.5° (as the paper's image-to-3D
  benchmark: 16 views at 30° elevation). View 0 looks from the input's side, 15° higher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hash3d.mini.objects import HELD_OUT_ID_BASE, make_objects
from hash3d.mini.render import CAMERA_DISTANCE, FOVY_DEG, IMAGE_SIZE, on_white, render

__all__ = [
    "DEFAULT_ID_OFFSET",
    "EVAL_ELEVATION",
    "INPUT_ELEVATION",
    "N_VIEWS",
    "Case",
    "make_case",
    "case_ids",
    "save_rgba",
    "save_rgb",
]

DEFAULT_ID_OFFSET = 2000
INPUT_ELEVATION = 15.0
EVAL_ELEVATION = 30.0
N_VIEWS = 16


@dataclass
class Case:
    """One held-out object: input view (RGBA) and ground-truth views (RGB on white), both [.., 3 or 4, S, S]."""

    object_id: int
    input_rgba: torch.Tensor  # [4, S, S] straight alpha
    input_elevation: float  # threestudio degrees (positive = above)
    input_azimuth: float
    eval_elevation: float
    delta_azimuths: list[float]  # ground-truth azimuths relative to the input view (= DreamGaussian azimuths)
    gt: torch.Tensor  # [V, 3, S, S] on white

    @property
    def name(self) -> str:
        return f"object{self.object_id - HELD_OUT_ID_BASE}"

    @property
    def caption(self) -> str:
        """The object's caption in Hash3D-mini-sd's training words ('a pink sphere'), without a view suffix."""
        from hash3d.mini.text_data import captions  # imports the SD guidance: only where a caption is asked for

        return captions(make_objects(torch.tensor([self.object_id])))[0]

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """input.png (RGBA) and gt/NNN.png -> (input path, gt folder)."""
        folder = Path(folder)
        gt_dir = folder / "gt"
        gt_dir.mkdir(parents=True, exist_ok=True)
        save_rgba(self.input_rgba, folder / "input_rgba.png")
        for i, view in enumerate(self.gt):
            save_rgb(view, gt_dir / f"{i:03d}.png")
        return folder / "input_rgba.png", gt_dir


def case_ids(n_objects: int, offset: int = DEFAULT_ID_OFFSET) -> list[int]:
    if n_objects < 1 or offset < 0:
        raise ValueError(f"need n_objects >= 1 and offset >= 0; got {n_objects}, {offset}")
    return [HELD_OUT_ID_BASE + offset + i for i in range(n_objects)]


@torch.no_grad()
def make_case(
    object_id: int,
    input_elevation: float = INPUT_ELEVATION,
    input_azimuth: float = 0.0,
    eval_elevation: float = EVAL_ELEVATION,
    n_views: int = N_VIEWS,
    size: int = IMAGE_SIZE,
) -> Case:
    """Render the input view and the ground-truth orbit of held-out object `object_id` (>= HELD_OUT_ID_BASE)."""
    if object_id < HELD_OUT_ID_BASE:
        raise ValueError(f"object {object_id} is a training object: held-out ids start at {HELD_OUT_ID_BASE}")
    obj = make_objects(torch.tensor([object_id]))
    deltas = [360.0 * k / n_views for k in range(n_views)]
    elevation = torch.tensor([input_elevation] + [eval_elevation] * n_views)
    azimuth = torch.tensor([input_azimuth] + [(input_azimuth + d) % 360.0 for d in deltas])
    rgba = render(obj.take(torch.zeros(n_views + 1, dtype=torch.long)), elevation, azimuth, size=size,
                  distance=CAMERA_DISTANCE, fovy=FOVY_DEG)
    return Case(object_id, rgba[0], input_elevation, input_azimuth, eval_elevation, deltas, on_white(rgba[1:]))


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def save_rgba(rgba: torch.Tensor, path: str | Path) -> Path:
    """[4, H, W] in [0, 1] -> RGBA PNG."""
    Image.fromarray(_to_uint8(rgba), "RGBA").save(path, optimize=True)
    return Path(path)


def save_rgb(rgb: torch.Tensor, path: str | Path) -> Path:
    """[3, H, W] in [0, 1] -> RGB PNG."""
    Image.fromarray(_to_uint8(rgb), "RGB").save(path)
    return Path(path)
