"""Benchmark of the VAE encoder's forward and backward (image -> latent moments, gradient back to the image), the
part of an SDS step that costs the most in GaussianDreamer and the Zero123 pipelines, by way of running it.

    python bench/vae_encoder.py [--family sd] [--shapes 4x512 12x256] [--variants eager graphed ...] [--iters 20]
                                [--device cuda] [--size full] [--models DIR] [--out results.json]

The encoder is the one of a random-weight model written by `hash3d.testing.write_model` and loaded through
`hash3d.diffusion.loading` (the guidance's loader, diffusers' `from_pretrained`), frozen as in SDS (only the image gets a gradient). A step is
`vae.encode(x).latent_dist.parameters` (mean and log-variance, as the guidance encodes) and its backward for a fixed
upstream gradient. Variants:

    eager               fp16, NCHW, cudnn.benchmark off: the reference of every check
    graphed             forward and backward replayed as CUDA graphs (`torch.cuda.make_graphed_callables`): what the
                        guidance runs with CUDA graphs on
    benchmark           eager with cuDNN autotuning (`torch.backends.cudnn.benchmark`, the trainer's `benchmark` knob)
    graphed+benchmark   both
    channels_last       eager with the weights and the image in channels-last memory layout
    bf16                eager in bfloat16
    compiled            `torch.compile` (default mode: fused normalisation and activation), eager launch
    compiled+graphed    the compiled encoder replayed as CUDA graphs

Each variant's moments and image gradient are compared with the eager result: the largest difference relative to
the largest eager value (fp16 rounding is about 1e-3; bf16 about 8e-3). Per shape and variant the table shows ms per
forward + backward, the speed-up over eager, the arithmetic rate (FLOPs counted once per shape by
`torch.utils.flop_counter`), and the two differences. CUDA variants are skipped without a GPU, compiled ones without
a working `torch.compile`; on the CPU (`--device cpu --size tiny`) the script checks itself, times say little.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hash3d.testing.models import write_model  # noqa: E402

VARIANTS = ("eager", "graphed", "benchmark", "graphed+benchmark", "channels_last", "bf16", "compiled", "compiled+graphed")
CUDA_ONLY = {"graphed", "graphed+benchmark", "compiled+graphed"}
TOLERANCE = {"bf16": 3e-2}
"""Largest relative difference from eager a variant may show (default `DEFAULT_TOLERANCE`)."""
DEFAULT_TOLERANCE = 1e-2


@dataclass
class Row:
    shape: str
    variant: str
    ms: float | None
    speedup: float | None
    tflops: float | None
    moments_diff: float | None
    grad_diff: float | None
    note: str = ""


def parse_shape(text: str) -> tuple[int, int]:
    """'4x512' -> (batch 4, side 512)."""
    try:
        batch, side = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shapes takes BATCHxSIDE items such as 4x512, got {text!r}") from None
    if batch < 1 or side < 8 or side % 8:
        raise SystemExit(f"--shapes: batch must be >= 1 and the side a multiple of 8, got {text!r}")
    return batch, side


def relative_diff(a: torch.Tensor, reference: torch.Tensor) -> float:
    """max |a - reference| / max |reference| (in float32)."""
    a, reference = a.float(), reference.float()
    return float((a - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


@contextlib.contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def moments_fn(vae) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: vae.encode(x).latent_dist.parameters


def build_step(variant: str, vae, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder call of `variant` on images like `x` (the model is changed in place for layout and dtype)."""
    if variant == "channels_last":
        vae.to(memory_format=torch.channels_last)
        return lambda image: vae.encode(image.contiguous(memory_format=torch.channels_last)).latent_dist.parameters
    fn = moments_fn(vae)
    if variant.startswith("compiled"):
        fn = torch.compile(fn)
    if "graphed" in variant:
        sample = x.detach().clone().requires_grad_(True)
        out = fn(sample)  # compile and warm up outside the capture
        out.backward(torch.ones_like(out))
        fn = torch.cuda.make_graphed_callables(fn, (sample.detach().requires_grad_(True),))
    return fn


def measure(step: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor, iters: int,
            warmup: int = 3) -> tuple[float, torch.Tensor, torch.Tensor]:
    """-> (ms per forward + backward, moments, image gradient) of `step` on the image x."""
    image = x.detach().clone().requires_grad_(True)

    def once() -> torch.Tensor:
        image.grad = None
        out = step(image)
        out.backward(grad.to(out.dtype))
        return out

    for _ in range(warmup):
        once()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        out = once()
    sync()
    ms = (time.perf_counter() - start) / iters * 1000
    return ms, out.detach(), image.grad.detach()


