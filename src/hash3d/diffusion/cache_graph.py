"""A tried cache request as one CUDA graph: the hit/miss decision stays on the GPU.

Without this, the cache must read the number of hits on the host to choose between running the UNet on every sample,
on none, or on the misses only: one synchronisation per UNet call, which stalls the CPU that should be queueing the
rest of the training step. Here one graph per request shape does it all with conditional nodes (CUDA >= 12.4):

    query the table -> (values [B, G, ...], hit [B]);
    order the keys misses-first; for each bucket size s in sizes(B) (powers of two below B, and B):
        if s_prev < n_miss <= s: run the full UNet on the first s keys of that order, keep the outputs of the real
                                 misses and insert those (a masked insert: no data-dependent shapes);
    features mode, likewise hits-first: if s_prev < n_hit <= s: the shallow pass on the first s keys with their
                                 blended deep features;
    noise mode: hits take the blended stored outputs.

Results per sample equal the eager path's (which pads split batches to a power of two likewise). Keys with NaN or inf
are never looked up or stored here (they run in full); the cache counts them and raises when its statistics are next
read.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
import torch

from ..cuda_graphs import capture_pool, capturing, run_if

RunPhase = Callable[[str, tuple, "torch.Tensor | None"], "tuple[torch.Tensor, torch.Tensor | None]"]
"""(phase, UNet call tensors, deep feature for "reuse") -> (UNet output, recorded deep feature or None)."""


def bucket_sizes(n: int) -> list[int]:
    """Static batch sizes that serve every count from 1 to n: the powers of two below n, then n."""
    sizes, s = [], 1
    while s < n:
        sizes.append(s)
        s *= 2
    return sizes + [n]


def bucket_for(count: int, n: int) -> int:
    """The smallest of `bucket_sizes(n)` that holds `count` rows (1 <= count <= n): the next power of two, but never
    more than n, so a pass over a whole request is not padded."""
    return min(1 << (count - 1).bit_length(), n)


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
        current = (self.table._cells, self.table._pool_values)
        if self._refs is not None and all((ref() if ref else None) is obj for ref, obj in zip(self._refs, current)):
            return False
        self._refs = tuple(None if obj is None else weakref.ref(obj) for obj in current)
        return True


def _signature(tensors: tuple) -> tuple:
    return tuple((tuple(t.shape), t.dtype) for t in tensors)


class RequestGraphs:
    """Captures and replays one conditional graph per request signature (call shapes, number of keys, groups).

    The graphs read and write the table's storage in place, so they are dropped whenever that storage is replaced
    (reset, restore, first allocation, growth).
    """

    def __init__(self, table, mode: str, counts: torch.Tensor, capture: bool = True):
        self.table = table
        self.mode = mode
        self.capture = capture
        """False: run the same step eagerly, reading each branch condition on the host (CPU tests, debugging)."""
        self.counts = counts
        """Device counters [full samples, cached samples, ...] whose first two the graphs advance."""
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {}
        self.pool = None
        self._storage = StorageWatch(table)

    def _storage_changed(self) -> bool:
        return self._storage.changed()

    @property
    def captured(self) -> int:
        return len(self.graphs)

    def __call__(self, run_phase: RunPhase, call: tuple, keys: torch.Tensor, latents: torch.Tensor, groups: int):
        """call: the UNet's tensor arguments ([G·B] rows each); keys [B, 4]; latents [B, ...] -> (output, hit [B])."""
        self.table.reserve(keys.shape[0])  # room for the graph's insert (may grow the storage: checked next)
        if self._storage_changed():
            self.graphs.clear()
            self.pool = None
        inputs = tuple(call) + (keys, latents)
        if not self.capture:
            rows = key_rows(torch.zeros(1, dtype=torch.long, device=keys.device), keys.shape[0], groups)
            probe = run_phase("full", tuple(a.index_select(0, rows) for a in call), None)[0]  # the output's shape
            return self._step(run_phase, call, keys, latents, groups, (probe.shape[1:], probe.dtype))
        key = (_signature(inputs), groups)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(run_phase, inputs, len(call), groups)
        graph, static, (out, hit) = entry
        for buffer, value in zip(static, inputs):
            buffer.copy_(value)
        graph.replay()
        return out.clone(), hit.clone()

    def _warm_up(self, run_phase: RunPhase, call: tuple, n_keys: int, groups: int) -> tuple[torch.Size, torch.dtype]:
        """Run every branch's UNet pass once eagerly (kernel selection, lazy initialisation) before capturing;
        returns the shape of one output row and its dtype."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for s in bucket_sizes(n_keys):
                rows = key_rows(torch.arange(s, device=call[0].device), n_keys, groups)
                args = tuple(a.index_select(0, rows) for a in call)
                full, deep = run_phase("record" if self.mode == "features" else "full", args, None)
                if self.mode == "features":
                    run_phase("reuse", args, deep)
        torch.cuda.current_stream().wait_stream(side)
        return full.shape[1:], full.dtype

    def _capture(self, run_phase: RunPhase, inputs: tuple, n_call: int, groups: int):
        static = [t.clone() for t in inputs]
        call, keys, latents = tuple(static[:n_call]), static[n_call], static[n_call + 1]
        out_spec = self._warm_up(run_phase, call, keys.shape[0], groups)
        self.pool = capture_pool(self.pool)
        graph = torch.cuda.CUDAGraph()
        with capturing(), torch.cuda.graph(graph, pool=self.pool):
            result = self._step(run_phase, call, keys, latents, groups, out_spec)
        return graph, static, result

    def _step(self, run_phase: RunPhase, call: tuple, keys: torch.Tensor, latents: torch.Tensor, groups: int, out_spec):
        """What the graph does (see the module docstring); everything stays on the device."""
        B, dev = keys.shape[0], keys.device
        finite = torch.isfinite(keys).all(-1)
        values, hit = self.table._query_core(torch.where(finite[:, None], keys, torch.zeros_like(keys)), latents)
        hit = hit & finite
        n_hit = hit.sum()
        n_miss = B - n_hit
        self.counts[:2] += torch.stack([n_miss, n_hit])

        features = self.mode == "features"
        if features:
            out = torch.zeros((groups * B,) + tuple(out_spec[0]), dtype=out_spec[1], device=dev)
        else:
            out = from_entries(values).to(out_spec[1])
        misses_first = torch.argsort(hit.to(torch.int8), stable=True)
        hits_first = torch.argsort((~hit).to(torch.int8), stable=True)
        positions = torch.arange(B, device=dev)

        def write(rows: torch.Tensor, valid_keys: torch.Tensor, result: torch.Tensor) -> None:
            valid = valid_keys.repeat(groups).view((-1,) + (1,) * (result.ndim - 1))
            out.index_copy_(0, rows, torch.where(valid, result.to(out.dtype), out.index_select(0, rows)))

        def full_branch(s: int) -> None:
            index = misses_first[:s]
            rows = key_rows(index, B, groups)
            args = tuple(a.index_select(0, rows) for a in call)
            result, deep = run_phase("record" if features else "full", args, None)
            valid = positions[:s] < n_miss
            write(rows, valid, result)
            stored = deep if features else result
            self.table._insert_core(keys.index_select(0, index), latents.index_select(0, index),
                                    to_entries(stored.detach(), groups), valid & finite.index_select(0, index))

        def shallow_branch(s: int) -> None:
            index = hits_first[:s]
            rows = key_rows(index, B, groups)
            args = tuple(a.index_select(0, rows) for a in call)
            result, _ = run_phase("reuse", args, from_entries(values.index_select(0, index)))
            write(rows, positions[:s] < n_hit, result)

        sizes = bucket_sizes(B)
        for previous, s in zip([0] + sizes[:-1], sizes):
            run_if((n_miss > previous) & (n_miss <= s), lambda s=s: full_branch(s))
        if features:
            for previous, s in zip([0] + sizes[:-1], sizes):
                run_if((n_hit > previous) & (n_hit <= s), lambda s=s: shallow_branch(s))
        return out, hit
