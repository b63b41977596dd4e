"""Small fully connected networks (the torch twin of tiny-cuda-nn's FullyFusedMLP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MLPConfig:
    """A ReLU MLP: in -> n_neurons (× n_hidden_layers) -> out."""

    otype: Literal["VanillaMLP", "FullyFusedMLP"] = "VanillaMLP"
    """Accepted for threestudio configs; both mean this torch MLP."""
    n_neurons: int = 64
    """Width of every hidden layer."""
    n_hidden_layers: int = 2
    """Hidden layers (threestudio's zero123 / magic123 configs use 2; its module default and dreamfusion-sd use 1)."""
    activation: Literal["relu", "silu"] = "relu"
    """Hidden activation."""
    output_activation: Literal["none"] = "none"
    """No activation on the output (the field applies its own)."""
    bias: bool = False
    """Linear biases (tiny-cuda-nn's fused MLP, and so threestudio, has none)."""


def make_mlp(n_in: int, n_out: int, config: MLPConfig) -> nn.Sequential:
    """Linear(n_in, W), act, [Linear(W, W), act] × (n_hidden_layers − 1), Linear(W, n_out); no output activation."""
    if config.n_hidden_layers < 1:
        raise ValueError(f"mlp.n_hidden_layers must be >= 1; got {config.n_hidden_layers}")
    act = {"relu": nn.ReLU, "silu": nn.SiLU}[config.activation]
    layers: list[nn.Module] = [nn.Linear(n_in, config.n_neurons, bias=config.bias), act()]
    for _ in range(config.n_hidden_layers - 1):
        layers += [nn.Linear(config.n_neurons, config.n_neurons, bias=config.bias), act()]
    layers.append(nn.Linear(config.n_neurons, n_out, bias=config.bias))
    return nn.Sequential(*layers)


def mlp_with_jacobian(mlp: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """Forward-mode pass of a `make_mlp` network: h [N, 1 + K, n_in] -> [N, 1 + K, n_out].

    Row 0 of h is the input, rows 1..K are tangents (derivatives of the input along K directions); row 0 of the
    result is the output, rows 1..K its derivatives along the same directions. Every row goes through the same
    Linear (one matmul); the bias enters row 0 only, and the tangents are scaled by the activation's derivative
    at row 0's pre-activation.
    """
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            h = F.linear(h, layer.weight)
            if layer.bias is not None:
                h = h + F.pad(layer.bias[None], (0, 0, 0, h.shape[1] - 1))
        elif isinstance(layer, nn.ReLU):
            # relu(p) = p·[p > 0] on the output row and on the tangents alike; as a select, autograd keeps only the
            # bool mask for the backward (a product would keep it as a float copy)
            h = torch.where(h[:, :1] > 0, h, 0)
        elif isinstance(layer, nn.SiLU):
            pre, tangents = h[:, :1], h[:, 1:]
            s = torch.sigmoid(pre)
            h = torch.cat([F.silu(pre), tangents * (s * (1.0 + pre * (1.0 - s)))], dim=1)
        else:
            raise TypeError(f"mlp_with_jacobian: unsupported layer {type(layer).__name__}")
    return h
