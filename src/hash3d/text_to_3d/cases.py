"""Held-out text cases: a procedural object the mini models never saw, its caption and its ground-truth views.

The caption comes from the object's parameters (`hash3d.mini.text_data.captions`, the Hash3D-mini-sd training
captions' wording, without the view suffix that the guidance adds). The ground truth is the image harness's orbit
(`hash3d.image_to_3d.cases.make_case`: 16 views at elevation 30°, azimuth k·22.5°, model-card camera), with the
object in its own world frame: the caption's "front view" is azimuth 0, as in training.

A caption describes many objects (sizes, poses and proportions are not in it), so no pipeline can reach the
ground truth exactly; the scores compare pipelines, cache variants and the random-weight floor on the same cases.
By default the cases are the one-part, one-colour objects ("a pink sphere", "a blue torus"), the captions that the
model follows best (its card); `simple=False` takes every held-out object in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hash3d.image_to_3d.cases import DEFAULT_ID_OFFSET, EVAL_ELEVATION, N_VIEWS, make_case, save_rgb
from hash3d.mini.objects import HELD_OUT_ID_BASE, make_objects
from hash3d.mini.text_data import captions

__all__ = ["TextCase", "is_simple", "make_text_case", "text_case_ids"]

_SEARCH = 4096
"""How many held-out ids past the offset `text_case_ids` looks through for simple captions (about one in six is)."""
_CHUNK = 64


@dataclass
class TextCase:
    object_id: int
    caption: str
    eval_elevation: float
    azimuths: list[float]  # world azimuths of the ground-truth views (degrees)
    gt: torch.Tensor  # [V, 3, S, S] on white

    @property
    def name(self) -> str:
        return f"object{self.object_id - HELD_OUT_ID_BASE}"

    def write(self, folder: str | Path) -> Path:
        """caption.txt and gt/NNN.png -> the gt folder."""
        folder = Path(folder)
        gt_dir = folder / "gt"
        gt_dir.mkdir(parents=True, exist_ok=True)
        (folder / "caption.txt").write_text(self.caption + "\n")
        for i, view in enumerate(self.gt):
            save_rgb(view, gt_dir / f"{i:03d}.png")
        return gt_dir


def is_simple(caption: str) -> bool:
    """One part in one colour: 'a pink sphere' (no 'and', 'on', 'next to', list, or texture)."""
    words = caption.split()
    return len(words) == 3 and "," not in caption


def text_case_ids(n_objects: int, offset: int = DEFAULT_ID_OFFSET, simple: bool = True) -> list[int]:
    """The first `n_objects` held-out ids from HELD_OUT_ID_BASE + offset (with `simple`, only simple captions)."""
    if n_objects < 1 or offset < 0:
        raise ValueError(f"need n_objects >= 1 and offset >= 0; got {n_objects}, {offset}")
    start = HELD_OUT_ID_BASE + offset
    if not simple:
        return list(range(start, start + n_objects))
    found: list[int] = []
    for chunk in range(start, start + _SEARCH, _CHUNK):  # captions are made per object: look no further than needed
        ids = torch.arange(chunk, chunk + _CHUNK)
        found += [i for i, c in zip(ids.tolist(), captions(make_objects(ids))) if is_simple(c)]
        if len(found) >= n_objects:
            break
    if len(found) < n_objects:
        raise ValueError(f"only {len(found)} simple captions among held-out ids {start}…{start + _SEARCH - 1}; "
                         "ask for fewer objects or pass simple=False")
    return found[:n_objects]


@torch.no_grad()
def make_text_case(object_id: int, eval_elevation: float = EVAL_ELEVATION, n_views: int = N_VIEWS) -> TextCase:
    """Caption and ground-truth orbit of held-out object `object_id`."""
    case = make_case(object_id, eval_elevation=eval_elevation, n_views=n_views)
    return TextCase(object_id, case.caption, case.eval_elevation, case.delta_azimuths, case.gt)