def count_flops(vae, x: torch.Tensor, grad: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    image = x.detach().clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        moments_fn(vae)(image).backward(grad)
    return counter.get_total_flops()


def load_vae(family: str, folder: Path, dtype: torch.dtype, device: str):
    """The frozen VAE of a model folder, through the loader the guidance uses."""
    from hash3d.diffusion.loading import load_stable_diffusion, load_zero123

    load = load_zero123 if family == "zero123" else load_stable_diffusion
    return load(folder, dtype, device, local_files_only=True).vae


def run(vae, shapes: list[tuple[int, int]], variants: list[str], iters: int) -> list[Row]:
    """Every variant on every shape; `vae` (eager, fp16 on CUDA, fp32 on the CPU) is copied for each variant."""
    device, dtype = vae.device, vae.dtype
    cuda = device.type == "cuda"
    rows: list[Row] = []
    for batch, side in shapes:
        label = f"{batch}x{side}"
        generator = torch.Generator(device="cpu").manual_seed(0)
        x = (torch.rand(batch, 3, side, side, generator=generator) * 2 - 1).to(device, dtype)
        with cudnn_benchmark(False):
            grad = torch.randn(moments_fn(vae)(x).shape, generator=generator).to(device, dtype)
            ref_ms, ref_moments, ref_grad = measure(moments_fn(vae), x, grad, iters)
        flops = count_flops(vae, x, grad)
        for variant in variants:
            if variant in CUDA_ONLY and not cuda:
                rows.append(Row(label, variant, None, None, None, None, None, "needs CUDA"))
                continue
            if variant == "eager":
                ms, moments, image_grad = ref_ms, ref_moments, ref_grad
            else:
                copy = deepcopy(vae).to(torch.bfloat16 if variant == "bf16" else dtype)
                xv = x.to(torch.bfloat16) if variant == "bf16" else x
                try:
                    with cudnn_benchmark("benchmark" in variant):
                        step = build_step(variant, copy, xv)
                        ms, moments, image_grad = measure(step, xv, grad, iters)
                except Exception as error:  # noqa: BLE001 - a variant the machine cannot run is a row, not the end
                    if not variant.startswith("compiled"):
                        raise
                    rows.append(Row(label, variant, None, None, None, None, None, f"torch.compile failed: {type(error).__name__}"))
                    continue
                finally:
                    del copy
            moments_diff, grad_diff = relative_diff(moments, ref_moments), relative_diff(image_grad, ref_grad)
            limit = TOLERANCE.get(variant, DEFAULT_TOLERANCE)
            note = "" if max(moments_diff, grad_diff) <= limit else f"differs from eager by more than {limit:g}"
            rows.append(Row(label, variant, ms, ref_ms / ms, flops / ms / 1e9, moments_diff, grad_diff, note))
    return rows


def format_table(rows: list[Row], title: str) -> str:
    def cell(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    lines = [f"### {title}", "", "| shape | variant | ms fwd+bwd | vs eager | TFLOP/s | moments diff | grad diff | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.shape} | {r.variant} | {cell(r.ms, '.2f')} | "
                     f"{'–' if r.speedup is None else format(r.speedup, '.2f') + '×'} | {cell(r.tflops, '.1f')} | "
                     f"{cell(r.moments_diff, '.1e')} | {cell(r.grad_diff, '.1e')} | {r.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="sd", choices=["sd", "zero123"])
    parser.add_argument("--size", default="full", choices=["full", "tiny"])
    parser.add_argument("--shapes", nargs="+", default=["4x512", "12x256"], help="BATCHxSIDE images (default: "
                        "GaussianDreamer's four 512² views, Stable-Zero123's twelve 256² views)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="/tmp/hash3d-bench-models", help="where the written models go")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (use --device cpu --size tiny to check the script)")
    if args.iters < 1:
        raise SystemExit(f"--iters must be at least 1, got {args.iters}")
    shapes = [parse_shape(s) for s in args.shapes]
    variants = ["eager", *[v for v in args.variants if v != "eager"]]
    folder = Path(args.models) / f"{args.family}-{args.size}"
    if not (folder / "model_index.json").exists():
        cuda = args.device.startswith("cuda")
        write_model(args.family, args.size, folder, dtype=torch.float16 if cuda else torch.float32, device=args.device)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    rows = run(load_vae(args.family, folder, dtype, args.device), shapes, variants, args.iters)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    title = f"VAE encoder forward + backward, {args.family} ({args.size}), {device}"
    print(format_table(rows, title))
    if args.out:
        args.out.write_text(json.dumps({"title": title, "device": device, "command": sys.argv,
                                        "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    bad = [r for r in rows if r.note.startswith("differs")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
