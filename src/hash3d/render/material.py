"""Materials: how a sample's albedo and normal become a colour (threestudio's diffuse-with-point-light).

shading "albedo" returns the albedo; "textureless" returns ambient + diffuse·max(n·l, 0) (white clay);
"diffuse" returns albedo · (ambient + diffuse·max(n·l, 0)), with l the unit direction to the point light.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..config.registry import register

ShadingMode = Literal["albedo", "diffuse", "textureless"]


@dataclass
class MaterialConfig:
    """Diffuse material with a point light (threestudio defaults)."""

    ambient_light_color: tuple[float, float, float] = (0.1, 0.1, 0.1)
    """Ambient term of the light."""
    diffuse_light_color: tuple[float, float, float] = (0.9, 0.9, 0.9)
    """Diffuse term of the light."""
    ambient_only_steps: int = 1000
    """Before this training step every render is albedo only (zero123 configs set 100000: always albedo)."""
    diffuse_prob: float = 0.75
    """In training after the ambient-only steps: chance of a shaded (diffuse or textureless) render."""
    textureless_prob: float = 0.5
    """Chance that a shaded training render is textureless."""
    soft_shading: bool = False
    """In training, light each batch with ambient = r and diffuse = 1 − r, r ~ U(0, 1) (Magic3D), instead of the
    configured light colours (a system's own ambient ratio still wins)."""


@dataclass
class Shading:
    """How one render call shades its samples."""

    mode: ShadingMode = "albedo"
    """albedo / diffuse / textureless."""
    light_positions: torch.Tensor | None = None
    """[3] or [R, 3] (per ray; [B, 3] per camera in `render_cameras`) world position of the point light."""
    ambient: torch.Tensor | float = 0.1
    """Ambient light colour: a number, [3], or per ray [R, 3]."""
    diffuse: torch.Tensor | float = 0.9
    """Diffuse light colour: a number, [3], or per ray [R, 3]."""

    @property
    def needs_normals(self) -> bool:
        return self.mode != "albedo"

    @classmethod
    def from_config(
        cls, config: MaterialConfig, mode: ShadingMode, light_positions: torch.Tensor | None = None, ambient_ratio: float | None = None
    ) -> "Shading":
        """Shading with the config's light colours, or ambient = ratio and diffuse = 1 − ratio (threestudio)."""
        if ambient_ratio is not None:
            return cls(mode, light_positions, float(ambient_ratio), 1.0 - float(ambient_ratio))
        return cls(mode, light_positions, torch.tensor(config.ambient_light_color), torch.tensor(config.diffuse_light_color))


def choose_shading(config: MaterialConfig, step: int, training: bool, rng: random.Random | None = None) -> ShadingMode:
    """The shading augmentation of one batch: albedo during the ambient-only steps; then in training albedo with
    chance 1 − diffuse_prob, else textureless with chance textureless_prob, else diffuse; diffuse at evaluation."""
    if step < config.ambient_only_steps:
        return "albedo"
    if not training:
        return "diffuse"
    rng = rng or random
    if rng.random() > config.diffuse_prob:
        return "albedo"
    return "textureless" if rng.random() < config.textureless_prob else "diffuse"


def _per_sample(value: torch.Tensor | float, ray_indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.dim() == 2:  # per ray
        return v[ray_indices]
    return v.expand_as(like) if v.dim() == 1 else v


def shade(
    albedo: torch.Tensor,  # [M, 3]
    normals: torch.Tensor | None,  # [M, 3] unit
    positions: torch.Tensor,  # [M, 3]
    ray_indices: torch.Tensor,  # [M]
    shading: Shading,
) -> torch.Tensor:  # [M, 3]
    """Colour of each sample under `shading`."""
    if shading.mode == "albedo":
        return albedo
    if normals is None or shading.light_positions is None:
        raise ValueError(f"shading {shading.mode!r} needs normals and light_positions")
    light = _per_sample(shading.light_positions, ray_indices, positions)
    to_light = F.normalize(light - positions, dim=-1)
    lambert = (normals * to_light).sum(-1, keepdim=True).clamp(min=0.0)
    textureless = lambert * _per_sample(shading.diffuse, ray_indices, albedo) + _per_sample(shading.ambient, ray_indices, albedo)
    textureless = textureless.expand_as(albedo)
    if shading.mode == "textureless":
        return textureless
    if shading.mode == "diffuse":
        return albedo.clamp(0.0, 1.0) * textureless
    raise ValueError(f"unknown shading mode {shading.mode!r}")


@register("material", "diffuse-with-point-light", config=MaterialConfig)
class DiffuseWithPointLight:
    """The material component: picks each batch's shading and light colours from its config."""

    def __init__(self, config: MaterialConfig | None = None, **_runtime):
        self.config = config or MaterialConfig()

    def shading(
        self,
        step: int,
        training: bool,
        light_positions: torch.Tensor | None = None,
        ambient_ratio: float | None = None,
        rng: random.Random | None = None,
    ) -> Shading:
        """Shading for one render: `choose_shading`'s mode with the config's (or the ratio's) light colours."""
        mode = choose_shading(self.config, step, training, rng)
        if training and self.config.soft_shading and ambient_ratio is None and mode != "albedo":
            ambient_ratio = (rng or random).random()
        return Shading.from_config(self.config, mode, light_positions, ambient_ratio)


@dataclass
class NoMaterialConfig:
    """threestudio's "no-material": the colour is the albedo, unlit (its other options are accepted)."""

    n_output_dims: int = 3
    color_activation: Literal["sigmoid", "none"] = "sigmoid"
    requires_normal: bool = False
    """Accepted for threestudio configs; whether normals are rendered is the renderer's setting."""

    def __post_init__(self) -> None:
        if self.n_output_dims != 3:
            raise ValueError(f"material.n_output_dims must be 3 here (RGB albedo); got {self.n_output_dims}")


@register("material", "no-material", config=NoMaterialConfig)
class NoMaterial:
    """Every render is the albedo."""

    def __init__(self, config: NoMaterialConfig | None = None, **_runtime):
        self.config = config or NoMaterialConfig()

    def shading(self, step: int, training: bool, light_positions: torch.Tensor | None = None,
                ambient_ratio: float | None = None, rng: random.Random | None = None) -> Shading:
        return Shading("albedo", light_positions)
