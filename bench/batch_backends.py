"""`python -m hash3d.batch` on its two backends: the same DreamGaussian batch, local and Ray, on one machine.

    python bench/batch_backends.py [--items 8] [--backends local ray] [--jobs N] [--size full|tiny] [--device cuda|cpu]
                                   [--address local] [--out results.json] [key=value ...]

The batch: `--items` image-to-3D items through dreamgaussian-hash3d's `image_sai_hash3d.yaml` with a random-weight
Stable-Zero123 written once (`--models`); the items are the checkout's RGBA images, repeated under new names, so
every item does the same work. No CLIP score. Each backend runs the batch from scratch in a fresh
`python -m hash3d.batch` process into its own output folder (Ray: a new local instance started by the batch with
`--address local`, one worker per GPU, or one CPU worker without GPUs; local: `--jobs 1` runs the items one after
another in the batch's own process, `--jobs N` one worker process per GPU). An unrecorded one-item local batch runs
first (--no-warmup: not), so that building the rasterizers' CUDA extensions on first use (and a cold file cache) is
not counted against the first backend.

Sizes:
- `full` (the default with CUDA): the full-size Stable-Zero123 in fp16, the config's sizes, stage 1 and the 16
  evaluation views; the measurement that counts, on a GPU.
- `tiny` (the default without CUDA): the tiny Stable-Zero123 in fp32 and each item shrunk to a few CPU seconds
  (TINY_OVERRIDES, TINY_VIEWS; key=value arguments still override them, e.g. iters=20). What is measured is then
  mostly the fixed cost per item and per batch (process and worker start, imports, model loads, scheduling), so
  the overhead per item is Ray's own cost, not a speed of the method.
`--device cpu` hides the GPUs from both backends (CUDA_VISIBLE_DEVICES=''); keep OMP_NUM_THREADS=1 there, so the
local batch uses one thread as a Ray worker with one CPU does.

Per backend: the batch's wall time (process start to exit: imports, cluster start, model loads, runs, views, summary),
wall time per item, the mean job time inside the worker (training with its model load, and the views), the mean
training-loop time, and how many jobs took their model from memory (Ray workers keep it loaded between items).
The overhead of Ray per item is (wall Ray - wall local) / items.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

IMAGES = [REPO / "threestudio-hash3d" / "load" / "images" / n for n in ("dog1_rgba.png", "mug_rgba.png", "snowman_rgba.png")]
IMAGES.append(REPO / "assets" / "mini_heldout_rgba.png")
CONFIG = "configs/image_sai_hash3d.yaml"

TINY_OVERRIDES = ("iters=10", "num_pts=200", "ref_size=32", "render_resolutions=[24,32,32]", "mesh_resolution=24",
                  "texture_size=32", "density_thresh=0.05")  # fmt: skip
"""DreamGaussian options that shrink one item to a few CPU seconds."""
TINY_VIEWS = ("--views", "2", "--view-size", "32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with --device and --size resolved (auto: CUDA when torch sees it, and full size on CUDA)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--backends", nargs="+", default=["local", "ray"], metavar="{local,ray}")
    parser.add_argument("--jobs", type=int, help="jobs at once (default: local 1, Ray one per GPU, 1 without GPUs)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                        help="where the items run (auto: cuda when there is one); cpu hides the GPUs")
    parser.add_argument("--size", default="auto", choices=["auto", "full", "tiny"],
                        help="full: full-size fp16 model and the config's sizes (the GPU measurement); tiny: tiny fp32 "
                        "model and items of a few CPU seconds (auto: full on cuda, tiny on cpu)")  # fmt: skip
    parser.add_argument("--address", default="local", help="Ray: the cluster (default: local, a new instance on this "
                        "machine started by the batch, never another process's cluster)")  # fmt: skip
    parser.add_argument("--models", default="/tmp/hash3d-bench-models")
    parser.add_argument("--work", default="/tmp/hash3d-bench-batch", help="items and outputs")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unrecorded one-item local batch that first "
                        "builds the rasterizers' CUDA extensions (else the first backend would pay for it)")  # fmt: skip
    parser.add_argument("extra", nargs="*", help="key=value overrides for every item (e.g. iters=300)")
    args = parser.parse_args(argv)
    # `--backends local ray iters=10`: argparse hands the overrides after --backends to it
    args.extra = [b for b in args.backends if "=" in b] + args.extra
    args.backends = [b for b in args.backends if "=" not in b]
    unknown = [b for b in args.backends if b not in ("local", "ray")]
    if unknown or not args.backends:
        parser.error(f"--backends {' '.join(args.backends)}: give local, ray or both".replace(" :", ":"))
    if args.items < 1:
        parser.error(f"--items {args.items}: must be at least 1")
    bad = [e for e in args.extra if "=" not in e]
    if bad:
        parser.error(f"{bad[0]!r}: overrides are key=value (e.g. iters=300)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; use --device cpu (with --size tiny)")
    if args.size == "auto":
        args.size = "full" if args.device == "cuda" else "tiny"
    return args


def item_args(args: argparse.Namespace) -> list[str]:
    """The batch options every item gets: the size's own, then the user's key=value (later ones win)."""
    small = [*TINY_VIEWS, *TINY_OVERRIDES] if args.size == "tiny" else []
    return [*small, *args.extra]


def batch_command(backend: str, images: Path, out: Path, model: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "hash3d.batch", "--front-end", "dreamgaussian-hash3d", "--config", CONFIG,
           "--images", str(images), "--out", str(out), "--backend", backend, "--clip-model", "none"]  # fmt: skip
    if backend == "ray":
        cmd += ["--address", args.address]
    if args.jobs is not None:
        cmd += ["--jobs", str(args.jobs)]
    return [*cmd, f"guidance.pretrained_model_name_or_path={model}", *item_args(args)]


def batch_env(args: argparse.Namespace) -> dict[str, str]:
    # the checkout's src first, then whatever the caller's PYTHONPATH holds (packages unpacked outside site-packages)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # both backends, and the Ray instance, see no GPU
    return env


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")]
    model = names[0] if names else platform.machine()
    return f"CPU, {os.cpu_count()} cores ({model}), no GPU used"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def make_items(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        source = IMAGES[i % len(IMAGES)]
        shutil.copy(source, folder / f"{i:02d}_{source.name}")
    return folder


def run_backend(backend: str, images: Path, out: Path, model: Path, args: argparse.Namespace) -> dict:
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    proc = subprocess.run(batch_command(backend, images, out, model, args), env=batch_env(args), cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{backend}: the batch exited with status {proc.returncode}")
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/result.json"))]
    n = len(results)
    return {
        "backend": backend,
        "jobs": args.jobs,
        "items": n,
        "wall_s": round(wall, 2),
        "wall_per_item_s": round(wall / n, 2),
        "job_s_mean": round(sum(r["run_s"] + r["views_s"] for r in results) / n, 2),
        "train_s_mean": round(sum(r["train_s"] for r in results) / n, 2),
        "models_reused": sum(1 for r in results if r.get("models_reused")),
    }


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return f"{head}{' (uncommitted changes)' if git('status', '--porcelain', '--untracked-files=no') else ''}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()

    def say(message: str) -> None:  # progress on stderr, stamped with the seconds since start
        print(f"[{time.perf_counter() - t0:.0f} s] {message}", file=sys.stderr, flush=True)

    model = Path(args.models) / f"zero123-{args.size}"
    if not (model / "model_index.json").is_file():
        from hash3d.testing.models import write_model  # diffusers: seconds of import, not needed to parse options

        dtype = torch.float16 if args.device == "cuda" and args.size == "full" else torch.float32
        write_model("zero123", args.size, model, dtype=dtype, device=args.device)
    work = Path(args.work)
    images = make_items(work / "images", args.items)
    say(f"model and {args.items} items ready")
    if not args.no_warmup:
        warm = argparse.Namespace(**{**vars(args), "jobs": None})
        run_backend("local", make_items(work / "warmup-images", 1), work / "warmup", model, warm)
        say("warm-up item done")
    device = device_name(args.device)
    rows = []
    for backend in args.backends:
        say(f"{backend} backend: starting")
        rows.append(run_backend(backend, images, work / backend, model, args))
        # each backend's line as soon as it is known, and the JSON so far: a run cut short keeps what finished
        say(row_line(rows[-1]))
        write_record(args, argv, device, rows)
    print("| backend | items | jobs | wall s | wall s / item | job s (mean) | training s (mean) | model from memory |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(row_line(r))
    overhead = ray_overhead(rows, args.items)
    if overhead is not None:
        print(f"\nRay overhead per item: {overhead:+.2f} s (wall, Ray - local, / items) on {device}")


def row_line(r: dict) -> str:
    return (f"| {r['backend']} | {r['items']} | {r['jobs'] or 'default'} | {r['wall_s']:.1f} | {r['wall_per_item_s']:.1f} | "
            f"{r['job_s_mean']:.1f} | {r['train_s_mean']:.1f} | {r['models_reused']} of {r['items']} |")


def ray_overhead(rows: list[dict], items: int) -> float | None:
    """(wall Ray - wall local) / items, once both backends ran."""
    by = {r["backend"]: r for r in rows}
    if "local" in by and "ray" in by:
        return round((by["ray"]["wall_s"] - by["local"]["wall_s"]) / items, 2)
    return None


def write_record(args: argparse.Namespace, argv: list[str] | None, device: str, rows: list[dict]) -> None:
    overhead = ray_overhead(rows, args.items)
    if args.out:
        record = {
            "command": " ".join(["python", "bench/batch_backends.py", *(sys.argv[1:] if argv is None else argv)]),
            "commit": commit(),
            "device": device,
            "size": args.size,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__,
            "item_args": item_args(args),
            "rows": rows,
            "ray_overhead_per_item_s": overhead,
        }
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
