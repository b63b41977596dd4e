"""Multi-resolution hash-grid encoding (instant-NGP), in pure torch.

Level l has N_l = floor(base · scale^l) cells per axis, so N_l + 1 grid vertices per axis. A level whose
(N_l + 1)³ vertices fit in the table is stored densely (one entry per vertex, no collisions); a finer level
hashes each vertex into 2^log2_hashmap_size entries with the spatial hash (x·1 ⊕ y·2654435761 ⊕ z·805459861)
mod T. A point's feature at a level is the trilinear blend of its cell's 8 corner entries; the encoding
concatenates the L levels' F features.

All levels are computed at once (one gather from one flat table), with no data-dependent Python branches,
so the forward can be compiled with `torch.compile`. `hash_grid_encode_with_jacobian` also returns the features'
derivatives along x, y and z as ordinary forward ops on the same gathered corners (analytic normals then need only
first-order autograd).

`HashGridConfig.backend` picks the implementation: "triton" swaps both for fused Triton kernels (hash_grid_triton.py:
CUDA, float32, gradients to the table only), "torch" is this file's code, and the default "auto" takes the fused
kernels wherever they can run (CUDA float32 inputs whose points need no gradient, triton installed) and this file's
code elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config.errors import ConfigError

HASH_PRIMES = (1, 2654435761, 805459861)
"""Per-axis multipliers of the spatial hash (instant-NGP)."""


@dataclass
class HashGridConfig:
    """Multi-resolution hash grid; defaults are threestudio's "HashGrid" (finest level 4096 cells)."""

    otype: Literal["HashGrid", "ProgressiveBandHashGrid"] = "HashGrid"
    """HashGrid: all levels from the start. ProgressiveBandHashGrid: only the first `start_level` levels at first,
    one more every `update_steps` steps after `start_step` (the others read as zero)."""
    n_levels: int = 16
    """Number of resolution levels L."""
    n_features_per_level: int = 2
    """Features F per table entry; the encoding has L·F channels."""
    log2_hashmap_size: int = 19
    """A level holds at most 2**log2_hashmap_size entries; a level with more grid vertices is hashed."""
    base_resolution: int = 16
    """Cells per axis of the coarsest level."""
    per_level_scale: float = 1.447269237440378
    """Growth of the cell count from one level to the next."""
    init_scale: float = 1e-4
    """Entries start uniform in [−init_scale, init_scale]."""
    start_level: int = 6
    """ProgressiveBandHashGrid: levels active at the start."""
    start_step: int = 0
    """ProgressiveBandHashGrid: step at which levels start being added."""
    update_steps: int = 500
    """ProgressiveBandHashGrid: steps between two added levels."""
    backend: Literal["auto", "torch", "triton"] = "auto"
    """torch: the pure-torch encoding (any device and dtype; gradients to the table and the points, compilable).
    triton: fused Triton kernels (hash_grid_triton.py; needs a CUDA GPU with triton installed, float32), same
    outputs, gradients to the table only (the points must not require grad); several times faster on a GPU
    (docs/benchmarks.md, Renderers). auto: triton for each call that it can serve, torch for the others."""

    def __post_init__(self) -> None:
        if self.n_levels < 1 or self.n_features_per_level < 1:
            raise ValueError("hash grid needs n_levels >= 1 and n_features_per_level >= 1")
        if not 1 <= self.log2_hashmap_size <= 30:
            raise ValueError(f"log2_hashmap_size must be in [1, 30]; got {self.log2_hashmap_size}")
        if self.base_resolution < 1 or self.per_level_scale < 1.0:
            raise ValueError("hash grid needs base_resolution >= 1 and per_level_scale >= 1")
        if self.update_steps < 1:
            raise ValueError(f"hash grid update_steps must be >= 1; got {self.update_steps}")
        if self.backend not in ("auto", "torch", "triton"):
            raise ValueError(f"hash grid backend must be 'auto', 'torch' or 'triton'; got {self.backend!r}")

    def active_levels(self, step: int) -> int:
        """Levels in use at a training step."""
        if self.otype == "HashGrid":
            return self.n_levels
        added = max(step - self.start_step, 0) // self.update_steps if step >= self.start_step else 0
        return max(0, min(self.n_levels, self.start_level + added))


