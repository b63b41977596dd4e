"""What a UNet batch size costs the first time a process meets it.

    python bench/new_shapes.py [--family zero123] [--side 32] [--sizes 24 16 8 4 2] [--rounds 2] [--out rows.json]

The cache runs a split request's misses as one UNet pass padded to a power of two (`cache_graph.bucket_for`), each
size through its own CUDA graph (`GraphedFunction(warmup=1, capture_after=2)`, as `unet_cache` builds it). In the
100-step rows the first shipped run of a process spends more in its UNet section than the second, with the same
requests and captures: some cost is paid once per process and batch size (kernel choice for a new shape is the
suspect). This script measures it on its own. The largest size is run first a few times (a process that has trained
cache off), then, round after round, each size with a fresh GraphedFunction: its first call (eager), its second call
(an eager warm-up, the capture and a replay) and its steady call (best of 5 replays). *one-off* = first + second −
2 × steady: what the size costs above two steady calls. Round 1 is the process's first meeting with each size; later
rounds show what every run pays again (fresh graphs, as after the cache's per-run reset), so round 1 minus round 2 is
the per-process part. On the CPU there are no graphs: every call is eager (to check the script).

The model is the family's full-size (or tiny) random-weight UNet written by `hash3d.testing.write_model`, fp16 on
CUDA, under no_grad as the guidance runs it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from hash3d.cuda_graphs import GraphedFunction  # noqa: E402
from hash3d.testing.models import write_model  # noqa: E402
from model_variants import load_part, make_inputs, noise_fn  # noqa: E402


@dataclass
class Row:
    round: int
    size: int
    first_ms: float
    second_ms: float
    steady_ms: float

    @property
    def one_off_ms(self) -> float:
        return self.first_ms + self.second_ms - 2 * self.steady_ms


def _timed(fn, args: tuple) -> float:
    cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args)
    if cuda:
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


def measure(fn, inputs_for, sizes: list[int], rounds: int, warm: int = 3) -> list[Row]:
    """Rows for each round and size. `fn(*inputs)` is one UNet call, `inputs_for(size)` its inputs at a batch size;
    the largest size is called `warm` times first. On CUDA each size goes through a fresh GraphedFunction."""
    largest = inputs_for(max(sizes))
    for _ in range(warm):
        _timed(fn, largest)
    rows = []
    for r in range(1, rounds + 1):
        for size in sizes:
            inputs = inputs_for(size)
            call = GraphedFunction(fn, warmup=1, capture_after=2) if inputs[0].is_cuda else fn
            first, second = _timed(call, inputs), _timed(call, inputs)
            steady = min(_timed(call, inputs) for _ in range(5))
            rows.append(Row(r, size, first, second, steady))
            print(f"round {r}, batch {size}: first {first:.1f} ms, second {second:.1f} ms, steady {steady:.1f} ms",
                  flush=True)
    return rows


def format_table(rows: list[Row], title: str) -> str:
    lines = [f"### {title}", "", "| round | UNet batch | first call ms | second call ms | steady ms | one-off ms |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.round} | {r.size} | {r.first_ms:.1f} | {r.second_ms:.1f} | {r.steady_ms:.1f} | "
                     f"{r.one_off_ms:.1f} |")
    rounds = sorted({r.round for r in rows})
    if len(rounds) > 1:
        first = sum(r.one_off_ms for r in rows if r.round == rounds[0])
        later = statistics.mean(sum(r.one_off_ms for r in rows if r.round == k) for k in rounds[1:])
        lines += ["", f"one-offs over all sizes: {first:.0f} ms in round 1, {later:.0f} ms in a later round "
                      f"(per process: {first - later:.0f} ms)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="zero123", choices=["sd", "zero123"])
    parser.add_argument("--size", default="full", choices=["full", "tiny"], help="the model's size")
    parser.add_argument("--side", type=int, default=32, help="latent side (Stable-Zero123's 256² views: 32)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 16, 8, 4, 2],
                        help="UNet batch sizes (twice the views); the default: Stable-Zero123's 12 views and the "
                             "sizes its split passes are padded to")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="/tmp/hash3d-bench-models", help="where the written models go")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (use --device cpu --size tiny to check the script)")
    if min(args.sizes) < 1 or args.rounds < 1 or args.side < 1:
        raise SystemExit(f"--sizes, --rounds and --side must be at least 1; got {args.sizes}, {args.rounds}, {args.side}")
    cuda = args.device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    folder = Path(args.models) / f"{args.family}-{args.size}"
    if not (folder / "model_index.json").exists():
        write_model(args.family, args.size, folder, dtype=dtype, device=args.device)
    unet = load_part("unet", args.family, folder, dtype, args.device)
    fn = noise_fn(unet)

    def inputs_for(size: int) -> tuple:
        return make_inputs("unet", args.family, unet, size, args.side, dtype, torch.Generator().manual_seed(size))

    with torch.no_grad():
        rows = measure(fn, inputs_for, args.sizes, args.rounds)
    device = torch.cuda.get_device_name() if cuda else "cpu"
    title = f"UNet first calls at new batch sizes, {args.family} ({args.size}), {args.side}² latents, {device}"
    print(format_table(rows, title))
    if args.out:
        args.out.write_text(json.dumps({"title": title, "device": device, "command": sys.argv,
                                        "rows": [dict(asdict(r), one_off_ms=r.one_off_ms) for r in rows]},
                                       indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
