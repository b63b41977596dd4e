"""Materials: how a sample's albedo and normal become a colour (threestudio's diffuse-with-point-light).

shading "albedo" returns the albedo; "textureless" returns ambient + diffuse·max(n·l, 0) (white clay);
"diffuse" returns albedo · (ambient + diffuse·max(n·l, 0)), with l the unit direction to the point light.

Materials that colour a sample from the field's raw features instead (threestudio's no-material, Latent-NeRF's
sd-latent-adapter-material) hand the renderer a `Shading` whose `feature_map` turns features [M, F] into the
colour [M, C]; C need not be 3 (Latent-NeRF renders the 4 Stable Diffusion latent channels).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

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
    feature_map: Callable[[torch.Tensor], torch.Tensor] | None = None
    """When set, the colour of a sample is feature_map(raw features [M, F]) -> [M, C] (mode must be "albedo")."""

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
    """threestudio's "no-material": the colour is the field's first `n_output_dims` features through
    `color_activation`, unlit (RGB albedo with the defaults; Latent-NeRF's 4 latent channels with 4 and none)."""

    n_output_dims: int = 3
    color_activation: Literal["sigmoid", "none"] = "sigmoid"
    requires_normal: bool = False
    """Accepted for threestudio configs; whether normals are rendered is the renderer's setting."""

    def __post_init__(self) -> None:
        if self.n_output_dims < 1:
            raise ValueError(f"material.n_output_dims must be >= 1; got {self.n_output_dims}")


@register("material", "no-material", config=NoMaterialConfig)
class NoMaterial(nn.Module):
    """Every render is the features' colour, unlit."""

    def __init__(self, config: NoMaterialConfig | None = None, **_runtime):
        super().__init__()
        self.config = config or NoMaterialConfig()

    def colors(self, features: torch.Tensor) -> torch.Tensor:
        c = features[..., : self.config.n_output_dims]
        return torch.sigmoid(c) if self.config.color_activation == "sigmoid" else c

    def shading(self, step: int, training: bool, light_positions: torch.Tensor | None = None,
                ambient_ratio: float | None = None, rng: random.Random | None = None) -> Shading:
        return Shading("albedo", light_positions, feature_map=self.colors)


# ---------------------------------------------------------------------------------------------- Latent-NeRF

SD_LATENT_TO_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
"""The known linear approximation of Stable Diffusion's VAE decoder: rgb ≈ (latent @ A + 1) / 2 (rows: latent channels)."""


def latents_to_rgb(latents: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
    """[..., 4] Stable Diffusion latents -> [..., 3] colour in [0, 1] through a 4x3 matrix (default the approximation)."""
    a = torch.tensor(SD_LATENT_TO_RGB, dtype=latents.dtype, device=latents.device) if matrix is None else matrix
    return ((latents @ a.to(latents.dtype) + 1.0) / 2.0).clamp(0.0, 1.0)


@dataclass
class SDLatentAdapterConfig:
    """Latent-NeRF refinement: a learned 4x3 latent -> RGB matrix, initialised from `SD_LATENT_TO_RGB`."""


@register("material", "sd-latent-adapter-material", config=SDLatentAdapterConfig)
class SDLatentAdapterMaterial(nn.Module):
    """Colour = clamp((features[:, :4] @ A + 1) / 2, 0, 1) with A [4, 3] a parameter."""

    def __init__(self, config: SDLatentAdapterConfig | None = None, **_runtime):
        super().__init__()
        self.config = config or SDLatentAdapterConfig()
        self.adapter = nn.Parameter(torch.tensor(SD_LATENT_TO_RGB, dtype=torch.float32))

    def colors(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] < 4:
            raise ValueError(f"sd-latent-adapter-material needs 4 feature channels; the geometry gives {features.shape[-1]}")
        return latents_to_rgb(features[..., :4], self.adapter)

    def shading(self, step: int, training: bool, light_positions: torch.Tensor | None = None,
                ambient_ratio: float | None = None, rng: random.Random | None = None) -> Shading:
        return Shading("albedo", light_positions, feature_map=self.colors)
