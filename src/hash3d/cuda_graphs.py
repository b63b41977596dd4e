"""Replay a function's GPU work as a CUDA graph, one graph per input signature.

A UNet forward at SDS sizes, or a hash-table query, is bound by kernel launches, not arithmetic: replaying it as a
CUDA graph removes the per-kernel CPU cost. `GraphedFunction(fn)` captures fn the first time it sees a new combination of tensor shapes,
dtypes and devices (plus any non-tensor arguments), then copies new inputs into the captured buffers and replays.
Outputs are cloned before they are returned, so graphs can share one memory pool and results stay valid after
later replays. fn must be free of host synchronisation and of Python decisions that depend on tensor values.
With warmup=0 fn is never run eagerly here (for functions that change state: the capture runs nothing, the replay
that follows it runs fn once).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any

import torch


@contextlib.contextmanager
def capturing() -> Iterator[None]:
    """Around a capture: no cyclic garbage collection during it. A CUDA graph freed by the collector in the middle of
    another capture (one left in a reference cycle) invalidates that capture. (No gc.collect() first: in a training
    process it takes long enough to cost tens of ms per step over a run's captures.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_capture_streams: dict[int, torch.cuda.Stream] = {}


@contextlib.contextmanager
def graph_capture(graph: torch.cuda.CUDAGraph, pool) -> Iterator[None]:
    """Capture the CUDA work launched inside the block into `graph`, its memory from `pool`
    (`torch.cuda.graph_pool_handle()`), without cyclic garbage collection meanwhile (`capturing`).

    What `torch.cuda.graph` does, less emptying the allocator's cache first: that releases every cached block to the
    driver (a synchronising free each), and the training steps after the capture then allocate their memory from the
    driver again. A run that captures a graph for each new batch shape paid this at every capture. The private pool
    keeps the graph's memory apart either way.

    cuBLAS is set up for the capture stream first: a process whose first matrix product would come inside the capture
    fails it (creating the cuBLAS handle and its workspace is not allowed while capturing)."""
    torch.cuda.synchronize()
    device = torch.cuda.current_device()
    stream = _capture_streams.get(device)
    if stream is None:
        stream = _capture_streams[device] = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with capturing(), torch.cuda.stream(stream):
        torch.cuda.current_blas_handle()
        graph.capture_begin(pool)
        try:
            yield
        finally:
            graph.capture_end()
    torch.cuda.current_stream().wait_stream(stream)


def _signature(args: tuple) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor) else a for a in args)


def _clone(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_clone(o) for o in out)
    return out


class GraphedFunction:
    """fn replayed as one CUDA graph per input signature (see the module docstring).

    capture_after: capture a signature at its n-th call and run the earlier ones eagerly. A capture costs a few
    eager calls plus a synchronisation, so signatures that come up once (e.g. the rarer split-batch sizes of a
    cache) are cheaper eager.
    """

    def __init__(self, fn: Callable[..., Any], warmup: int = 2, capture_after: int = 1):
        self.fn = fn
        self.warmup = warmup
        self.capture_after = capture_after
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list, Any]] = {}
        self.calls: dict[tuple, int] = {}
        self.pool = None

    def _capture(self, args: tuple):
        static = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        if self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(*static)
            torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with graph_capture(graph, self.pool):
            out = self.fn(*static)
        return graph, static, out

    def __call__(self, *args):
        key = _signature(args)
        entry = self.graphs.get(key)
        if entry is None:
            self.calls[key] = seen = self.calls.get(key, 0) + 1
            if seen < self.capture_after:
                return self.fn(*args)
            entry = self.graphs[key] = self._capture(args)
        graph, static, out = entry
        for buffer, a in zip(static, args):
            if isinstance(a, torch.Tensor):
                buffer.copy_(a)
        graph.replay()
        return _clone(out)

    @property
    def signatures_seen(self) -> int:
        """Input signatures called so far, captured or still run eagerly."""
        return len(self.calls)

    def reset(self) -> None:
        self.graphs.clear()
        self.calls.clear()
        self.pool = None


def count_one_offs(functions) -> int:
    """Captures plus input signatures seen by a collection of GraphedFunctions: it grows whenever a call paid a
    one-off cost (a capture, or the eager first call of a new signature)."""
    return sum(len(fn.graphs) + fn.signatures_seen for fn in functions)


def count_captured(functions) -> int:
    """CUDA graphs captured so far by a collection of GraphedFunctions (one per function and input signature)."""
    return sum(len(fn.graphs) for fn in functions)


def cuda_graphs_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()