@dataclass(frozen=True)
class GridLevel:
    """Layout of one level inside the flat table."""

    resolution: int
    """Cells per axis (the level has resolution + 1 vertices per axis)."""
    dense: bool
    """True when every vertex has its own entry (no hashing)."""
    size: int
    """Entries the level owns."""
    offset: int
    """Index of the level's first entry in the flat table."""


def grid_levels(config: HashGridConfig) -> list[GridLevel]:
    """Per-level resolution, storage mode, size and table offset."""
    levels, offset, table = [], 0, 2**config.log2_hashmap_size
    for level in range(config.n_levels):
        # the small epsilon keeps 16·1.4473^15 = 4095.99999… at 4096
        resolution = int(math.floor(config.base_resolution * config.per_level_scale**level + 1e-6))
        vertices = (resolution + 1) ** 3
        dense = vertices <= table
        size = vertices if dense else table
        levels.append(GridLevel(resolution, dense, size, offset))
        offset += size
    return levels


def _corner_index(corner: torch.Tensor, resolution: torch.Tensor, dense: bool, hash_mask: int) -> torch.Tensor:
    """Corner vertices [N, L, 2, 3] (low/high per axis) -> level-local entry index [N, L, 2, 2, 2]."""
    if dense:  # x + y·V + z·V², V = resolution + 1 vertices per axis
        verts = resolution + 1
        stride = torch.stack([torch.ones_like(verts), verts, verts * verts], dim=-1)  # [L, 3]
        d = corner * stride[None, :, None, :]
        return d[..., 0][:, :, :, None, None] + d[..., 1][:, :, None, :, None] + d[..., 2][:, :, None, None, :]
    # spatial hash; only the low bits survive the mask, so int64 products give uint32 arithmetic's result
    # (Python-int multipliers: no host-to-device copy per call)
    h0 = corner[..., 0] * HASH_PRIMES[0]
    h1 = corner[..., 1] * HASH_PRIMES[1]
    h2 = corner[..., 2] * HASH_PRIMES[2]
    return (h0[:, :, :, None, None] ^ h1[:, :, None, :, None] ^ h2[:, :, None, None, :]) & hash_mask


