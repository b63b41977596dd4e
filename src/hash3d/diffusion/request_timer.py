"""GPU time of cache requests from CUDA events, read back without synchronising.

A request's cost is the GPU-timeline period from its decision to the next request's decision: the whole training
step it belongs to. Timing only the UNet call misses what trying the cache costs around it: the host read of the hit
count stalls the host, and the GPU then idles while the rest of the step is launched, after the request has ended.
Both arms (try / skip) pay the same rendering, encoding and backward, so the difference of their periods is what
trying the cache saves or costs. Events are read only once the GPU has passed them, a few requests later, so timing
adds no synchronisation.

A period in which one-off work happened (a CUDA graph captured, a new batch shape's first eager call) is not
measured: that cost is paid once, and what the policy weighs is what the next request of each arm will cost. Nor is
the period of a request marked unmeasured (a quiet probe: neither arm's cost).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import torch


def _cuda_event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


class RequestTimer:
    def __init__(self, max_pending: int = 256, event: Callable[[], torch.cuda.Event] = _cuda_event):
        self.pending: deque[tuple[torch.cuda.Event, torch.cuda.Event, tuple, bool]] = deque()
        self.open: tuple[torch.cuda.Event, tuple, bool, bool] | None = None
        self.max_pending = max_pending
        self.event = event
        """Makes an event with record(), query() and elapsed_time(other) (CUDA events; tests pass a stand-in)."""

    def mark(self, shape: tuple, tried: bool, previous_one_off: bool = False, measured: bool = True) -> None:
        """A request (latents of `shape`, tried or not) starts: it ends the previous request's period, which is
        dropped when `previous_one_off` (one-off work happened in it) or when that request was marked unmeasured."""
        event = self.event()
        event.record()
        if self.open is not None and not previous_one_off:
            start, last_shape, last_tried, last_measured = self.open
            if last_measured:
                self.pending.append((start, event, last_shape, last_tried))
            while len(self.pending) > self.max_pending:  # never read: drop the oldest rather than grow
                self.pending.popleft()
        self.open = (event, shape, tried, measured)

    def ready(self) -> Iterator[tuple[tuple, bool, float]]:
        """(shape, tried, ms) of every finished period, oldest first."""
        while self.pending and self.pending[0][1].query():
            start, end, shape, tried = self.pending.popleft()
            yield shape, tried, start.elapsed_time(end)

    def clear(self) -> None:
        self.pending.clear()
        self.open = None
