"""GPU benchmark of `python -m hash3d.batch` on its two backends: the same DreamGaussian batch, local and Ray.

    python bench/batch_backends.py [--items 8] [--backends local ray] [--jobs N] [--out results.json] [key=value ...]

The batch: `--items` image-to-3D items through dreamgaussian-hash3d's `image_sai_hash3d.yaml` (stage 1 and the 16
evaluation views) with a full-size random-weight Stable-Zero123 written once (fp16, `--models`); the items are the
checkout's RGBA images, repeated under new names, so every item does the same work. No CLIP score. Each backend runs
the batch from scratch in a fresh `python -m hash3d.batch` process into its own output folder (Ray: a local cluster
started by the batch, one worker per GPU; local: `--jobs 1` runs the items one after another in the batch's own
process, `--jobs N` one worker process per GPU). An unrecorded one-item batch runs first (--no-warmup: not), so that
building the rasterizers' CUDA extensions on first use is not counted against the first backend.

Per backend: the batch's wall time (process start to exit: imports, cluster start, model loads, runs, views, summary),
wall time per item, the mean job time inside the worker (training with its model load, and the views), the mean
training-loop time, and how many jobs took their model from memory (Ray workers keep it loaded between items).
The overhead of Ray per item is (wall Ray - wall local) / items.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hash3d.testing.models import write_model  # noqa: E402

IMAGES = [REPO / "threestudio-hash3d" / "load" / "images" / n for n in ("dog1_rgba.png", "mug_rgba.png", "snowman_rgba.png")]
IMAGES.append(REPO / "assets" / "mini_heldout_rgba.png")


def make_items(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        source = IMAGES[i % len(IMAGES)]
        shutil.copy(source, folder / f"{i:02d}_{source.name}")
    return folder


def run_backend(backend: str, images: Path, out: Path, model: Path, jobs: int | None, extra: list[str]) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "hash3d.batch", "--front-end", "dreamgaussian-hash3d", "--config",
           "configs/image_sai_hash3d.yaml", "--images", str(images), "--out", str(out), "--backend", backend,
           "--clip-model", "none", f"guidance.pretrained_model_name_or_path={model}", *extra]  # fmt: skip
    if jobs is not None:
        cmd[3:3] = ["--jobs", str(jobs)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{backend}: the batch exited with status {proc.returncode}")
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/result.json"))]
    n = len(results)
    return {
        "backend": backend,
        "jobs": jobs,
        "items": n,
        "wall_s": round(wall, 2),
        "wall_per_item_s": round(wall / n, 2),
        "job_s_mean": round(sum(r["run_s"] + r["views_s"] for r in results) / n, 2),
        "train_s_mean": round(sum(r["train_s"] for r in results) / n, 2),
        "models_reused": sum(1 for r in results if r.get("models_reused")),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--backends", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    parser.add_argument("--jobs", type=int, help="jobs at once (default: local 1, Ray one per GPU)")
    parser.add_argument("--models", default="/tmp/hash3d-bench-models")
    parser.add_argument("--model-size", default="full", choices=["full", "tiny"], help="tiny: a CPU smoke run")
    parser.add_argument("--work", default="/tmp/hash3d-bench-batch", help="items and outputs")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unrecorded one-item local batch that first "
                        "builds the rasterizers' CUDA extensions (else the first backend would pay for it)")  # fmt: skip
    parser.add_argument("extra", nargs="*", help="key=value overrides for every item (e.g. iters=300)")
    args = parser.parse_args()

    model = Path(args.models) / f"zero123-{args.model_size}"
    if not (model / "model_index.json").is_file():
        cuda = torch.cuda.is_available()
        write_model("zero123", args.model_size, model, dtype=torch.float16 if cuda else torch.float32,
                    device="cuda" if cuda else "cpu")  # fmt: skip
    work = Path(args.work)
    images = make_items(work / "images", args.items)
    if not args.no_warmup:
        run_backend("local", make_items(work / "warmup-images", 1), work / "warmup", model, None, args.extra)
    rows = [run_backend(b, images, work / b, model, args.jobs, args.extra) for b in args.backends]
    print("| backend | items | jobs | wall s | wall s / item | job s (mean) | training s (mean) | model from memory |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['items']} | {r['jobs'] or 'default'} | {r['wall_s']:.1f} | {r['wall_per_item_s']:.1f} | "
              f"{r['job_s_mean']:.1f} | {r['train_s_mean']:.1f} | {r['models_reused']} of {r['items']} |")
    by = {r["backend"]: r for r in rows}
    if "local" in by and "ray" in by:
        overhead = (by["ray"]["wall_s"] - by["local"]["wall_s"]) / args.items
        print(f"\nRay overhead per item: {overhead:+.2f} s (wall, Ray - local, / items) on {rows[0]['device']}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
