"""An item's folder and its markers, which make the batch resumable.

    <out>/<variant>/<item>/
        started.json   written first: the job began (pid, host, device, time)
        job.json       the job spec
        run/           the front-end's outputs (threestudio trial folder, DreamGaussian files)
        views/         the evaluation views 000.png, 001.png, …
        result.json    written last, atomically: the job finished (times, it/s, cache counters, fingerprint)
        error.json     the job failed (the error; the folder is redone next time)
        scores.json    metric means per scoring setting (added by the parent after the run; clip.json, nvs.json per view)

A folder with result.json is finished and skipped. Any other folder (started, failed, killed mid-run) is
unfinished: the next job on it deletes it and runs from scratch, so that a result's time and it/s always come from
one uninterrupted run. A result made from another job spec (config edited, other overrides or views) is not
reused: the batch stops and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from .errors import BatchError
from .jobs import JobSpec

STARTED, JOB, RESULT, ERROR, SCORES = "started.json", "job.json", "result.json", "error.json", "scores.json"


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (a reader sees the old file or the whole new one, never half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class ItemDir:
    def __init__(self, job: JobSpec):
        self.job = job
        self.root = Path(job.out_dir)

    run = property(lambda self: self.root / "run")
    views = property(lambda self: self.root / "views")

    def result(self) -> dict[str, Any] | None:
        return read_json(self.root / RESULT)

    def error(self) -> dict[str, Any] | None:
        return read_json(self.root / ERROR)

    def started(self) -> dict[str, Any] | None:
        return read_json(self.root / STARTED)

    def finished(self) -> bool:
        """Finished by this same job spec (a result from another spec raises BatchError)."""
        result = self.result()
        if result is None:
            return False
        if result.get("fingerprint") != self.job.fingerprint():
            raise BatchError(
                f"{self.root} holds a finished run made with other settings (config, overrides or views differ): "
                "use another --out for the new settings, or delete that folder to redo it"
            )
        return True

    def status(self) -> str:
        """'finished', 'failed', 'unfinished' (started, never ended) or 'new'."""
        if (self.root / RESULT).is_file():
            return "finished"
        if (self.root / ERROR).is_file():
            return "failed"
        return "unfinished" if self.root.exists() else "new"

    def begin(self, device: str) -> None:
        """Clear an unfinished folder and mark the job started (refused while another live process runs it)."""
        started = self.started()
        if started and running_elsewhere(started):
            raise BatchError(f"{self.root} is being run by process {started['pid']} on this machine: stop it, or wait")
        if self.root.exists():
            own = {STARTED, JOB, ERROR, "run", "views"}
            entries = {p.name for p in self.root.iterdir()}
            if entries and not entries & own:
                raise BatchError(f"refusing to delete {self.root}: it is not a batch item folder")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        write_json(self.root / STARTED, {"pid": os.getpid(), "host": socket.gethostname(), "device": device,
                                         "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        write_json(self.root / JOB, self.job.to_dict())

    def finish(self, result: dict[str, Any]) -> None:
        write_json(self.root / RESULT, {**result, "fingerprint": self.job.fingerprint()})

    def fail(self, error: str, kind: str, trace: str | None = None) -> None:
        if self.root.exists() and not (self.root / RESULT).exists():
            write_json(self.root / ERROR, {"error": error, "type": kind, "traceback": trace})

    def scores(self) -> dict[str, Any]:
        return read_json(self.root / SCORES) or {}

    def write_scores(self, scores: dict[str, Any]) -> None:
        write_json(self.root / SCORES, scores)


def running_elsewhere(started: dict[str, Any]) -> bool:
    """Whether the process named in a started.json marker still runs a batch job on this machine (a worker left
    behind by a killed batch); pids of other machines or of ended processes do not count."""
    pid = started.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() or started.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return b"hash3d" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # no /proc: cannot tell a reused pid from ours, so do not block


class BatchLock:
    """An exclusive lock on the output folder (two batches writing one folder would redo each other's items).

    flock is released by the OS when the process ends, however it ends, so a killed batch leaves no stale lock."""

    def __init__(self, out: Path):
        self.path = out / "batch.lock"
        self.handle = None

    def __enter__(self) -> "BatchLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise BatchError(
                f"another batch is running in {self.path.parent} ({holder}): wait for it, or use another --out"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
