"""Where a training step's GPU time goes, for the benchmarks: CUDA events around named sections.

Code marks its parts with `section(name)` (a no-op unless a timer is active, so the training code pays nothing);
a benchmark wraps a run in `with SectionTimer() as timer:` and reads `timer.totals_ms()` at the end. Events are
recorded on the current stream and only read at the end, so timing adds no host synchronisation to a step.
Sections may nest; each is measured on its own (a parent's time includes its children's).

The backward pass runs after the forward sections have closed; `time_backward(name, output, input)` marks the
stretch of the backward pass between the gradient reaching `output` and the gradient leaving for `input` (e.g. the
VAE encoder's backward inside `loss.backward()`).
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from collections.abc import Iterator

import torch

_active: SectionTimer | None = None


class SectionTimer:
    """Collects (start, end) CUDA event pairs per section name while it is the active timer."""

    def __init__(self) -> None:
        self.pairs: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)
        self._open: dict[str, torch.cuda.Event] = {}
        self._previous: SectionTimer | None = None

    def __enter__(self) -> SectionTimer:
        global _active
        self._previous, _active = _active, self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = self._previous

    @staticmethod
    def _event() -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self, name: str) -> None:
        self._open[name] = self._event()

    def stop(self, name: str) -> None:
        start = self._open.pop(name, None)
        if start is not None:
            self.pairs[name].append((start, self._event()))

    def totals_ms(self) -> dict[str, float]:
        """Total milliseconds per section (synchronises once)."""
        torch.cuda.synchronize()
        return {name: sum(a.elapsed_time(b) for a, b in pairs) for name, pairs in self.pairs.items()}

    def counts(self) -> dict[str, int]:
        return {name: len(pairs) for name, pairs in self.pairs.items()}


def active() -> SectionTimer | None:
    return _active if _active is not None and torch.cuda.is_available() else None


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    timer = active()
    if timer is None:
        yield
        return
    timer.start(name)
    try:
        yield
    finally:
        timer.stop(name)


def time_backward(name: str, output: torch.Tensor, input: torch.Tensor) -> None:
    """Time the backward pass from `output`'s gradient to `input`'s (both must be part of the autograd graph)."""
    timer = active()
    if timer is None or not (output.requires_grad and input.requires_grad):
        return

    def started(grad: torch.Tensor) -> None:
        timer.start(name)

    def finished(grad: torch.Tensor) -> None:
        timer.stop(name)

    output.register_hook(started)
    input.register_hook(finished)


def timed(name: str):
    """Decorator: run the function inside `section(name)`."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with section(name):
                return fn(*args, **kwargs)

        return inner

    return wrap
