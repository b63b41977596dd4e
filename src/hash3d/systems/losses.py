"""Regularisers of NeRF-based SDS systems (threestudio's definitions), each a function of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sparsity(opacity: torch.Tensor) -> torch.Tensor:
    """mean sqrt(opacity² + 0.01): pushes empty space to stay empty."""
    return (opacity.square() + 0.01).sqrt().mean()


def opaque(opacity: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the opacity with itself: pushes every pixel to fully empty or fully solid."""
    o = opacity.clamp(1e-3, 1 - 1e-3)
    return F.binary_cross_entropy(o, o)


def orientation(
    weights: torch.Tensor, normals: torch.Tensor, directions: torch.Tensor, opacity: torch.Tensor
) -> torch.Tensor:
    """Σ w·max(0, n·d)² / #(opacity > 0): penalises normals that face away from the camera.

    weights [M, 1] per sample (detached here), normals [M, 3], directions [M, 3] (the sample's ray direction).
    """
    facing_away = (normals * directions).sum(-1, keepdim=True).clamp_min(0.0).square()
    return (weights.detach() * facing_away).sum() / (opacity > 0).sum().clamp_min(1)


def normal_smoothness_2d(normal_image: torch.Tensor) -> torch.Tensor:
    """normal_image [B, H, W, 3]: mean squared difference of neighbouring pixels along H plus along W."""
    dh = (normal_image[:, 1:] - normal_image[:, :-1]).square().mean()
    dw = (normal_image[:, :, 1:] - normal_image[:, :, :-1]).square().mean()
    return dh + dw


def normal_smoothness_3d(normals: torch.Tensor, perturbed_normals: torch.Tensor) -> torch.Tensor:
    """mean |n(x) − n(x + ε)|."""
    return (normals - perturbed_normals).abs().mean()


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """image [B, H, W, C]: 2·(mean squared difference along H + along W) (threestudio's `tv_loss`)."""
    return 2.0 * normal_smoothness_2d(image)
