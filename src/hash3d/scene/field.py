"""What a radiance field returns, and what a renderer needs of one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class FieldOutput:
    """Per-point outputs of a radiance field."""

    density: torch.Tensor | None
    """[N, 1] volume density σ (after the activation, ≥ 0); None for a surface geometry (DMTet)."""
    albedo: torch.Tensor
    """[N, 3] base colour in [0, 1]."""
    normal: torch.Tensor | None = None
    """[N, 3] unit outward normal (minus the normalised density gradient); None unless asked for."""
    features: torch.Tensor | None = None
    """[N, C] raw feature-network output before the albedo activation."""


@runtime_checkable
class RadianceField(Protocol):
    """A field the volume renderer and the mesh exporter can query."""

    radius: float
    """The field lives in the box [−radius, radius]³ (zero density outside)."""

    def __call__(self, points: torch.Tensor, with_normal: bool = False) -> FieldOutput:
        """points [N, 3] world -> FieldOutput."""
        ...

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        """points [N, 3] world -> density [N, 1]."""
        ...
