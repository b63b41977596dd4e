"""Volume-rendering weights and accumulation over packed samples.

Samples are packed: a flat list of intervals with the index of the ray each belongs to, ascending by ray and
by distance along the ray. Weight of sample i on its ray: w_i = T_i·α_i with α_i = 1 − exp(−σ_i·δ_i) and
T_i = exp(−Σ_{j<i} σ_j·δ_j) (the sum over earlier samples of the same ray).
"""

from __future__ import annotations

import torch


def exclusive_segment_sum(values: torch.Tensor, ray_indices: torch.Tensor) -> torch.Tensor:
    """Σ of `values` [M] over earlier samples of the same ray -> [M] (0 at each ray's first sample).

    One global cumulative sum in float64 minus its value at the ray's start: no per-ray loop and no padding,
    and the float64 sum keeps the difference exact to ~1e-16 of the running total. Each sample finds its ray's first
    sample by binary search in the sorted ray indices (no host read, unlike a bincount of data-dependent size).
    """
    if values.numel() == 0:
        return values
    v = values.double()
    before = torch.cumsum(v, 0) - v  # global exclusive sum
    first = torch.searchsorted(ray_indices, ray_indices)  # [M] first sample of the same ray
    return (before - before[first]).to(values.dtype)


def render_weights(
    sigmas: torch.Tensor,  # [M] density at the samples
    deltas: torch.Tensor,  # [M] interval lengths
    ray_indices: torch.Tensor,  # [M] int64, ascending
    n_rays: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> weights [M], transmittance before each sample [M], alphas [M]."""
    tau = sigmas * deltas
    transmittance = torch.exp(-exclusive_segment_sum(tau, ray_indices))
    alphas = 1.0 - torch.exp(-tau)
    return transmittance * alphas, transmittance, alphas


def accumulate_along_rays(
    weights: torch.Tensor,  # [M]
    values: torch.Tensor | None,  # [M, C], or None to sum the weights
    ray_indices: torch.Tensor,  # [M]
    n_rays: int,
) -> torch.Tensor:  # [R, C] (C = 1 for None)
    """Σ_i w_i·v_i per ray."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)
