"""threestudio-3dgs' background (`gaussian-mvdream-neural-environment-map-background`): the neural environment map,
whose training views are replaced, with probability `random_aug_prob`, by a flat pure black or pure white (50/50)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config.registry import register
from .env_map import NeuralEnvironmentMapBackground, NeuralEnvironmentMapConfig


@dataclass
class AugmentedEnvironmentMapConfig(NeuralEnvironmentMapConfig):
    random_aug: bool = False
    """In training, replace a view's whole background by black or white with probability `random_aug_prob`."""
    random_aug_prob: float = 0.5
    share_aug_bg: bool = False
    """One draw for the whole batch instead of one per view."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.random_aug_prob <= 1.0:
            raise ValueError(f"background.random_aug_prob must be in [0, 1]; got {self.random_aug_prob}")


@register("background", "gaussian-mvdream-neural-environment-map-background", config=AugmentedEnvironmentMapConfig)
class AugmentedEnvironmentMapBackground(NeuralEnvironmentMapBackground):
    """`background(dirs [B, ..., 3])` -> colours [B, ..., C]; the draws come from `self.generator` (checkpointed)."""

    def __init__(self, config: AugmentedEnvironmentMapConfig | None = None, device: torch.device | str | None = None, **_runtime):
        super().__init__(config or AugmentedEnvironmentMapConfig(), device)
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        color = super().forward(dirs)
        cfg = self.config
        if not (self.training and cfg.random_aug) or dirs.dim() < 2:
            return color
        B, C = color.shape[0], color.shape[-1]
        n = 1 if cfg.share_aug_bg else B
        hit = torch.rand(n, generator=self.generator) < cfg.random_aug_prob
        white = torch.rand(n, generator=self.generator) < 0.5
        hit, white = hit.expand(B).to(color.device), white.expand(B).to(color)
        per_view = (B,) + (1,) * (color.dim() - 1)
        return torch.where(hit.view(per_view), white.view(per_view).expand_as(color), color)
