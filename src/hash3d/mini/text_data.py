"""Captions of the procedural objects (`hash3d.mini.objects`), generated from their parameters, for Hash3D-mini-sd.

A caption names each part's colour (the nearest of a few named hues, from its albedo), texture and shape, and for
two parts how they sit ("a red sphere on a blue cube", "a striped green cone next to a white torus"); three or four
parts are listed ("a red sphere, a blue cube and a green cone"). Training captions carry the view suffix that the
Stable Diffusion guidance adds for the camera (`view_prompts` / `view_direction` of
`hash3d.diffusion.guidance.stable_diffusion`, so the wording and thresholds are the guidance's own).
"""

from __future__ import annotations

import torch

from hash3d.diffusion.guidance.stable_diffusion import (
    DIRECTIONS,
    StableDiffusionGuidanceConfig,
    view_direction,
    view_prompts,
)

from .colors import COLOR_NAMES, color_index
from .objects import KINDS, TEXTURES, Objects

__all__ = [
    "COLOR_NAMES",
    "SHAPE_NAMES",
    "WORDS",
    "captions",
    "color_name",
    "shape_name",
    "view_captions",
    "views_direction",
]

SHAPE_NAMES = {"sphere": "sphere", "box": "box", "cylinder": "cylinder", "cone": "cone", "torus": "torus"}
_TEXTURE_WORDS = {"solid": "", "stripes": "striped", "checker": "checkered"}
_CUBE_ASPECT = 1.3
"""A box whose longest half-extent is at most this times its shortest is called a cube."""
WORDS = tuple(sorted(set(COLOR_NAMES) | set(SHAPE_NAMES.values()) | {"cube", "striped", "checkered", "and", "on",
                                                                      "next", "to", "a", "view"} | set(DIRECTIONS)))
"""Every word a caption can hold: the tokenizer makes each of them one token."""


def color_name(rgb) -> str:
    """The named colour nearest an albedo in [0, 1]^3 (see `hash3d.mini.colors`)."""
    return COLOR_NAMES[int(color_index(torch.as_tensor(rgb, dtype=torch.float32)))]


def shape_name(kind: int, size: tuple[float, float, float]) -> str:
    name = KINDS[kind]
    if name == "box" and max(size) <= _CUBE_ASPECT * min(size):
        return "cube"
    return SHAPE_NAMES[name]


def _part_phrase(obj: Objects, i: int, k: int) -> str:
    first = color_name(obj.color[i, k].tolist())
    second = color_name(obj.color2[i, k].tolist())
    texture = _TEXTURE_WORDS[TEXTURES[int(obj.texture[i, k])]]
    colors = first if not texture or first == second else f"{first} and {second}"
    words = [colors, texture, shape_name(int(obj.kind[i, k]), tuple(obj.size[i, k].tolist()))]
    return "a " + " ".join(w for w in words if w)


def _caption(obj: Objects, i: int) -> str:
    parts = [k for k in range(obj.kind.shape[1]) if bool(obj.active[i, k])]
    phrases = [_part_phrase(obj, i, k) for k in parts]
    if len(parts) == 1:
        return phrases[0]
    if len(parts) == 2:
        a, b = (obj.center[i, k] for k in parts)
        dz = float(a[2] - b[2])
        horizontal = float((a[:2] - b[:2]).norm())
        if abs(dz) > max(horizontal, 0.1):
            top, bottom = (phrases[0], phrases[1]) if dz > 0 else (phrases[1], phrases[0])
            return f"{top} on {bottom}"
        return f"{phrases[0]} next to {phrases[1]}"
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def captions(obj: Objects) -> list[str]:
    """One caption per object (no view suffix)."""
    obj = obj.to("cpu")
    return [_caption(obj, i) for i in range(len(obj))]


def views_direction(elevation: torch.Tensor, azimuth: torch.Tensor) -> torch.Tensor:
    """Index into DIRECTIONS per view, with the SD guidance's default thresholds."""
    return view_direction(elevation, azimuth, StableDiffusionGuidanceConfig())


def view_captions(caption: str) -> list[str]:
    """The caption with each view suffix, in DIRECTIONS order (as the guidance's `set_prompt` embeds them)."""
    return view_prompts(caption, True)
