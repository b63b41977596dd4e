"""Typed configuration of the Hash3D cache, shared by every guidance and front-end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .table import DEFAULT_ADAPTIVE_CELLS, AdaptiveGridHashTable, GridHashTable, HashTable


@dataclass
class AutoPolicyConfig:
    """The cost-aware policy's knobs (`policy.strategy: auto`; see `hash3d.cache.policy.AutoPolicy`)."""

    warmup: int = 8
    """Requests of each shape that try unconditionally at first (fill the table, capture the graphs)."""
    explore_every: int = 10
    """While trying: every N-th request skips, so the cost of skipping stays measured (0 = never)."""
    probe_every: int = 50
    """While skipping: a burst of tries starts every N requests."""
    probe_len: int = 10
    """Length of that burst."""
    probe_backoff: int = 8
    """A burst that finds no sample in the table doubles the shape's probe period, up to this many times
    `probe_every`; a burst that finds one restores it (1 = a fixed period)."""
    window: int = 8
    """Measurements per arm kept for the mean; also the run of tried requests that found nothing in the table after
    which a shape stops trying."""
    min_samples: int = 3
    """Measurements each arm needs before the policy may switch."""
    discard: int = 2
    """First measurements of each arm and shape dropped (eager first calls, graph captures)."""
    margin: float = 0.03
    """Trying must measure cheaper than skipping by more than this fraction of the skip cost, or the shape skips."""
    quiet_probes: bool = True
    """A try of a shape whose latest tries found no sample in the table (the warm-up, and the probes of a shape that
    skips) runs as a quiet probe: it queries and fills the table but answers from the plain UNet, and its hit count
    is read back later, without stalling the host. Such a try costs little more than skipping, so a run where
    nothing comes back pays almost nothing to find that out. Real tries start once a probe has found a sample."""

    def __post_init__(self) -> None:
        for name in ("warmup", "explore_every", "discard"):
            if getattr(self, name) < 0:
                raise ValueError(f"cache.policy.auto.{name} must be >= 0; got {getattr(self, name)}")
        for name in ("probe_every", "probe_len", "probe_backoff", "window", "min_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"cache.policy.auto.{name} must be >= 1; got {getattr(self, name)}")
        if self.probe_len > self.probe_every:
            raise ValueError(f"cache.policy.auto.probe_len ({self.probe_len}) must be <= probe_every ({self.probe_every})")
        if self.min_samples > self.window:
            raise ValueError(f"cache.policy.auto.min_samples ({self.min_samples}) must be <= window ({self.window})")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"cache.policy.auto.margin must be in [0, 1); got {self.margin}")


@dataclass
class CachePolicyConfig:
    """When a UNet call may be answered from the cache."""

    probability: float = 0.1
    """fixed: chance that a call tries the cache (the paper's hash probability η; the original's `cache_p`).
    1 = every call."""
    force_full_every: int = 0
    """fixed: every N-th call runs the full UNet without trying the cache (0 = never forced)."""
    seed: int = 0
    """Seed of the policy's own random stream (kept apart from the training RNG so cache on/off runs see equal noise)."""
    strategy: Literal["fixed", "auto"] = "fixed"
    """fixed: try with probability `probability` (the paper's η). auto: try only while trying measures cheaper than
    the plain UNet call, per request shape, from GPU times of both (`hash3d.cache.policy.AutoPolicy`); a run that
    stops paying stops trying and probes again now and then. Without a CUDA device there is no GPU timer: auto then
    tries every request."""
    auto: AutoPolicyConfig = field(default_factory=AutoPolicyConfig)

    def __post_init__(self) -> None:
        if self.strategy not in ("fixed", "auto"):
            raise ValueError(f"cache.policy.strategy must be 'fixed' or 'auto'; got {self.strategy!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"cache.policy.probability must be in [0, 1]; got {self.probability}")
        if self.force_full_every < 0:
            raise ValueError(f"cache.policy.force_full_every must be >= 0; got {self.force_full_every}")
        if isinstance(self.auto, dict):
            self.auto = AutoPolicyConfig(**self.auto)


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
    grows with the entries (doubling; eightfold when the table runs as CUDA graphs, since each growth means new
    captures) up to it, so a table holding few entries takes little memory. Sized for a GPU:
    the configs of CPU-sized models set their own (the mini configs: 256 MB, 1 GB)."""
    temperature: float = 1.0
    """Softmax temperature of the latent-distance blend of a cell's entries."""
    check_keys: bool = True
    """Reject NaN/inf keys (on the CPU one host read per call; on a GPU none: such keys are never stored and the
    statistics' next read raises)."""
    table_backend: Literal["auto", "torch", "triton"] = "auto"
    """Implementation of the table's query and insert: fused Triton kernels ("triton"; two kernels per query, three
    or four per insert), the torch code ("torch"), or "auto": triton on CUDA when it is installed. Same results
    (tested against each other)."""
    save_in_checkpoint: bool = True
    """Save the table (entries, bucket indices, scores, counters) in training checkpoints, so that a resumed run
    continues exactly like an uninterrupted one. Only the live entries are saved (their size, plus a small bucket
    index): with this off, checkpoints hold only the policy's random stream and counters, and a resumed run starts
    with an empty table. Read when saving and when resuming."""
    split_min_latent_pixels: int = 8192
    """With CUDA graphs, a request split between hits and misses runs its misses as one UNet pass padded to a power of
    two of rows, and to at least the rows that hold this many latent pixels (rows x height x width; 8192 = eight rows
    of 32x32 latents), or to the whole request: at a few rows the UNet is launch-bound, so a smaller pass takes about as
    long, and every new pass size costs a first eager call's set-up and a graph capture (bench/new_shapes.py). 1 =
    powers of two from one row."""
    policy: CachePolicyConfig = field(default_factory=CachePolicyConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("features", "noise"):
            raise ValueError(f"cache.mode must be 'features' or 'noise'; got {self.mode!r}")
        if self.table_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"cache.table_backend must be 'auto', 'torch' or 'triton'; got {self.table_backend!r}")
        if self.depth < 1:
            raise ValueError(f"cache.depth must be >= 1; got {self.depth}")
        if self.split_min_latent_pixels < 1:
            raise ValueError(f"cache.split_min_latent_pixels must be >= 1; got {self.split_min_latent_pixels}")
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