def _cell_and_corners(
    x: torch.Tensor, table: torch.Tensor, resolution: torch.Tensor, offset: torch.Tensor, n_dense: int, hash_mask: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points [N, 3] in [0, 1]³ (clamped) -> position inside the cell [N, L, 3] and corner entries [N·L, 8, F]."""
    n, n_levels, n_feat = x.shape[0], resolution.shape[0], table.shape[1]
    x = x.clamp(0.0, 1.0)
    pos = x[:, None, :] * resolution.to(x.dtype)[None, :, None]  # [N, L, 3]
    # lower corner; a point on the upper face falls in the last cell with weight 1
    cell = torch.minimum(pos.detach().floor().long(), (resolution - 1)[None, :, None])
    frac = pos - cell.to(x.dtype)  # [N, L, 3] in [0, 1], carries the gradient to x
    corner = torch.stack([cell, cell + 1], dim=2)  # [N, L, 2, 3]: low/high vertex per axis

    parts = []
    if n_dense > 0:
        parts.append(_corner_index(corner[:, :n_dense], resolution[:n_dense], True, hash_mask))
    if n_dense < n_levels:
        parts.append(_corner_index(corner[:, n_dense:], resolution[n_dense:], False, hash_mask))
    index = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    index = (index + offset[None, :, None, None, None]).reshape(n * n_levels * 8)  # corner (i, j, k) at 4i + 2j + k
    return frac, table.index_select(0, index).view(n * n_levels, 8, n_feat)


def _outer3(wx: torch.Tensor, wy: torch.Tensor, wz: torch.Tensor) -> torch.Tensor:
    """Per-axis corner factors [..., 2] -> corner weights [..., 2, 2, 2] (corner (i, j, k) = wx_i · wy_j · wz_k)."""
    return wx[..., :, None, None] * wy[..., None, :, None] * wz[..., None, None, :]


def hash_grid_encode(
    x: torch.Tensor,  # [N, 3] in [0, 1] (clamped)
    table: torch.Tensor,  # [E, F] all levels' entries, level l at rows offset[l] : offset[l] + size[l]
    resolution: torch.Tensor,  # [L] int64 cells per axis
    offset: torch.Tensor,  # [L] int64
    n_dense: int,  # the first n_dense levels are dense, the others hashed
    hash_mask: int,  # 2**log2_hashmap_size − 1
) -> torch.Tensor:  # [N, L·F]
    """Trilinearly interpolated multi-level grid features of points in the unit cube."""
    n, n_levels, n_feat = x.shape[0], resolution.shape[0], table.shape[1]
    frac, feats = _cell_and_corners(x, table, resolution, offset, n_dense, hash_mask)
    w = torch.stack([1.0 - frac, frac], dim=-1)  # [N, L, 3, 2]
    weight = _outer3(w[:, :, 0], w[:, :, 1], w[:, :, 2])
    out = torch.bmm(weight.reshape(n * n_levels, 1, 8).to(feats.dtype), feats)  # [N·L, 1, F]
    return out.reshape(n, n_levels * n_feat)


def hash_grid_encode_with_jacobian(
    x: torch.Tensor,  # [N, 3] in [0, 1] (clamped)
    table: torch.Tensor,  # [E, F]
    resolution: torch.Tensor,  # [L] int64
    offset: torch.Tensor,  # [L] int64
    n_dense: int,
    hash_mask: int,
) -> torch.Tensor:  # [N, 4, L·F]
    """`hash_grid_encode` and its derivatives: [:, 0] the features, [:, 1 + a] their derivative along x_a.

    The derivative of the trilinear weights along axis a swaps that axis' factor (1 − f, f) for (−1, +1)·N_l.
    It is what autograd of `hash_grid_encode` gives, also where autograd's choices are arbitrary: zero outside
    [0, 1] along a clamped axis but not on its faces, and on the upper face the last cell's (inner) slope.
    Both rows come out of one gather and one bmm; first-order autograd of the result gives the encoding's
    second derivatives.
    """
    n, n_levels, n_feat = x.shape[0], resolution.shape[0], table.shape[1]
    frac, feats = _cell_and_corners(x, table, resolution, offset, n_dense, hash_mask)
    w = torch.stack([1.0 - frac, frac], dim=-1)  # [N, L, 3, 2]
    inside = ((x >= 0.0) & (x <= 1.0)).to(x.dtype)  # [N, 3]
    slope = inside[:, None, :] * resolution.to(x.dtype)[None, :, None]  # [N, L, 3]
    dw = torch.stack([-slope, slope], dim=-1)  # [N, L, 3, 2]
    wx, wy, wz = w.unbind(2)
    dx, dy, dz = dw.unbind(2)
    weight = torch.stack([_outer3(wx, wy, wz), _outer3(dx, wy, wz), _outer3(wx, dy, wz), _outer3(wx, wy, dz)], dim=2)
    out = torch.bmm(weight.reshape(n * n_levels, 4, 8).to(feats.dtype), feats)  # [N·L, 4, F]
    return out.view(n, n_levels, 4, n_feat).transpose(1, 2).reshape(n, 4, n_levels * n_feat)


class HashGrid(nn.Module):
    """Hash-grid encoding module: [N, 3] points in [0, 1]³ -> [N, L·F] features."""

    def __init__(self, config: HashGridConfig | None = None):
        super().__init__()
        self.config = config or HashGridConfig()
        self.levels = grid_levels(self.config)
        total = self.levels[-1].offset + self.levels[-1].size
        self.table = nn.Parameter(torch.empty(total, self.config.n_features_per_level))
        self.register_buffer("resolution", torch.tensor([lv.resolution for lv in self.levels], dtype=torch.int64), persistent=False)
        self.register_buffer("offset", torch.tensor([lv.offset for lv in self.levels], dtype=torch.int64), persistent=False)
        self.n_dense = sum(lv.dense for lv in self.levels)  # dense levels come first (resolution only grows)
        self.hash_mask = 2**self.config.log2_hashmap_size - 1
        self._triton_ok: bool | None = None  # backend "auto": can the fused kernels run here (checked once)
        # 1 for the channels of active levels (all of them unless the grid is progressive); a buffer, so the
        # forward has no step-dependent branch and stays compilable
        self.register_buffer("level_mask", torch.ones(self.n_output_dims), persistent=False)
        self.update_step(0)
        self.reset_parameters()

    @property
    def n_output_dims(self) -> int:
        return self.config.n_levels * self.config.n_features_per_level

    def update_step(self, global_step: int, max_steps: int | None = None) -> None:
        """Progressive band: switch levels on as training proceeds (no-op for a plain HashGrid)."""
        active = self.config.active_levels(global_step)
        self.level_mask.fill_(0.0)
        self.level_mask[: active * self.config.n_features_per_level] = 1.0

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.table, -self.config.init_scale, self.config.init_scale)

    def _triton_encode(self, x: torch.Tensor, with_jacobian: bool) -> torch.Tensor:
        """The fused path (imported only when chosen), after checking it can run on x's device."""
        from .hash_grid_triton import hash_grid_encode_triton, triton_available

        if not triton_available(x.device):
            raise ConfigError(
                f"geometry.pos_encoding_config.backend is 'triton', but the triton hash-grid path cannot run on "
                f"device {x.device} (it needs a CUDA GPU and the triton package); set "
                f"geometry.pos_encoding_config.backend: torch, or run on a CUDA GPU with triton installed"
            )
        return hash_grid_encode_triton(
            x, self.table, self.resolution, self.offset, self.n_dense, self.hash_mask, with_jacobian=with_jacobian
        )

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether this call takes the Triton kernels (always for "triton", which raises where they cannot run)."""
        backend = self.config.backend
        if backend != "auto":
            return backend == "triton"
        if not x.is_cuda or x.dtype != torch.float32 or self.table.dtype != torch.float32:
            return False
        if x.requires_grad and torch.is_grad_enabled():
            return False  # the fused kernels give no gradient with respect to the points
        if self._triton_ok is None:
            from .hash_grid_triton import triton_available

            self._triton_ok = triton_available(x.device)
        return self._triton_ok

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3] in [0, 1]³ (clamped) -> [N, L·F]."""
        if self._fused(x):
            out = self._triton_encode(x, with_jacobian=False)
        else:
            out = hash_grid_encode(x, self.table, self.resolution, self.offset, self.n_dense, self.hash_mask)
        if self.config.otype == "HashGrid":
            return out
        return out * self.level_mask.to(out.dtype)

    def forward_with_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3] in [0, 1]³ (clamped) -> [N, 4, L·F]: the features ([:, 0]) and d features / d x_a ([:, 1 + a])."""
        if self._fused(x):
            out = self._triton_encode(x, with_jacobian=True)
        else:
            out = hash_grid_encode_with_jacobian(x, self.table, self.resolution, self.offset, self.n_dense, self.hash_mask)
        if self.config.otype == "HashGrid":
            return out
        return out * self.level_mask.to(out.dtype)
