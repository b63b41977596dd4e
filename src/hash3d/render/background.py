"""Backgrounds: a solid colour (threestudio's "solid-color-background"), fixed or learned, and a neural environment
map (an MLP of the ray direction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..config.registry import register
from ..scene.mlp import MLPConfig, make_mlp
from .gaussian_raster import spherical_harmonics


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


# ------------------------------------------------------------------------------------- neural environment map


def sh_encoding(dirs: torch.Tensor, bands: int = 3) -> torch.Tensor:
    """Unit directions [..., 3] -> the real SH basis of the first `bands` bands [..., bands²] (tiny-cuda-nn's
    SphericalHarmonics encoding with degree = bands, which threestudio's environment map uses with 3)."""
    if not 1 <= bands <= 4:
        raise ValueError(f"SH bands must be 1..4; got {bands}")
    k = bands * bands
    eye = torch.eye(k, dtype=dirs.dtype, device=dirs.device)[:, :, None].expand(k, k, 3)  # one-hot coefficients
    basis = spherical_harmonics(bands - 1, dirs[..., None, :].expand(*dirs.shape[:-1], k, 3), eye)  # [..., k, 3]
    return basis[..., 0]


@dataclass
class NeuralEnvironmentMapConfig:
    """Background colour as an MLP of the ray direction (threestudio's neural-environment-map-background)."""

    n_output_dims: int = 3
    """Channels (Latent-NeRF: the 4 latent channels)."""
    color_activation: Literal["sigmoid", "none"] = "sigmoid"
    dir_encoding_bands: int = 3
    """SH bands of the direction encoding (threestudio's `dir_encoding_config.degree`)."""
    mlp_network_config: MLPConfig = field(default_factory=lambda: MLPConfig(n_neurons=16, n_hidden_layers=2))
    random_aug: bool = False
    """In training, replace the whole background of a view by a random colour with probability `random_aug_prob`."""
    random_aug_prob: float = 0.5
    aug_colors: Literal["random", "black_white"] = "random"
    """'random': a uniform random colour (threestudio); 'black_white': pure black or pure white, 50/50
    (threestudio-3dgs' gaussian-mvdream-neural-environment-map-background)."""
    share_aug_bg: bool = False
    """One augmentation draw for the whole batch instead of one per view."""
    eval_color: tuple[float, ...] | None = None
    """Outside training, a fixed colour instead of the MLP (None: the MLP)."""

    def __post_init__(self) -> None:
        if self.n_output_dims < 1:
            raise ValueError(f"background.n_output_dims must be >= 1; got {self.n_output_dims}")
        if not 0.0 <= self.random_aug_prob <= 1.0:
            raise ValueError(f"background.random_aug_prob must be in [0, 1]; got {self.random_aug_prob}")
        if self.eval_color is not None and len(self.eval_color) != self.n_output_dims:
            raise ValueError(f"background.eval_color needs {self.n_output_dims} values; got {list(self.eval_color)}")


@register("background", "neural-environment-map-background", config=NeuralEnvironmentMapConfig)
class NeuralEnvironmentMapBackground(nn.Module):
    """`background(dirs [..., 3])` -> colours [..., C]."""

    directional = True
    """The systems pass the rays' directions (a solid colour needs none)."""

    def __init__(self, config: NeuralEnvironmentMapConfig | None = None, device: torch.device | str | None = None, **_runtime):
        super().__init__()
        self.config = cfg = config or NeuralEnvironmentMapConfig()
        self.network = make_mlp(cfg.dir_encoding_bands**2, cfg.n_output_dims, cfg.mlp_network_config)
        self.generator = torch.Generator(device=device or "cpu").manual_seed(0)
        if device is not None:
            self.to(device)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        lead = dirs.shape[:-1]
        if not self.training and cfg.eval_color is not None:
            return torch.tensor(cfg.eval_color, dtype=dirs.dtype, device=dirs.device).expand(*lead, cfg.n_output_dims)
        enc = sh_encoding(torch.nn.functional.normalize(dirs.reshape(-1, 3).float(), dim=-1), cfg.dir_encoding_bands)
        color = self.network(enc).reshape(*lead, cfg.n_output_dims)
        if cfg.color_activation == "sigmoid":
            color = torch.sigmoid(color)
        if self.training and cfg.random_aug and dirs.dim() >= 2:
            color = self.augment(color)
        return color

    def augment(self, color: torch.Tensor) -> torch.Tensor:
        """Views [B, ...] whose draw falls under random_aug_prob get one flat colour (random or black / white)."""
        cfg = self.config
        B, C = color.shape[0], color.shape[-1]
        n = 1 if cfg.share_aug_bg else B
        gen = self.generator
        hit = torch.rand(n, generator=gen, device=gen.device) < cfg.random_aug_prob
        if cfg.aug_colors == "random":
            flat = torch.rand(n, C, generator=gen, device=gen.device)
        else:
            flat = (torch.rand(n, 1, generator=gen, device=gen.device) < 0.5).float().expand(n, C)
        hit, flat = hit.to(color.device).expand(B), flat.to(color).expand(B, C)
        view = (B,) + (1,) * (color.dim() - 2) + (C,)
        return torch.where(hit.view((B,) + (1,) * (color.dim() - 1)), flat.view(view).expand_as(color), color)
