"""Batch layout of a cache request: split-batch bucket sizes, key rows of the CFG groups, entry packing, and the
watch that tells graph owners when the table's storage was replaced."""

from __future__ import annotations

import weakref

import torch


def bucket_for(count: int, n: int, floor: int = 1) -> int:
    """Rows a split pass of `count` of a request's n rows is padded to (1 <= count <= n): the next power of two at or
    above both count and floor, but never more than n, so a pass over a whole request is not padded."""
    return min(1 << (max(count, floor) - 1).bit_length(), n)


def key_rows(keys_index: torch.Tensor, n_keys: int, groups: int) -> torch.Tensor:
    """UNet-batch rows of the given keys, group-major: key i owns rows i, i + B, i + 2B, ..."""
    offsets = torch.arange(groups, device=keys_index.device)[:, None] * n_keys
    return (keys_index[None, :] + offsets).reshape(-1)


def to_entries(t: torch.Tensor, groups: int) -> torch.Tensor:
    """[groups * b, ...] -> [b, groups, ...] (one cache entry per key)."""
    return t.reshape((groups, -1) + t.shape[1:]).transpose(0, 1)


def from_entries(t: torch.Tensor) -> torch.Tensor:
    """[b, groups, ...] -> [groups * b, ...]."""
    return t.transpose(0, 1).reshape((-1,) + t.shape[2:])


class StorageWatch:
    """Tells whether a table's storage tensors were replaced (reset, restore, first allocation, growth) since the last
    look: graphs captured on the old ones must not be replayed. Holds weak references only."""

    def __init__(self, table):
        self.table = table
        self._refs: tuple | None = None

    def changed(self) -> bool:
        current = (self.table.storage.cells, self.table.storage.pool_values)
        if self._refs is not None and all((ref() if ref else None) is obj for ref, obj in zip(self._refs, current)):
            return False
        self._refs = tuple(None if obj is None else weakref.ref(obj) for obj in current)
        return True
