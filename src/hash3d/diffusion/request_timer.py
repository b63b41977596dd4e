"""GPU time of cache requests from CUDA events, read back without synchronising.

A request's cost on the GPU timeline is the time between an event recorded when the policy decided and one recorded
when the request's answer was queued. It includes the GPU idling while the host launches or waits (a launch-bound
UNet or a host read costs what it costs the step). Events are read only once the GPU has passed them, a few requests
later, so timing adds no synchronisation.
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
        self.max_pending = max_pending
        self.event = event
        """Makes an event with record(), query() and elapsed_time(other) (CUDA events; tests pass a stand-in)."""

    def start(self) -> torch.cuda.Event:
        event = self.event()
        event.record()
        return event

    def stop(self, start: torch.cuda.Event, shape: tuple, tried: bool) -> None:
        end = self.event()
        end.record()
        self.pending.append((start, end, shape, tried))
        while len(self.pending) > self.max_pending:  # never read: drop the oldest rather than grow
            self.pending.popleft()

    def ready(self) -> Iterator[tuple[tuple, bool, float]]:
        """(shape, tried, ms) of every finished request, oldest first."""
        while self.pending and self.pending[0][1].query():
            start, end, shape, tried = self.pending.popleft()
            yield shape, tried, start.elapsed_time(end)

    def clear(self) -> None:
        self.pending.clear()
