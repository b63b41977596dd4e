"""A learned environment-map background (threestudio's "neural-environment-map-background"): a small MLP maps each
ray's direction, encoded in real spherical harmonics up to degree 3, to a colour."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..config.registry import register
from ..scene.mlp import MLPConfig, make_mlp


@dataclass
class DirectionEncodingConfig:
    otype: Literal["SphericalHarmonics"] = "SphericalHarmonics"
    degree: Literal[1, 2, 3] = 3
    """Bands of real spherical harmonics (degree² features)."""


@dataclass
class NeuralEnvironmentMapBackgroundConfig:
    n_output_dims: int = 3
    color_activation: Literal["sigmoid", "none"] = "sigmoid"
    dir_encoding_config: DirectionEncodingConfig = field(default_factory=DirectionEncodingConfig)
    mlp_network_config: MLPConfig = field(default_factory=lambda: MLPConfig(n_neurons=16, n_hidden_layers=2))
    random_aug: bool = False
    """In training, with probability `random_aug_prob`, a random solid colour per view instead of the map."""
    random_aug_prob: float = 0.5
    eval_color: tuple[float, ...] | None = None
    """Outside training: this solid colour (n_output_dims values) instead of the map (None: the map)."""

    def __post_init__(self) -> None:
        if self.eval_color is not None and len(self.eval_color) != self.n_output_dims:
            raise ValueError(f"eval_color needs {self.n_output_dims} values (n_output_dims); got {self.eval_color!r}")


def spherical_harmonics(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Real SH basis of unit directions [..., 3] -> [..., degree²] (the first `degree` bands)."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 2:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree >= 3:
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * z * z - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (x * x - y * y),
        ]
    return torch.stack(out, dim=-1)


@register("background", "neural-environment-map-background", config=NeuralEnvironmentMapBackgroundConfig)
class NeuralEnvironmentMapBackground(nn.Module):
    per_ray = True
    """The colour depends on the ray: call with the rays' directions."""

    def __init__(self, config: NeuralEnvironmentMapBackgroundConfig | None = None, device=None, **_runtime):
        super().__init__()
        self.config = config or NeuralEnvironmentMapBackgroundConfig()
        n_in = self.config.dir_encoding_config.degree**2
        self.network = make_mlp(n_in, self.config.n_output_dims, self.config.mlp_network_config)
        if device is not None:
            self.to(device)

    def forward(self, n: int | None = None, dirs: torch.Tensor | None = None) -> torch.Tensor:
        """dirs [..., 3] (unit world directions) -> colours [..., n_output_dims]."""
        if dirs is None:
            raise ValueError("neural-environment-map-background needs the rays' directions")
        cfg = self.config
        weight = self.network[0].weight
        if not self.training and cfg.eval_color is not None:
            return torch.as_tensor(cfg.eval_color, dtype=weight.dtype, device=dirs.device).expand(*dirs.shape[:-1], cfg.n_output_dims)
        features = spherical_harmonics(dirs.to(weight), cfg.dir_encoding_config.degree)
        color = self.network(features)
        color = torch.sigmoid(color) if cfg.color_activation == "sigmoid" else color
        if self.training and cfg.random_aug and float(torch.rand(())) < cfg.random_aug_prob:
            # the global RNG: seeded by the run and saved in its checkpoints
            random = torch.rand(dirs.shape[0], *([1] * (dirs.dim() - 2)), cfg.n_output_dims)
            color = color * 0 + random.to(color).expand_as(color)  # keeps the graph (and the parameters) connected
        return color
