"""Running the job list on this machine: one job at a time in this process, or N worker processes, one per GPU.

A dispatcher takes the job list (`JobSpec`s, plain data) and returns one `Outcome` per job; how a job runs is
`worker.execute(spec_dict, gpu)` in every case. `InlineDispatcher` calls it here (`--jobs 1`: no process start-up,
the CPU default). `ProcessDispatcher` keeps up to N jobs running, each in a fresh `python -m hash3d.batch.worker`
process pinned to one GPU with CUDA_VISIBLE_DEVICES (the GPU's index in this process's own CUDA_VISIBLE_DEVICES
list when that is set), so a job sees its GPU as cuda:0 and a crash or a leak stays in its process. A cluster engine
takes the same list and the same `execute` instead (`ray_backend.py`, `--backend ray`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import BatchError
from .jobs import JobSpec
from .state import ItemDir


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: a GPU index as this process sees it, or None for the CPU."""

    gpu: int | None

    @property
    def label(self) -> str:
        return "CPU" if self.gpu is None else f"GPU {self.gpu}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a worker process pinned to this slot."""
        env = dict(os.environ if base is None else base)
        if self.gpu is None:
            env["CUDA_VISIBLE_DEVICES"] = ""
            return env
        visible = env.get("CUDA_VISIBLE_DEVICES")
        ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
        env["CUDA_VISIBLE_DEVICES"] = ids[self.gpu] if ids and self.gpu < len(ids) else str(self.gpu)
        return env


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def make_slots(jobs: int, gpus: Sequence[int] | None, available: int | None = None) -> list[Slot]:
    """`jobs` slots on the first `jobs` of `gpus` (default: every visible GPU); the CPU when there is none."""
    if jobs < 1:
        raise BatchError(f"--jobs {jobs}: must be at least 1")
    available = visible_gpus() if available is None else available
    if gpus is None:
        gpus = list(range(available))
    bad = [g for g in gpus if g < 0 or g >= available]
    if bad:
        raise BatchError(f"--gpus: no GPU {', '.join(map(str, bad))} here ({available} visible GPU(s))")
    if not gpus:
        if jobs > 1:
            raise BatchError(f"--jobs {jobs}: there is no GPU here (one job per GPU); on the CPU use --jobs 1")
        return [Slot(None)]
    if jobs > len(gpus):
        raise BatchError(f"--jobs {jobs}: one job per GPU, and {len(gpus)} GPU(s) are available ({', '.join(map(str, gpus))})")
    return [Slot(g) for g in gpus[:jobs]]


@dataclass
class Outcome:
    job: JobSpec
    status: str
    """'done', 'failed' or 'killed' (the worker process died: signal, out of memory)."""
    seconds: float = 0.0
    result: dict | None = None
    error: str | None = None
    user_error: bool = False
    log: str | None = None


class Events(Protocol):
    """What a dispatcher reports (the Ray one also calls `retrying(job, error, attempt, attempts)` when it has one)."""

    def started(self, job: JobSpec, slot: Slot) -> None: ...
    def ended(self, outcome: Outcome) -> None: ...


class Dispatcher(Protocol):
    def run(self, jobs: Sequence[JobSpec], events: Events) -> list[Outcome]: ...


class InlineDispatcher:
    """Jobs one after another in this process."""

    def __init__(self, slot: Slot, fail_fast: bool = False):
        self.slot, self.fail_fast = slot, fail_fast

    def run(self, jobs: Sequence[JobSpec], events: Events) -> list[Outcome]:
        from .worker import execute

        outcomes = []
        for job in jobs:
            events.started(job, self.slot)
            t0 = time.perf_counter()
            out = execute(job.to_dict(), None if self.slot.gpu is None else str(self.slot.gpu))
            outcome = Outcome(job, out["status"], time.perf_counter() - t0, out.get("result"), out.get("error"),
                              bool(out.get("user_error")))  # fmt: skip
            events.ended(outcome)
            outcomes.append(outcome)
            if self.fail_fast and outcome.status != "done":
                break
        return outcomes


class ProcessDispatcher:
    """Up to len(slots) jobs at once, each in its own worker process pinned to its slot's GPU."""

    def __init__(self, slots: Sequence[Slot], log_dir: Path, fail_fast: bool = False, poll_s: float = 0.2,
                 python: str = sys.executable):  # fmt: skip
        self.slots, self.log_dir, self.fail_fast, self.poll_s, self.python = list(slots), log_dir, fail_fast, poll_s, python

    def _start(self, job: JobSpec, slot: Slot) -> tuple[subprocess.Popen, Path, float]:
        log = self.log_dir / job.variant / f"{job.item}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        gpu = "cpu" if slot.gpu is None else "0"  # the worker sees only its GPU
        cmd = [self.python, "-m", "hash3d.batch.worker", "--gpu", gpu, "--spec", job.to_json()]
        env = slot.env()
        src = str(Path(__file__).resolve().parents[2])  # hash3d importable in the worker, installed or not
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        with open(log, "w") as handle:
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        return proc, log, time.perf_counter()

    def _finish(self, job: JobSpec, code: int, log: Path, seconds: float) -> Outcome:
        item = ItemDir(job)
        if code == 0 and item.result() is not None:
            return Outcome(job, "done", seconds, item.result(), log=str(log))
        error = item.error()
        if error is not None:
            return Outcome(job, "failed", seconds, None, error["error"], code == 3, str(log))
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            text = f"the worker process was killed ({name}) before the job finished"
        elif code == 130:
            text = "the worker process was interrupted"
        else:
            text = f"the worker process exited with status {code} before the job finished"
        item.fail(text, "WorkerDied")  # the item folder says why it is unfinished (the next run redoes it)
        return Outcome(job, "killed", seconds, None, f"{text}; see {log}", log=str(log))

    def run(self, jobs: Sequence[JobSpec], events: Events) -> list[Outcome]:
        pending = deque(jobs)
        free = list(self.slots)
        running: dict[int, tuple[JobSpec, Slot, subprocess.Popen, Path, float]] = {}
        outcomes: list[Outcome] = []
        stop = False
        try:
            while running or (pending and not stop):
                while free and pending and not stop:
                    job, slot = pending.popleft(), free.pop(0)
                    proc, log, t0 = self._start(job, slot)
                    running[proc.pid] = (job, slot, proc, log, t0)
                    events.started(job, slot)
                for pid, (job, slot, proc, log, t0) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[pid]
                    free.append(slot)
                    outcome = self._finish(job, code, log, time.perf_counter() - t0)
                    events.ended(outcome)
                    outcomes.append(outcome)
                    stop = stop or (self.fail_fast and outcome.status != "done")
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self._stop_all([proc for _, _, proc, _, _ in running.values()])
            raise
        return outcomes

    @staticmethod
    def _stop_all(procs: list[subprocess.Popen], grace_s: float = 30.0) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when the batch process dies (killed), instead of running on unwatched."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def make_dispatcher(slots: list[Slot], isolate: bool, log_dir: Path, fail_fast: bool) -> InlineDispatcher | ProcessDispatcher:
    if len(slots) == 1 and not isolate:
        return InlineDispatcher(slots[0], fail_fast)
    return ProcessDispatcher(slots, log_dir, fail_fast)

