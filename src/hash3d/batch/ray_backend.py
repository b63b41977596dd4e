"""Running the job list on a Ray cluster (`--backend ray`): one worker actor per GPU, jobs handed to free workers.

Each `BatchWorker` actor holds one GPU (one CPU on a cluster without GPUs: tests, trials) and runs job after job
with the same `worker.execute` as the local backend, keeping the diffusion models of the config it runs loaded
between items (`hash3d.diffusion.resident`); a free worker takes the next job of the config it ran last when there
is one. Jobs and results are small plain data; the outputs go to the item folders under the output root, which must
be a path every node sees (shared storage), and the driver reads them from there to write the summary.

Fault tolerance: a worker that dies (process killed, node lost) or runs out of GPU memory is replaced by a fresh
actor and its job is run again, up to `retries` more times; then the job is marked failed with the error. Other
failures (bad input, a bug) are not retried: they would fail again. Finished items are never redone, and a second
run of the same command resumes (the item folders' markers, `state.py`).

Ray is an optional extra (`pip install -e ".[ray]"`); nothing else in hash3d imports it.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dispatch import Events, Outcome
from .errors import BatchError
from .jobs import JobSpec
from .state import ItemDir

EXTRA = 'pip install -e ".[ray]"'
RETRIED_ERRORS = ("OutOfMemoryError",)
"""Failures inside a job that another try may not meet (torch.cuda.OutOfMemoryError); others are final."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BatchError(
            f"--backend ray needs Ray, which is not installed here: install the extra with `{EXTRA}` "
            "(in the checkout), or use --backend local"
        ) from None
    return ray


@dataclass(frozen=True)
class WorkerSlot:
    """Where a Ray job runs, for the progress lines."""

    label: str
    gpu: int | None = None


class BatchWorker:
    """A Ray actor: runs jobs one at a time on its GPU (or the CPU), keeping the models loaded between them."""

    def __init__(self, use_gpu: bool):
        from hash3d.diffusion.resident import ResidentModels

        self.gpu = "0" if use_gpu else None  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
        self.models = ResidentModels()

    def run(self, spec: dict[str, Any], log: str) -> dict[str, Any]:
        """Run one job with this process's output going to `log` (on the shared output root)."""
        from hash3d.diffusion.resident import keep_loaded

        from .worker import execute

        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle, _output_to(handle), keep_loaded(self.models):
            try:
                return execute(spec, self.gpu)
            finally:
                self.models.end_run()


@contextmanager
def _output_to(handle) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so native code's output too) go to a file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(handle.fileno(), 1)
    os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


def _src_folder() -> str:
    return str(Path(__file__).resolve().parents[2])


@dataclass
class _Running:
    job: JobSpec
    worker: int
    attempt: int
    t0: float
    log: Path


