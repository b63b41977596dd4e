"""Occupancy grid over the scene box: samples in empty cells are skipped (the idea of nerfacc's OccGridEstimator).

The grid keeps a per-cell occupancy value (density × render step, i.e. about the opacity of one step) updated
with an exponential moving average from random points inside each cell, and a binary mask of cells whose
value exceeds min(threshold, mean occupancy). It starts all occupied, so before the first update it changes
nothing. The caller owns the grid (it is an nn.Module, so its buffers go into checkpoints) and calls `update`
once per training step.

The grid also keeps the axis-aligned box around its occupied cells (`occupied_box`), so marching can skip the
empty margin of the scene box. It is refreshed by `update` and on loading a state dict; code that writes `binary`
by hand must call `refresh_bounds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class OccupancyGridConfig:
    """Occupancy grid (nerfacc defaults as threestudio uses them)."""

    enabled: bool = True
    """Skip samples in cells marked empty; off = march through the whole box."""
    resolution: int = 32
    """Cells per axis over [−radius, radius]³."""
    update_every: int = 16
    """Update at steps that are multiples of this."""
    threshold: float = 0.01
    """A cell is occupied when its occupancy (density · step size) exceeds min(threshold, mean occupancy)."""
    ema_decay: float = 0.95
    """Old occupancy is multiplied by this before the max with the new estimate."""
    warmup_steps: int = 256
    """Before this step every update evaluates all cells; afterwards a quarter of the cells uniformly at random
    plus as many among the occupied ones."""
    chunk_size: int = 2**18
    """Points per density evaluation during an update."""


class OccupancyGrid(nn.Module):
    def __init__(self, radius: float | None = None, config: OccupancyGridConfig | None = None):
        super().__init__()
        self.config = config or OccupancyGridConfig()
        self.radius = None if radius is None else float(radius)
        """Half side of the box the grid covers; may be set later (e.g. from the field), the buffers don't depend on it."""
        res = self.config.resolution
        self.register_buffer("occupancy", torch.zeros(res**3))
        self.register_buffer("binary", torch.ones(res, res, res, dtype=torch.bool))
        # [2, 3] first and last occupied cell index per axis (first > last: no cell occupied); derived from
        # `binary`, so not saved in checkpoints
        self.register_buffer("occupied_cells", torch.tensor([[0] * 3, [res - 1] * 3]), persistent=False)

    @torch.no_grad()
    def refresh_bounds(self) -> None:
        """Recompute `occupied_cells` from `binary` (on the device, no host synchronisation)."""
        res = self.config.resolution
        index = torch.arange(res, device=self.binary.device)
        per_axis = [self.binary.any(dim=(1, 2)), self.binary.any(dim=(0, 2)), self.binary.any(dim=(0, 1))]
        first = torch.stack([torch.where(m, index, res).amin() for m in per_axis])
        last = torch.stack([torch.where(m, index, -1).amax() for m in per_axis])
        self.occupied_cells.copy_(torch.stack([first, last]))

    def occupied_box(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """World-space corners lo [3], hi [3] (cell corners) of the box around the occupied cells, and a 0-dim
        bool: whether any cell is occupied (lo and hi mean nothing otherwise)."""
        if self.radius is None:
            raise ValueError("occupancy grid radius is not set")
        cell = 2.0 * self.radius / self.config.resolution
        first, last = self.occupied_cells.unbind(0)
        return first * cell - self.radius, (last + 1) * cell - self.radius, (first <= last).all()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_bounds()

    def cell_index(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points [N, 3] -> flat cell index [N] and inside-the-box mask [N]."""
        if self.radius is None:
            raise ValueError("occupancy grid radius is not set")
        res = self.config.resolution
        u = (points + self.radius) / (2 * self.radius)
        inside = ((u >= 0) & (u <= 1)).all(dim=-1)
        ijk = (u * res).long().clamp(0, res - 1)
        return (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2], inside

    def query(self, points: torch.Tensor) -> torch.Tensor:
        """points [N, 3] -> True where the point lies in an occupied cell of the box."""
        flat, inside = self.cell_index(points)
        return self.binary.view(-1)[flat] & inside

    def cell_points(self, indices: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flat cell indices [K] -> one uniformly random world point in each [K, 3]."""
        res = self.config.resolution
        ijk = torch.stack([indices // (res * res), (indices // res) % res, indices % res], -1).float()
        jitter = torch.rand(ijk.shape, generator=generator, device=ijk.device) if generator is not None else torch.rand_like(ijk)
        return ((ijk + jitter) / res * 2.0 - 1.0) * self.radius

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: Callable[[torch.Tensor], torch.Tensor],  # points [K, 3] -> density [K, 1] or [K]
        step_size: float,
        generator: torch.Generator | None = None,
    ) -> bool:
        """Refresh the grid when `step` is a multiple of `update_every`; returns whether it did."""
        cfg = self.config
        if not cfg.enabled or step % cfg.update_every != 0:
            return False
        if self.radius is None:
            raise ValueError("occupancy grid radius is not set")
        n_cells = cfg.resolution**3
        device = self.occupancy.device
        if step < cfg.warmup_steps:
            indices = torch.arange(n_cells, device=device)
        else:
            k = max(n_cells // 4, 1)
            uniform = torch.randint(n_cells, (k,), device=device, generator=generator)
            occupied = self.binary.view(-1).nonzero().squeeze(-1)
            if occupied.numel() > 0:
                pick = torch.randint(occupied.numel(), (k,), device=device, generator=generator)
                indices = torch.cat([uniform, occupied[pick]])
            else:
                indices = uniform
        points = self.cell_points(indices, generator)
        occ = torch.cat([density_fn(p).reshape(-1) for p in points.split(cfg.chunk_size)]) * step_size
        self.occupancy[indices] = torch.maximum(self.occupancy[indices] * cfg.ema_decay, occ.to(self.occupancy.dtype))
        threshold = torch.clamp(self.occupancy.mean(), max=cfg.threshold)
        self.binary.copy_((self.occupancy > threshold).view_as(self.binary))
        self.refresh_bounds()
        return True

    def occupied_fraction(self) -> float:
        return self.binary.float().mean().item()
