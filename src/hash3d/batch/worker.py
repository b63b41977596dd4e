"""One job, start to end: clear an unfinished item folder, train, render the evaluation views, write result.json.

`execute(spec_dict, gpu)` is the unit any dispatcher runs: plain data in, plain data out. The local dispatcher calls
it in this process (`--jobs 1`) or as `python -m hash3d.batch.worker --gpu 0 --spec JSON` in a worker process
pinned to one GPU with CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hash3d.config.errors import UserInputError
from hash3d.diffusion import resident

from .errors import BatchError
from .frontends import get_front_end
from .jobs import JobSpec
from .paths import working_folder
from .state import ItemDir


def run_job(job: JobSpec, gpu: str | None) -> dict[str, Any]:
    """Run one job (a finished one is not redone) and return its result; exceptions propagate, and the item folder
    is left unfinished (the next invocation redoes it)."""
    item = ItemDir(job)
    if item.finished():
        return {**(item.result() or {}), "skipped": True}
    front_end = get_front_end(job.front_end)
    item.begin(device=f"cuda:{gpu}" if gpu is not None else "cpu")
    if job.workdir and not Path(job.workdir).is_dir():
        raise BatchError(f"{job.workdir} (the config's front-end folder) is not on {socket.gethostname()}: on a "
                         "cluster the checkout must be at the same path on every node (docs/cluster.md)")  # fmt: skip
    kept = resident.active()  # a Ray worker keeps the models loaded between items (ray_backend.py)
    reuses = kept.reuses if kept else 0
    with working_folder(job.workdir):  # the config's relative paths mean what they mean for the front-end's command
        t0 = time.perf_counter()
        record = front_end.train(job, gpu, item.run)
        t1 = time.perf_counter()
        views = front_end.render_views(job, record, gpu, item.views)
        t2 = time.perf_counter()
    result = {
        "job_id": job.job_id,
        "item": job.item,
        "variant": job.variant,
        **record.to_dict(),
        "run_s": round(t1 - t0, 3),
        "views_s": round(t2 - t1, 3),
        "n_views": len(views),
        "models_reused": kept.reuses - reuses if kept else 0,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    item.finish(result)
    return result


def execute(spec: dict[str, Any], gpu: str | None) -> dict[str, Any]:
    """Dispatcher entry point: {'status': 'done', 'result': …} or {'status': 'failed', 'error': …, 'user_error': …};
    the failure is also written into the item's error.json. KeyboardInterrupt propagates."""
    job = JobSpec.from_dict(spec)
    try:
        return {"status": "done", "result": run_job(job, gpu)}
    except Exception as exc:  # noqa: BLE001 - one item's failure is reported, the batch goes on
        message = " ".join(str(exc).split()) or type(exc).__name__
        trace = traceback.format_exc()
        ItemDir(job).fail(message, type(exc).__name__, trace)
        return {"status": "failed", "error": message, "type": type(exc).__name__,
                "user_error": isinstance(exc, UserInputError), "traceback": trace}  # fmt: skip
    finally:
        gc.collect()
        _empty_cuda_cache()


def _empty_cuda_cache() -> None:
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hash3d.batch.worker", description="Run one batch job (internal).")
    parser.add_argument("--spec", required=True, help="the job spec as JSON")
    parser.add_argument("--gpu", default="cpu", help="CUDA device index in this process, or cpu")
    args = parser.parse_args(argv)
    try:
        outcome = execute(json.loads(args.spec), None if args.gpu == "cpu" else args.gpu)
    except KeyboardInterrupt:
        print("worker: interrupted", file=sys.stderr)
        return 130
    if outcome["status"] == "failed":
        print(outcome["traceback"], file=sys.stderr)
        print(f"worker: error: {outcome['error']}", file=sys.stderr)
        return 3 if outcome["user_error"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
