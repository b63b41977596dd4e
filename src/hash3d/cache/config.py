"""Typed configuration of the Hash3D cache, shared by every guidance and front-end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .table import DEFAULT_ADAPTIVE_CELLS, AdaptiveGridHashTable, GridHashTable, HashTable


@dataclass
class CachePolicyConfig:
    """When a UNet call may be answered from the cache."""

    probability: float = 0.1
    """Chance that a call tries the cache (the paper's hash probability η; the original's `cache_p`). 1 = every call."""
    force_full_every: int = 0
    """Every N-th call runs the full UNet without trying the cache (0 = never forced)."""
    seed: int = 0
    """Seed of the policy's own random stream (kept apart from the training RNG so cache on/off runs see equal noise)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"cache.policy.probability must be in [0, 1]; got {self.probability}")
        if self.force_full_every < 0:
            raise ValueError(f"cache.policy.force_full_every must be >= 0; got {self.force_full_every}")


@dataclass
class CacheConfig:
    """The `cache` block of every guidance config."""

    enabled: bool = False
    mode: Literal["features", "noise"] = "features"
    """features: reuse the deep UNet feature and run only the shallow blocks (DeepCache style);
    noise: reuse the whole noise prediction and skip the UNet."""
    depth: int = 1
    """features mode: how many of the shallowest down/up blocks run on a hit (1 = only the first down and last up block)."""
    cell_size: tuple[float, float, float, float] = (10.0, 10.0, 0.1, 10.0)
    """Grid cell (d_elev_deg, d_azim_deg, d_radius, d_t) of the fixed grid."""
    adaptive: bool = False
    """Use the paper's adaptive grid over `adaptive_cell_sizes` instead of the fixed `cell_size`."""
    adaptive_cell_sizes: tuple[tuple[float, float, float, float], ...] = DEFAULT_ADAPTIVE_CELLS
    gamma: float = 0.9
    """Decay of the adaptive grid's per-bucket similarity score."""
    n_buckets: int = 1024
    bucket_size: int = 3
    capacity: int | None = None
    """Entries kept in memory (default n_buckets * bucket_size); bounds the cache's memory."""
    max_memory_mb: float | None = 4096.0
    """Memory budget of the stored entries; the capacity shrinks to fit it once the entry size is known. The storage
    grows with the entries (doubling) up to it, so a table holding few entries takes little memory. Sized for a GPU:
    the configs of CPU-sized models set their own (the mini configs: 256 MB, 1 GB)."""
    temperature: float = 1.0
    """Softmax temperature of the latent-distance blend of a cell's entries."""
    check_keys: bool = True
    """Reject NaN/inf keys (one host read per call; with `gpu_dispatch` active none: such keys are never stored and
    the statistics' next read raises)."""
    gpu_dispatch: bool = False
    """With CUDA graphs: run each tried UNet call as one CUDA graph whose conditional nodes pick the branches on the
    GPU (`hash3d.diffusion.cache_graph`), with no host read per call. Needs conditional graph nodes (CUDA >= 12.4 and a
    torch that captures them; torch 2.11 does not), else the host-dispatched path runs. Off by default: it passes its
    tests against the host-dispatched path on the CPU, but has not yet run on a GPU."""
    table_backend: Literal["auto", "torch", "triton"] = "auto"
    """Implementation of the table's query and insert: fused Triton kernels ("triton"; two kernels per query, three
    or four per insert), the torch code ("torch"), or "auto": triton on CUDA when it is installed. Same results
    (tested against each other)."""
    save_in_checkpoint: bool = True
    """Save the table (entries, bucket indices, scores, counters) in training checkpoints, so that a resumed run
    continues exactly like an uninterrupted one. Only the live entries are saved (their size, plus a small bucket
    index): with this off, checkpoints hold only the policy's random stream and counters, and a resumed run starts
    with an empty table. Read when saving and when resuming."""
    policy: CachePolicyConfig = field(default_factory=CachePolicyConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("features", "noise"):
            raise ValueError(f"cache.mode must be 'features' or 'noise'; got {self.mode!r}")
        if self.table_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"cache.table_backend must be 'auto', 'torch' or 'triton'; got {self.table_backend!r}")
        if self.depth < 1:
            raise ValueError(f"cache.depth must be >= 1; got {self.depth}")
        if isinstance(self.policy, dict):
            self.policy = CachePolicyConfig(**self.policy)
        self.cell_size = tuple(float(c) for c in self.cell_size)
        self.adaptive_cell_sizes = tuple(tuple(float(c) for c in cell) for cell in self.adaptive_cell_sizes)

    def build_table(
        self, device: str | torch.device | None = None, check_finite: bool | None = None, cuda_graphs: bool = False
    ) -> HashTable:
        common = dict(
            n_buckets=self.n_buckets,
            bucket_size=self.bucket_size,
            temperature=self.temperature,
            device=device,
            capacity=self.capacity,
            check_finite=self.check_keys if check_finite is None else check_finite,
            max_bytes=None if self.max_memory_mb is None else int(self.max_memory_mb * 2**20),
            cuda_graphs=cuda_graphs,
            backend=self.table_backend,
        )
        if self.adaptive:
            return AdaptiveGridHashTable(self.adaptive_cell_sizes, gamma=self.gamma, **common)
        return GridHashTable(self.cell_size, **common)
