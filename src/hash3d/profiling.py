"""Where a training step's GPU time goes, for the benchmarks: CUDA events around named sections.

Code marks its parts with `section(name)` (a no-op unless a timer is active, so the training code pays nothing);
a benchmark wraps a run in `with SectionTimer() as timer:` and reads `timer.totals_ms()` at the end. Events are
recorded on the current stream and only read at the end, so timing adds no host synchronisation to a step.
Sections may nest; each is measured on its own (a parent's time includes its children's).

The backward pass runs after the forward sections have closed; `time_backward(name, output, input)` marks the
stretch of the backward pass between the gradient reaching `output` and the gradient leaving for `input` (e.g. the
VAE encoder's backward inside `loss.backward()`).

Which kernels make up a section: `with kernel_profile() as kp:` runs a `torch.profiler` profile (CPU ops, plus CUDA
kernels where CUDA is available) during which every `section(name)` also opens a `record_function(name)` range;
`attribute(kp.profiler.events(), kp.sections, device_time=...)` then adds up each op's self CPU time, or each
kernel's device time, under the innermost section that launched it. `time_backward` spans open no range: their
kernels count under "backward".

`kernel_profile(skip_steps=K)` records only after K training steps: each training loop calls `step_done()` once at
the end of every step (a no-op unless such a profile is active), and the profile starts recording once K are done.
Its `recorded_ms()` spans the steps after the K (from the end of step K to the end of the last step): e.g. a recipe's
last phase, which a run cannot start in (at the last resolution before the occupancy grid has emptied space).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

_active: SectionTimer | None = None
_profile: KernelProfile | None = None
"""The active kernel profile: while set, sections also open profiler ranges."""


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
def paused() -> Iterator[None]:
    """Sections opened inside are neither timed nor profiled: work outside a training run's steps that its
    training time does not count either (the sanity-check validation before the first step)."""
    global _active, _profile
    timer, profile = _active, _profile
    _active = _profile = None
    try:
        yield
    finally:
        _active, _profile = timer, profile


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    timer = active()
    if timer is None and _profile is None:
        yield
        return
    if _profile is not None:
        _profile.sections.add(name)
    with torch.profiler.record_function(name) if _profile is not None else contextlib.nullcontext():
        if timer is not None:
            timer.start(name)
        try:
            yield
        finally:
            if timer is not None:
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


@dataclass(frozen=True)
class _Mark:
    """A moment of a run: the host's clock, and where CUDA is available an event on the current stream (the device's
    timeline: the host may run ahead of the GPU)."""

    wall_s: float
    event: torch.cuda.Event | None

    @classmethod
    def now(cls) -> _Mark:
        event = None
        if torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        return cls(time.perf_counter(), event)

    def ms_until(self, later: _Mark) -> float:
        if self.event is not None and later.event is not None:
            later.event.synchronize()
            return self.event.elapsed_time(later.event)
        return 1000 * (later.wall_s - self.wall_s)


@dataclass
class KernelProfile:
    profiler: torch.profiler.profile
    sections: set[str] = field(default_factory=set)
    """Names of the sections opened while the profile ran."""
    skip_steps: int = 0
    """Training steps completed before the profiler starts recording."""
    steps_done: int = 0
    """Training steps completed (`step_done` calls) since the profile began."""
    _start: _Mark | None = field(default=None, repr=False)
    _end: _Mark | None = field(default=None, repr=False)

    @property
    def recorded_steps(self) -> int:
        """Training steps completed while the profiler recorded."""
        return max(0, self.steps_done - self.skip_steps)

    def recorded_ms(self) -> float:
        """Milliseconds from the start of recording to the end of the last recorded step (on CUDA the device's time;
        synchronises). With `skip_steps=0` recording starts when the profile does, so whatever the block does before
        its first step counts too."""
        if self._start is None or self._end is None:
            raise ValueError(f"no training step was recorded ({self.steps_done} done, {self.skip_steps} skipped)")
        return self._start.ms_until(self._end)

    def _step_done(self) -> None:
        self.steps_done += 1
        self.profiler.step()  # first: the profiler starts recording before the span's start mark
        if self.steps_done == self.skip_steps:
            self._start = _Mark.now()
        elif self.steps_done > self.skip_steps:
            self._end = _Mark.now()


def _record_after(skip_steps: int):
    """A profiler schedule: nothing for `skip_steps` steps, then recording to the end; the step before the first
    recorded one warms up (sets up the device tracing, whose one-off cost would otherwise fall in a recorded step)."""

    def action(step: int) -> torch.profiler.ProfilerAction:
        if step >= skip_steps:
            return torch.profiler.ProfilerAction.RECORD
        if step == skip_steps - 1:
            return torch.profiler.ProfilerAction.WARMUP
        return torch.profiler.ProfilerAction.NONE

    return action


@contextlib.contextmanager
def kernel_profile(skip_steps: int = 0) -> Iterator[KernelProfile]:
    """Profile the block with `torch.profiler` (CPU ops; CUDA kernels too where CUDA is available), sections marked
    as profiler ranges, recording only after `skip_steps` training steps (`step_done` calls) have completed. Read
    `profiler.events()` after the block (recorded steps only; `recorded_steps` says how many)."""
    global _profile
    if skip_steps < 0:
        raise ValueError(f"skip_steps must be >= 0, got {skip_steps}")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    previous = _profile
    with torch.profiler.profile(activities=activities, schedule=_record_after(skip_steps)) as prof:
        _profile = KernelProfile(prof, skip_steps=skip_steps)
        if skip_steps == 0:
            _profile._start = _Mark.now()
        try:
            yield _profile
        finally:
            _profile = previous


def step_done() -> None:
    """The training loops call this once at the end of every training step: it counts the step for the active
    kernel profile (which starts recording after its `skip_steps`); nothing happens without one."""
    if _profile is not None:
        _profile._step_done()


@dataclass(frozen=True)
class KernelRow:
    section: str
    name: str
    """The op (CPU) or kernel (device) name."""
    calls: int
    ms: float
    """Total over the profile: self CPU time of the op, or device time of the kernel."""
    launched_by: str = ""
    """For a kernel, the op (or runtime call, e.g. cudaGraphLaunch) that launched it; "" where none is known."""


@dataclass(frozen=True)
class Attribution:
    rows: list[KernelRow]
    """Largest first."""
    totals_ms: dict[str, float]
    """Per section, largest first; each the sum of its rows."""


BACKWARD_ENGINE = "autograd::engine::evaluate_function"
RUNTIME_ACTIVITIES = frozenset({"cuda_runtime", "cuda_driver"})


def section_of(event: FunctionEvent, sections: Collection[str]) -> str:
    """The innermost enclosing section range of a CPU event; "backward" for an op the autograd engine ran outside
    any section (its own thread, on CUDA); else "other"."""
    in_backward = False
    parent: FunctionEvent | None = event
    while parent is not None:
        if parent.name in sections:
            return parent.name
        in_backward = in_backward or parent.name.startswith(BACKWARD_ENGINE)
        parent = parent.cpu_parent
    return "backward" if in_backward else "other"


def section_span(events: Iterable[FunctionEvent], sections: Collection[str]) -> tuple[float, float] | None:
    """(first start, last end) in µs of the section ranges: a training run's steps without its set-up and saving."""
    ranges = [e.time_range for e in events if e.device_type == DeviceType.CPU and e.name in sections]
    if not ranges:
        return None
    return min(r.start for r in ranges), max(r.end for r in ranges)


