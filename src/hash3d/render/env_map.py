"""Neural environment-map background (threestudio's "neural-environment-map-background"): the colour behind each
ray is a small MLP of the ray direction's real spherical harmonics (threestudio uses degree 3: 9 values), through a sigmoid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..config.registry import register
from ..scene.mlp import MLPConfig, make_mlp


def spherical_harmonics(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Unit directions [..., 3] -> the real SH basis up to `degree` (1..4 bands: 1, 4, 9 or 16 values), in
    tiny-cuda-nn's order and sign convention."""
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical harmonics degree must be 1..4 (bands); got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ]
    return torch.stack(out, -1)


@dataclass
class DirectionEncodingConfig:
    otype: Literal["SphericalHarmonics"] = "SphericalHarmonics"
    degree: int = 3
    """Bands, as tiny-cuda-nn counts them: degree d gives d² values."""

    def __post_init__(self) -> None:
        if not 1 <= self.degree <= 4:
            raise ValueError(f"dir_encoding_config.degree must be 1..4; got {self.degree}")


def _env_mlp() -> MLPConfig:
    return MLPConfig(n_neurons=16, n_hidden_layers=2)


@dataclass
class NeuralEnvironmentMapConfig:
    n_output_dims: int = 3
    color_activation: Literal["sigmoid", "none"] = "sigmoid"
    dir_encoding_config: DirectionEncodingConfig = field(default_factory=DirectionEncodingConfig)
    mlp_network_config: MLPConfig = field(default_factory=_env_mlp)
    eval_color: tuple[float, ...] | None = None
    """Outside training, a fixed colour (n_output_dims values) instead of the network (None: the network)."""
    random_aug: bool = False
    """In training, with probability `random_aug_prob`, a random solid colour per view instead of the network."""
    random_aug_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.eval_color is not None and len(self.eval_color) != self.n_output_dims:
            raise ValueError(f"eval_color needs {self.n_output_dims} values (n_output_dims); got {self.eval_color!r}")


@register("background", "neural-environment-map-background", config=NeuralEnvironmentMapConfig)
class NeuralEnvironmentMapBackground(nn.Module):
    needs_directions = True

    def __init__(self, config: NeuralEnvironmentMapConfig | None = None, device: torch.device | str | None = None, **_runtime):
        super().__init__()
        self.config = cfg = config or NeuralEnvironmentMapConfig()
        self.network = make_mlp(cfg.dir_encoding_config.degree**2, cfg.n_output_dims, cfg.mlp_network_config)
        if device is not None:
            self.to(device)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        """Ray directions [..., 3] -> colours [..., n_output_dims]."""
        cfg = self.config
        if not self.training and cfg.eval_color is not None:
            return torch.tensor(cfg.eval_color, dtype=dirs.dtype, device=dirs.device).expand(*dirs.shape[:-1], cfg.n_output_dims)
        features = spherical_harmonics(torch.nn.functional.normalize(dirs, dim=-1), cfg.dir_encoding_config.degree)
        color = self.network(features.reshape(-1, features.shape[-1])).reshape(*dirs.shape[:-1], cfg.n_output_dims)
        color = torch.sigmoid(color) if cfg.color_activation == "sigmoid" else color
        if self.training and cfg.random_aug and float(torch.rand(())) < cfg.random_aug_prob:
            # the global RNG: seeded by the run and saved in its checkpoints
            random = torch.rand(dirs.shape[0], *([1] * (dirs.dim() - 2)), cfg.n_output_dims)
            color = color * 0 + random.to(color).expand_as(color)  # keeps the graph (and the parameters) connected
        return color
