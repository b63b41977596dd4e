"""The tensors a hash table keeps: its bucket index and its pool of entries.

A table (`hash3d.cache.table`) owns one `TableStorage` and replaces it (or its pool tensors) on reset, restore and
growth; its query and insert backends (torch code, or the fused kernels of `table_triton`) read and write these
tensors in place, and graph owners watch them for replacement (`hash3d.diffusion.cache_graph.StorageWatch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TableStorage:
    cells: torch.Tensor | None = None
    """[M, n_buckets + 1, Q, 4] int64 cell coordinates of each bucket slot (row n_buckets: scratch for dropped writes)."""
    ref_slot: torch.Tensor | None = None
    """[M, n_buckets + 1, Q] pool slot each bucket slot points at."""
    ref_id: torch.Tensor | None = None
    """[M, n_buckets + 1, Q] entry id each bucket slot expects there (-1: empty); a stale id is never a hit."""
    head: torch.Tensor | None = None
    """[M, n_buckets + 1] next bucket slot to overwrite (FIFO)."""
    score: torch.Tensor | None = None
    """[M, n_buckets + 1] adaptive-grid similarity score of each bucket."""
    pool_ids: torch.Tensor | None = None
    """[capacity] id of the entry in each pool slot (-1: empty)."""
    pool_latents: torch.Tensor | None = None
    """[rows, latent numel] noisy latents of the entries (None before the first insert)."""
    pool_values: torch.Tensor | None = None
    """[rows, value numel] stored values (noise predictions or deep features)."""
    pool_norms: torch.Tensor | None = None
    """[rows] norms of the stored values (adaptive scores)."""
    next_id: torch.Tensor | None = None
    """Scalar: id of the next entry (graph replays advance it on the device)."""
    live: torch.Tensor | None = None
    """Scalar: entries some bucket still references."""
    stamp: torch.Tensor | None = None
    """[rows] the fused live count's per-slot stamps (scratch, not saved)."""
    epoch: torch.Tensor | None = None
    """Scalar: the fused live count's epoch (scratch, not saved)."""