def _is_range(event: FunctionEvent, sections: Collection[str]) -> bool:
    return bool(event.is_user_annotation) or _activity(event) == "gpu_user_annotation" or event.name in sections


def _activity(event: FunctionEvent) -> str | None:
    """The event's kineto activity type; None for events without one (a scheduled profile's `ProfilerStep#N`)."""
    return getattr(event, "activity_type", None)


_Item = tuple[str, str, float, float, str]
"""(section, op or kernel name, launch start µs, time µs, launching op or "")"""


def _cpu_items(events: list[FunctionEvent], sections: Collection[str]) -> Iterator[_Item]:
    """Each CPU op with its self CPU time."""
    for e in events:
        if e.device_type == DeviceType.CPU and not e.is_async and not _is_range(e, sections):
            yield section_of(e, sections), e.name, e.time_range.start, e.self_cpu_time_total, ""


def _device_items(events: list[FunctionEvent], sections: Collection[str]) -> Iterator[_Item]:
    """Each device event (kernel, memcpy, memset) with its device time and the op that launched it. A kernel is
    linked to the op that launched it; one launched outside any op (e.g. a CUDA graph replay) is placed through its
    runtime call (same correlation id) by time: the innermost section range open when it was launched. Where the
    events carry no links (torch before `FunctionEvent.linked_correlation_id`), see `_attached_kernels`."""
    device = [e for e in events if e.device_type != DeviceType.CPU]
    if device and not any(hasattr(e, "linked_correlation_id") for e in device):  # a step marker may lack it alone
        yield from _attached_kernels(events, sections)
        return
    cpu = [e for e in events if e.device_type == DeviceType.CPU]
    ops = {e.id: e for e in cpu if _activity(e) not in RUNTIME_ACTIVITIES}
    launches = {e.id: e for e in cpu if _activity(e) in RUNTIME_ACTIVITIES}
    ranges = sorted((e for e in cpu if e.name in sections), key=lambda e: e.time_range.start)
    for e in events:
        if e.device_type == DeviceType.CPU or e.is_async or _is_range(e, sections):
            continue
        linked = getattr(e, "linked_correlation_id", 0)  # absent on a scheduled profile's step markers
        op = ops.get(linked) if linked > 0 else None
        if op is not None:
            yield section_of(op, sections), e.name, op.time_range.start, e.time_range.elapsed_us(), op.name
            continue
        launch = launches.get(e.id)
        if launch is None:
            yield "other", e.name, e.time_range.start, e.time_range.elapsed_us(), ""
            continue
        start = launch.time_range.start
        open_ranges = [r.name for r in ranges if r.time_range.start <= start <= r.time_range.end]
        yield open_ranges[-1] if open_ranges else "other", e.name, start, e.time_range.elapsed_us(), launch.name


