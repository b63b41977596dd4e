"""Ray–box intersection."""

from __future__ import annotations

import torch


def ray_aabb(
    rays_o: torch.Tensor,  # [R, 3]
    rays_d: torch.Tensor,  # [R, 3]
    radius: float,
    near_plane: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entry and exit distances [R], [R] of rays through the box [−radius, radius]³, and a hit mask [R].

    The entry is clamped to `near_plane`, so a camera inside the box starts there. A ray that misses the box
    (or whose exit is behind the near plane) has hit = False.
    """
    tiny = 1e-12
    d = torch.where(rays_d.abs() < tiny, torch.full_like(rays_d, tiny), rays_d)
    inv = 1.0 / d
    t0 = (-radius - rays_o) * inv
    t1 = (radius - rays_o) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=near_plane)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far, t_far > t_near


def ray_box(
    rays_o: torch.Tensor,  # [R, 3]
    rays_d: torch.Tensor,  # [R, 3]
    lo: torch.Tensor,  # [3] box corners
    hi: torch.Tensor,  # [3]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances [R], [R] of the lines through the box [lo, hi] (not clamped: the line misses the
    box where entry > exit, and either may be negative)."""
    tiny = 1e-12
    d = torch.where(rays_d.abs() < tiny, torch.full_like(rays_d, tiny), rays_d)
    inv = 1.0 / d
    t0 = (lo.to(rays_o.dtype) - rays_o) * inv
    t1 = (hi.to(rays_o.dtype) - rays_o) * inv
    return torch.minimum(t0, t1).amax(dim=-1), torch.maximum(t0, t1).amin(dim=-1)
