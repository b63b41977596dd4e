"""Named colours of RGB values (hue bins; low saturation is white, grey or black), in torch, for captions and for
scoring generated images against the colours a caption names."""

from __future__ import annotations

import torch

__all__ = ["COLOR_NAMES", "color_index"]

COLOR_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "grey", "black")
_HUE_BOUNDS = (15.0, 45.0, 70.0, 160.0, 200.0, 255.0, 290.0, 335.0)
"""Upper hue bounds (degrees) of red, orange, yellow, green, cyan, blue, purple, pink; above the last is red."""
_MIN_SATURATION = 0.3
_MIN_VALUE = 0.2


def color_index(rgb: torch.Tensor) -> torch.Tensor:
    """Index into COLOR_NAMES of each colour: rgb [..., 3] in [0, 1] -> long [...]."""
    rgb = rgb.float().clamp(0, 1)
    r, g, b = rgb.unbind(-1)
    v, _ = rgb.max(-1)
    c = v - rgb.amin(-1)
    s = torch.where(v > 0, c / v.clamp(min=1e-8), torch.zeros_like(v))
    cc = c.clamp(min=1e-8)
    hue = torch.where(v == r, torch.remainder((g - b) / cc, 6.0), torch.where(v == g, (b - r) / cc + 2, (r - g) / cc + 4))
    hue = 60.0 * hue
    bounds = torch.tensor(_HUE_BOUNDS, device=rgb.device)
    hue_index = torch.bucketize(hue.contiguous(), bounds, right=True)  # 0..8; 8 wraps round to red
    hue_index = torch.where(hue_index == len(_HUE_BOUNDS), torch.zeros_like(hue_index), hue_index)
    grey = torch.where(v < 0.3, COLOR_NAMES.index("black"),
                       torch.where((v > 0.7) & (s < 0.2), COLOR_NAMES.index("white"), COLOR_NAMES.index("grey")))
    return torch.where((s < _MIN_SATURATION) | (v < _MIN_VALUE), grey, hue_index)
