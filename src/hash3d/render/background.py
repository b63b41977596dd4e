"""Solid-colour background (threestudio's "solid-color-background"), fixed or learned."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config.registry import register


@dataclass
class SolidColorBackgroundConfig:
    """A single background colour behind every ray."""

    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1] (white by default)."""
    learned: bool = False
    """Optimise the colour (kept in [0, 1] by a sigmoid)."""


@register("background", "solid-color-background", config=SolidColorBackgroundConfig)
class SolidColorBackground(nn.Module):
    def __init__(self, config: SolidColorBackgroundConfig | None = None, device: torch.device | str | None = None, **_runtime):
        super().__init__()
        self.config = config or SolidColorBackgroundConfig()
        color = torch.tensor(self.config.color, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
        if self.config.learned:
            self.logit = nn.Parameter(torch.logit(color))
        else:
            self.register_buffer("color", torch.tensor(self.config.color, dtype=torch.float32))
        if device is not None:
            self.to(device)

    def forward(self, n: int | None = None) -> torch.Tensor:
        """The colour [3], or repeated [n, 3]."""
        color = torch.sigmoid(self.logit) if self.config.learned else self.color
        return color if n is None else color.expand(n, 3)
