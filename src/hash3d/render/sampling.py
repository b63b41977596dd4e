"""Marching rays at a fixed step through the scene box into packed samples."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .occupancy import OccupancyGrid
from .rays import ray_aabb


@dataclass
class PackedSamples:
    """Intervals along rays, flat and ascending by (ray, distance)."""

    ray_indices: torch.Tensor
    """[M] int64 index of the ray each interval lies on."""
    t_starts: torch.Tensor
    """[M] distance of the interval's start along its (unit) ray."""
    t_ends: torch.Tensor
    """[M] distance of the interval's end."""

    def __len__(self) -> int:
        return self.ray_indices.shape[0]

    @property
    def t_mid(self) -> torch.Tensor:
        return 0.5 * (self.t_starts + self.t_ends)

    @property
    def deltas(self) -> torch.Tensor:
        return self.t_ends - self.t_starts

    def positions(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> torch.Tensor:
        """World points [M, 3] at the interval midpoints."""
        return rays_o[self.ray_indices] + rays_d[self.ray_indices] * self.t_mid[:, None]

    def select(self, mask: torch.Tensor) -> "PackedSamples":
        return PackedSamples(self.ray_indices[mask], self.t_starts[mask], self.t_ends[mask])


@torch.no_grad()
def march_rays(
    rays_o: torch.Tensor,  # [R, 3]
    rays_d: torch.Tensor,  # [R, 3] unit
    radius: float,
    step_size: float,
    near_plane: float = 0.0,
    jitter: torch.Tensor | None = None,  # [R] in [0, 1): per-ray offset of the first sample, in steps
    occupancy: OccupancyGrid | None = None,
    chunk_elements: int = 2**22,
) -> PackedSamples:
    """Intervals of length `step_size` from each ray's box entry to its exit (the last one clipped at the exit).

    Interval k of ray r starts at t_near + (k + jitter_r)·step. With an occupancy grid, intervals whose midpoint
    lies in an empty cell are dropped. Rays are processed in chunks of about `chunk_elements` candidate samples,
    so memory stays bounded; the samples come back packed (ray-major, ascending t).
    """
    n_rays, device = rays_o.shape[0], rays_o.device
    t_near, t_far, hit = ray_aabb(rays_o, rays_d, radius, near_plane)
    if jitter is None:
        jitter = torch.zeros(n_rays, device=device)
    t_first = t_near + jitter * step_size
    span = torch.where(hit, t_far - t_first, torch.zeros_like(t_far)).clamp(min=0)
    max_steps = int(math.ceil(span.max().item() / step_size)) + 1 if n_rays else 0
    rays_per_chunk = max(1, chunk_elements // max(max_steps, 1))
    out_r, out_s, out_e = [], [], []
    k = torch.arange(max_steps, device=device, dtype=rays_o.dtype)
    for lo in range(0, n_rays, rays_per_chunk):
        hi = min(lo + rays_per_chunk, n_rays)
        start = t_first[lo:hi, None] + k[None, :] * step_size  # [c, S]
        far = t_far[lo:hi, None]
        valid = hit[lo:hi, None] & (start < far)
        end = torch.minimum(start + step_size, far)
        if occupancy is not None:
            mid = 0.5 * (start + end)
            points = rays_o[lo:hi, None, :] + rays_d[lo:hi, None, :] * mid[..., None]
            valid = valid & occupancy.query(points.reshape(-1, 3)).view_as(valid)
        r, s = valid.nonzero(as_tuple=True)
        out_r.append(r + lo)
        out_s.append(start[r, s])
        out_e.append(end[r, s])
    if not out_r:
        empty = torch.zeros(0, device=device)
        return PackedSamples(torch.zeros(0, dtype=torch.long, device=device), empty, empty)
    return PackedSamples(torch.cat(out_r), torch.cat(out_s), torch.cat(out_e))
