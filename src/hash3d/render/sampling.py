"""Marching rays at a fixed step through the scene box into packed samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .occupancy import OccupancyGrid
from .rays import ray_aabb, ray_box


@dataclass
class PackedSamples:
    """Intervals along rays, flat and ascending by (ray, distance)."""

    ray_indices: torch.Tensor
    """[M] int64 index of the ray each interval lies on."""
    t_starts: torch.Tensor
    """[M] distance of the interval's start along its (unit) ray."""
    t_ends: torch.Tensor
    """[M] distance of the interval's end."""
    n_candidates: int = 0
    """Candidate intervals `march_rays` examined to find these (a statistic; 0 when not known)."""

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

    def select(self, keep: torch.Tensor) -> "PackedSamples":
        """The samples at `keep`: a bool mask [M] or ascending indices (a mask costs one nonzero, not one per field)."""
        index = keep.nonzero().squeeze(-1) if keep.dtype == torch.bool else keep
        pick = lambda values: values.index_select(0, index)  # noqa: E731
        return PackedSamples(pick(self.ray_indices), pick(self.t_starts), pick(self.t_ends), self.n_candidates)


def _tight_steps(
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    t_first: torch.Tensor,
    step_size: float,
    k_end: torch.Tensor,
    occupancy: OccupancyGrid,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First step index [R] and step count [R] of each ray's lattice steps that may fall in an occupied cell.

    The midpoint of step k lies in [t_first + k·step, t_first + (k + ½)·step] (less than the full step when clipped
    at the exit), so steps with k outside [(t_in − t_first)/step − ½, (t_out − t_first)/step] cannot reach the
    occupied box [t_in, t_out]. The box is widened by a step in space (positions rounded into a cell, rays nearly
    parallel to a face) and the index range by a step each way (rounding of t); the occupancy test then decides
    exactly as it would for the full box. Rays that miss the widened box, and all rays of an empty grid, get none.
    """
    lo, hi, any_occupied = occupancy.occupied_box()
    t_in, t_out = ray_box(rays_o, rays_d, lo - step_size, hi + step_size)
    bound = 2.0**40  # keeps the index arithmetic finite for rays (nearly) parallel to a face
    k_lo = ((t_in - t_first) / step_size).floor().clamp(-bound, bound).long() - 1
    k_hi = ((t_out - t_first) / step_size).floor().clamp(-bound, bound).long() + 2  # exclusive
    k_lo = torch.minimum(k_lo.clamp(min=0), k_end)
    counts = torch.minimum(k_hi, k_end) - k_lo
    counts = torch.where((t_in <= t_out) & any_occupied, counts.clamp(min=0), torch.zeros_like(counts))
    return k_lo, counts


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
    lies in an empty cell are dropped, and only the steps of each ray that cross the box around the occupied cells
    are examined at all (the lattice, and so the samples, are those of the full box). Candidates are packed
    (ray-major) and processed in chunks of `chunk_elements`, so memory stays bounded; the samples come back packed
    (ray-major, ascending t). Reads one number back from the device (the candidate count).
    """
    n_rays, device = rays_o.shape[0], rays_o.device
    t_near, t_far, hit = ray_aabb(rays_o, rays_d, radius, near_plane)
    if jitter is None:
        jitter = torch.zeros(n_rays, device=device)
    t_first = t_near + jitter * step_size
    span = torch.where(hit, t_far - t_first, torch.zeros_like(t_far)).clamp(min=0)
    # one step past the last interval that starts before the exit (the `start < far` test trims the rest)
    k_end = torch.where(hit, (span / step_size).ceil().long() + 1, torch.zeros_like(hit, dtype=torch.long))
    if occupancy is None:
        k_first, counts = torch.zeros_like(k_end), k_end
    else:
        k_first, counts = _tight_steps(rays_o, rays_d, t_first, step_size, k_end, occupancy)
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1].item()) if n_rays else 0
    # candidate c lies on ray searchsorted(ends, c) at step k_first + (c − first candidate of that ray)
    offset = k_first - (ends - counts)
    out_r, out_s, out_e = [], [], []
    for lo in range(0, total, chunk_elements):
        candidate = torch.arange(lo, min(lo + chunk_elements, total), device=device)
        ray = torch.searchsorted(ends, candidate, right=True)
        of_ray = lambda values: values.index_select(0, ray)  # noqa: E731  (faster than values[ray] on CPU)
        k = (candidate + of_ray(offset)).to(t_first.dtype)
        start = of_ray(t_first) + k * step_size
        far = of_ray(t_far)
        end = torch.minimum(start + step_size, far)
        valid = start < far
        if occupancy is not None:
            mid = 0.5 * (start + end)
            valid &= occupancy.query(of_ray(rays_o) + of_ray(rays_d) * mid[:, None])
        keep = valid.nonzero().squeeze(-1)
        out_r.append(ray.index_select(0, keep))
        out_s.append(start.index_select(0, keep))
        out_e.append(end.index_select(0, keep))
    if not out_r:
        empty = t_first.new_zeros(0)
        return PackedSamples(torch.zeros(0, dtype=torch.long, device=device), empty, empty, total)
    return PackedSamples(torch.cat(out_r), torch.cat(out_s), torch.cat(out_e), total)
