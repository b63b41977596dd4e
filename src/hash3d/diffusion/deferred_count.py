"""Counts computed on the GPU, read on the host once the GPU has got there: no synchronisation.

`push(tag, count)` copies a 0-d integer tensor into pinned host memory behind the work queued so far and records an
event; `ready()` yields (tag, value) for every count whose event has passed, oldest first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator

import torch


class DeferredCounts:
    def __init__(self, max_pending: int = 256, event: Callable[[], torch.cuda.Event] = torch.cuda.Event):
        self.pending: deque[tuple[torch.cuda.Event, torch.Tensor, Hashable]] = deque()
        self.max_pending = max_pending
        self.event = event
        """Makes an event with record() and query() (CUDA events; tests pass a stand-in)."""

    def push(self, tag: Hashable, count: torch.Tensor) -> None:
        if count.is_cuda:
            host = torch.empty(count.shape, dtype=count.dtype, pin_memory=True)
            host.copy_(count, non_blocking=True)
        else:
            host = count.detach().clone()
        event = self.event()
        event.record()
        self.pending.append((event, host, tag))
        while len(self.pending) > self.max_pending:  # never read: drop the oldest rather than grow
            self.pending.popleft()

    def ready(self) -> Iterator[tuple[Hashable, int]]:
        while self.pending and self.pending[0][0].query():
            _, host, tag = self.pending.popleft()
            yield tag, int(host)

    def clear(self) -> None:
        self.pending.clear()