def _attached_kernels(events: list[FunctionEvent], sections: Collection[str]) -> Iterator[_Item]:
    """`_device_items` for torch versions whose device events carry no link to their op: the kernels torch attached to
    each CPU op (`FunctionEvent.kernels`) under the op's section at the op's start; a device event attached to no op
    (a CUDA graph replay, launched outside any op) under "other" at its device start."""
    attached: Counter[tuple[str, float]] = Counter()
    for op in events:
        if op.device_type != DeviceType.CPU or op.is_async or _is_range(op, sections):
            continue
        for kernel in op.kernels:
            attached[kernel.name, kernel.duration] += 1
            yield section_of(op, sections), kernel.name, op.time_range.start, kernel.duration, op.name
    for e in events:
        if e.device_type == DeviceType.CPU or e.is_async or _is_range(e, sections):
            continue
        key = (e.name, e.time_range.elapsed_us())
        if attached[key] > 0:  # counted above, under its op
            attached[key] -= 1
        else:
            yield "other", e.name, e.time_range.start, e.time_range.elapsed_us(), ""


def attribute(
    events: Iterable[FunctionEvent], sections: Collection[str], device_time: bool,
    window: tuple[float, float] | None = None,
) -> Attribution:
    """Time per (section, op or kernel) of a profile's events: each CPU op's self time, or with `device_time` each
    device event's time, under the section that launched it (`section_of`), a kernel's row per launching op. With
    `window` (µs, e.g. `section_span`) only what was launched inside it counts."""
    events = list(events)
    sections = frozenset(sections)
    calls: dict[tuple[str, str, str], int] = defaultdict(int)
    us: dict[tuple[str, str, str], float] = defaultdict(float)
    for section, name, start, time_us, by in (_device_items if device_time else _cpu_items)(events, sections):
        if window is not None and not window[0] <= start <= window[1]:
            continue
        calls[section, name, by] += 1
        us[section, name, by] += time_us
    rows = [KernelRow(s, n, calls[s, n, b], us[s, n, b] / 1000, b) for s, n, b in us]
    rows.sort(key=lambda r: (-r.ms, r.section, r.name, r.launched_by))
    totals: dict[str, float] = defaultdict(float)
    for row in rows:
        totals[row.section] += row.ms
    return Attribution(rows, dict(sorted(totals.items(), key=lambda kv: -kv[1])))