class RayDispatcher:
    """The job list on Ray actors; see the module docstring."""

    def __init__(self, address: str | None, workers: int | None, retries: int, log_dir: Path, fail_fast: bool = False):
        if retries < 0:
            raise BatchError(f"--retries {retries}: must be 0 or more")
        if workers is not None and workers < 1:
            raise BatchError(f"--jobs {workers}: must be at least 1")
        self.address, self.workers, self.retries, self.log_dir = address, workers, retries, log_dir
        self.fail_fast = fail_fast
        self.ray = import_ray()
        self._actor_class: Any = None

    # ------------------------------------------------------------------ cluster and actors
    def _connect(self) -> bool:
        """Connect to the cluster (Ray's rules without --address: RAY_ADDRESS, a cluster started on this machine, else a
        new local instance); True if this call connected (and so disconnects at the end)."""
        if self.ray.is_initialized():
            return False
        try:
            self.ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                          logging_level="WARNING")  # fmt: skip
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise BatchError(f"--address {self.address}: cannot connect to a Ray cluster there ({exc}); start one "
                             "with `ray start --head` (see docs/cluster.md)") from None  # fmt: skip
        return True

    def _plan_workers(self) -> tuple[int, dict[str, int]]:
        """How many workers, and what each asks of Ray: a GPU and its share of the CPUs (Ray sets the worker's
        OMP_NUM_THREADS to it: mesh extraction and the host side of a step use them), or one CPU without GPUs."""
        resources = self.ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if gpus:
            if self.workers is not None and self.workers > gpus:
                raise BatchError(f"--jobs {self.workers}: the Ray cluster has {gpus} GPU(s) now, one job per GPU "
                                 "(add nodes, or give --jobs at most that)")  # fmt: skip
            return self.workers or gpus, {"num_gpus": 1, "num_cpus": max(1, cpus // gpus)}
        n = self.workers or 1
        if n > max(cpus, 1):
            raise BatchError(f"--jobs {n}: the Ray cluster has no GPU and {cpus} CPU(s): one job per CPU at most")
        return n, {"num_cpus": 1}

    def _new_actor(self, resources: dict[str, int]) -> Any:
        env = {"PYTHONPATH": os.pathsep.join([_src_folder(), "${PYTHONPATH}"])}  # hash3d importable, installed or not
        if self._actor_class is None:
            self._actor_class = self.ray.remote(max_restarts=0)(BatchWorker)
        options = self._actor_class.options(runtime_env={"env_vars": env}, **resources)
        return options.remote("num_gpus" in resources)

    # ------------------------------------------------------------------ the loop
    def run(self, jobs: Sequence[JobSpec], events: Events) -> list[Outcome]:
        started_here = self._connect()
        actors: list[Any] = []
        try:
            n, resources = self._plan_workers()
            actors.extend(self._new_actor(resources) for _ in range(min(n, len(jobs))))
            return self._loop(jobs, events, actors, resources)
        finally:  # also on Ctrl-C: the jobs stopped here are unfinished, and the next run redoes them
            for actor in actors:
                self.ray.kill(actor, no_restart=True)
            if started_here:
                self.ray.shutdown()

    def _loop(self, jobs: Sequence[JobSpec], events: Events, actors: list[Any], resources: dict[str, int]) -> list[Outcome]:
        """Hand jobs to free workers until every job has ended; `actors` is updated as dead workers are replaced."""
        kind = "GPU" if "num_gpus" in resources else "CPU"
        last_variant: dict[int, str] = {}
        pending: deque[tuple[JobSpec, int]] = deque((job, 1) for job in jobs)
        running: dict[Any, _Running] = {}
        free = list(range(len(actors)))
        outcomes: list[Outcome] = []
        stop = False
        while running or (pending and not stop):
            while free and pending and not stop:
                w = free.pop(0)
                job, attempt = self._take(pending, last_variant.get(w))
                log = self.log_dir / job.variant / f"{job.item}.log"
                ref = actors[w].run.remote(job.to_dict(), str(log))
                running[ref] = _Running(job, w, attempt, time.perf_counter(), log)
                last_variant[w] = job.variant
                events.started(job, WorkerSlot(f"Ray worker {w + 1} ({kind})"))
            ready, _ = self.ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                r = running.pop(ref)
                free.append(r.worker)
                error = self._worker_lost(ref)
                if error is not None:
                    self.ray.kill(actors[r.worker], no_restart=True)
                    actors[r.worker] = self._new_actor(resources)  # a fresh process (and GPU memory) for the next try
                    last_variant.pop(r.worker, None)
                    ItemDir(r.job).fail(error, "WorkerDied")  # unfinished until a try finishes it
                    if r.attempt <= self.retries:
                        retrying = getattr(events, "retrying", None)
                        if retrying is not None:
                            retrying(r.job, error, r.attempt + 1, self.retries + 1)
                        pending.appendleft((r.job, r.attempt + 1))
                        continue
                    outcome = Outcome(r.job, "killed", time.perf_counter() - r.t0, None,
                                      f"{error} (tried {r.attempt} time(s))", log=str(r.log))  # fmt: skip
                else:
                    out = self.ray.get(ref)
                    outcome = Outcome(r.job, out["status"], time.perf_counter() - r.t0, out.get("result"),
                                      out.get("error"), bool(out.get("user_error")), str(r.log))  # fmt: skip
                events.ended(outcome)
                outcomes.append(outcome)
                stop = stop or (self.fail_fast and outcome.status != "done")
        return outcomes

    def _worker_lost(self, ref: Any) -> str | None:
        """Why the job's worker is gone or unfit for it (died, out of GPU memory); None when the job ended there."""
        try:
            out = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the actor died, or something escaped execute()
            return _death_message(exc)
        if out["status"] == "failed" and out.get("type") in RETRIED_ERRORS:
            return f"{out['type']}: {out['error']}"
        return None

    @staticmethod
    def _take(pending: deque[tuple[JobSpec, int]], variant: str | None) -> tuple[JobSpec, int]:
        """The first pending job of the config the worker ran last (its models are loaded), else the first."""
        if variant is not None:
            for i, (job, attempt) in enumerate(pending):
                if job.variant == variant:
                    del pending[i]
                    return job, attempt
        return pending.popleft()


def _death_message(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if "ActorDied" in name or "ActorError" in name or "WorkerCrashed" in name:
        return f"the Ray worker running the job died ({name}: {text[:300]})"
    return f"{name}: {text[:300]}"
