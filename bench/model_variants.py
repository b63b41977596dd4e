"""Benchmark of the two diffusion parts an SDS step runs, by way of running them under layout, precision, autotuning,
compile and CUDA-graph variants: the VAE encoder's forward and backward (image -> latent moments, gradient back to
the image; the part of the step that costs the most in GaussianDreamer and the Zero123 pipelines) and the UNet's
forward (no gradient: SDS skips the UNet's Jacobian).

    python bench/model_variants.py [--part vae|unet] [--family sd|zero123] [--shapes 4x512 12x256]
                                   [--variants eager graphed ...] [--iters 20] [--device cuda] [--size full]
                                   [--models DIR] [--out results.json]

The models are random-weight ones written by `hash3d.testing.write_model` and loaded through
`hash3d.diffusion.loading` (the guidance's loader, diffusers' `from_pretrained`), frozen as in SDS. A step of
`--part vae` is `vae.encode(x).latent_dist.parameters` (mean and log-variance, as the guidance encodes) and its
backward for a fixed upstream gradient, on BATCHxSIDE images; a step of `--part unet` is one noise prediction
`unet(sample, t, encoder_hidden_states).sample` on a UNet batch of BATCH latents of SIDE² (the classifier-free batch:
twice the views), with the family's conditioning shape. Variants:

    eager               fp16, NCHW, cudnn.benchmark off: the reference of every check
    graphed             replayed as CUDA graphs the way the guidance does it: the VAE's forward and backward through
                        `torch.cuda.make_graphed_callables`, the UNet through `hash3d.cuda_graphs.GraphedFunction`
    benchmark           eager with cuDNN autotuning (`torch.backends.cudnn.benchmark`, the trainer's `benchmark` knob)
    graphed+benchmark   both
    channels_last       eager with the weights and the input in channels-last memory layout
    bf16                eager in bfloat16
    compiled            `torch.compile` (default mode: fused normalisation and activation), eager launch
    compiled+graphed    the compiled call replayed as CUDA graphs

Each variant's output (and, for the VAE, image gradient) is compared with the eager result: the largest difference
relative to the largest eager value (fp16 rounding is about 1e-3; bf16 about 8e-3). Per shape and variant the table
shows ms per step, the speed-up over eager, the arithmetic rate (FLOPs counted once per shape by
`torch.utils.flop_counter`), and the differences. CUDA variants are skipped without a GPU, compiled ones without a
working `torch.compile`; on the CPU (`--device cpu --size tiny`) the script checks itself, times say little.
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

from hash3d.cuda_graphs import GraphedFunction  # noqa: E402
from hash3d.testing.models import write_model  # noqa: E402

VARIANTS = ("eager", "graphed", "benchmark", "graphed+benchmark", "channels_last", "bf16", "compiled", "compiled+graphed")
CUDA_ONLY = {"graphed", "graphed+benchmark", "compiled+graphed"}
TOLERANCE = {"bf16": 3e-2}
"""Largest relative difference from eager a variant may show (default `DEFAULT_TOLERANCE`)."""
DEFAULT_TOLERANCE = 1e-2
DEFAULT_SHAPES = {
    ("vae", "sd"): ["4x512", "1x512"],  # GaussianDreamer's four 512² views; DreamFusion-SD's one
    ("vae", "zero123"): ["12x256", "1x256"],  # Stable-Zero123's twelve 256² views; DreamGaussian's one
    ("unet", "sd"): ["8x64", "2x64"],  # GaussianDreamer (4 views); DreamFusion-SD (1 view); CFG doubles the batch
    ("unet", "zero123"): ["24x32", "2x32"],  # Stable-Zero123 (12 views); DreamGaussian (1 view)
}
CONTEXT_TOKENS = {"sd": 77, "zero123": 1}
"""Encoder states per sample: the text encoder's 77 tokens; Zero123's one CLIP image embedding (+ camera)."""


@dataclass
class Row:
    shape: str
    variant: str
    ms: float | None
    speedup: float | None
    tflops: float | None
    out_diff: float | None
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


def noise_fn(unet) -> Callable[..., torch.Tensor]:
    return lambda sample, t, context: unet(sample, t, encoder_hidden_states=context, return_dict=False)[0]


def part_fn(part: str, model) -> Callable[..., torch.Tensor]:
    return moments_fn(model) if part == "vae" else noise_fn(model)


def make_inputs(part: str, family: str, model, batch: int, side: int, dtype: torch.dtype,
                generator: torch.Generator) -> tuple:
    """The step's inputs on the model's device: (image,) for the VAE, (sample, timesteps, encoder states) for the UNet."""
    device = model.device
    if part == "vae":
        return ((torch.rand(batch, 3, side, side, generator=generator) * 2 - 1).to(device, dtype),)
    config = model.config
    sample = torch.randn(batch, config.in_channels, side, side, generator=generator).to(device, dtype)
    t = torch.randint(20, 980, (batch,), generator=generator).to(device)
    context = torch.randn(batch, CONTEXT_TOKENS[family], config.cross_attention_dim, generator=generator).to(device, dtype)
    return sample, t, context


def cast_inputs(inputs: tuple, dtype: torch.dtype) -> tuple:
    return tuple(a.to(dtype) if a.is_floating_point() else a for a in inputs)


def build_step(variant: str, part: str, model, inputs: tuple) -> Callable[..., torch.Tensor]:
    """The call of `variant` on inputs like `inputs` (the model is changed in place for layout and dtype)."""
    if variant == "channels_last":
        model.to(memory_format=torch.channels_last)
        fn = part_fn(part, model)
        return lambda first, *rest: fn(first.contiguous(memory_format=torch.channels_last), *rest)
    fn = part_fn(part, model)
    if variant.startswith("compiled"):
        fn = torch.compile(fn)
    if "graphed" in variant:
        if part == "unet":
            return GraphedFunction(fn)  # warms up (compiles) on a side stream before its capture
        sample = inputs[0].detach().clone().requires_grad_(True)
        out = fn(sample)  # compile and warm up outside the capture
        out.backward(torch.ones_like(out))
        fn = torch.cuda.make_graphed_callables(fn, (sample.detach().requires_grad_(True),))
    return fn


def measure(step: Callable[..., torch.Tensor], inputs: tuple, grad: torch.Tensor | None, iters: int,
            warmup: int = 3) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """-> (ms per step, output, gradient of the first input) of `step`: forward + backward for the upstream gradient
    `grad`, or a forward without gradients where `grad` is None."""
    first = inputs[0].detach().clone().requires_grad_(grad is not None)
    rest = inputs[1:]

    def once() -> torch.Tensor:
        if grad is None:
            with torch.no_grad():
                return step(first, *rest)
        first.grad = None
        out = step(first, *rest)
        out.backward(grad.to(out.dtype))
        return out

    for _ in range(warmup):
        once()
    sync = torch.cuda.synchronize if first.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        out = once()
    sync()
    ms = (time.perf_counter() - start) / iters * 1000
    return ms, out.detach(), None if grad is None else first.grad.detach()


def count_flops(part: str, model, inputs: tuple, grad: torch.Tensor | None) -> int:
    """FLOPs of one step (forward, plus the input gradient's backward where `grad` is given)."""
    from torch.utils.flop_counter import FlopCounterMode

    first = inputs[0].detach().clone().requires_grad_(grad is not None)
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(grad is not None):
        out = part_fn(part, model)(first, *inputs[1:])
        if grad is not None:
            out.backward(grad)
    return counter.get_total_flops()


def load_part(part: str, family: str, folder: Path, dtype: torch.dtype, device: str):
    """The frozen VAE or UNet of a model folder, through the loader the guidance uses."""
    from hash3d.diffusion.loading import load_stable_diffusion, load_zero123

    load = load_zero123 if family == "zero123" else load_stable_diffusion
    return getattr(load(folder, dtype, device, local_files_only=True), part)


def run(part: str, family: str, model, shapes: list[tuple[int, int]], variants: list[str], iters: int,
        on_row=None) -> list[Row]:
    """Every variant on every shape; `model` (eager, fp16 on CUDA, fp32 on the CPU) is copied for each variant.
    `on_row(row)` sees each row as it is measured (a run cut short by a time limit still shows what it did)."""
    device, dtype = model.device, model.dtype
    cuda = device.type == "cuda"
    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for batch, side in shapes:
        label = f"{batch}x{side}"
        generator = torch.Generator(device="cpu").manual_seed(0)
        inputs = make_inputs(part, family, model, batch, side, dtype, generator)
        with cudnn_benchmark(False):
            grad = None
            if part == "vae":
                grad = torch.randn(moments_fn(model)(*inputs).shape, generator=generator).to(device, dtype)
            ref_ms, ref_out, ref_grad = measure(part_fn(part, model), inputs, grad, iters)
        flops = count_flops(part, model, inputs, grad)
        for variant in variants:
            if variant in CUDA_ONLY and not cuda:
                add(Row(label, variant, None, None, None, None, None, "needs CUDA"))
                continue
            if variant == "eager":
                ms, out, input_grad = ref_ms, ref_out, ref_grad
            else:
                copy = deepcopy(model).to(torch.bfloat16 if variant == "bf16" else dtype)
                xv = cast_inputs(inputs, torch.bfloat16) if variant == "bf16" else inputs
                try:
                    with cudnn_benchmark("benchmark" in variant):
                        step = build_step(variant, part, copy, xv)
                        ms, out, input_grad = measure(step, xv, grad, iters)
                except Exception as error:  # noqa: BLE001 - a variant the machine cannot run is a row, not the end
                    if not variant.startswith("compiled"):
                        raise
                    add(Row(label, variant, None, None, None, None, None, f"torch.compile failed: {type(error).__name__}"))
                    continue
                finally:
                    del copy
            out_diff = relative_diff(out, ref_out)
            grad_diff = None if ref_grad is None else relative_diff(input_grad, ref_grad)
            limit = TOLERANCE.get(variant, DEFAULT_TOLERANCE)
            note = "" if max(out_diff, grad_diff or 0.0) <= limit else f"differs from eager by more than {limit:g}"
            add(Row(label, variant, ms, ref_ms / ms, flops / ms / 1e9, out_diff, grad_diff, note))
    return rows


def format_table(rows: list[Row], title: str) -> str:
    def cell(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    lines = [f"### {title}", "", "| shape | variant | ms | vs eager | TFLOP/s | output diff | grad diff | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.shape} | {r.variant} | {cell(r.ms, '.2f')} | "
                     f"{'–' if r.speedup is None else format(r.speedup, '.2f') + '×'} | {cell(r.tflops, '.1f')} | "
                     f"{cell(r.out_diff, '.1e')} | {cell(r.grad_diff, '.1e')} | {r.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="vae", choices=["vae", "unet"],
                        help="vae: the encoder's forward + backward; unet: one noise prediction (forward only)")
    parser.add_argument("--family", default="sd", choices=["sd", "zero123"])
    parser.add_argument("--size", default="full", choices=["full", "tiny"])
    parser.add_argument("--shapes", nargs="+", help="BATCHxSIDE: images for the VAE, the UNet batch (twice the views) "
                        "and latent side for the UNet (default: the part and family's SDS shapes)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="/tmp/hash3d-bench-models", help="where the written models go")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # each bf16 copy would warn that `.to()` casts every module
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (use --device cpu --size tiny to check the script)")
    if args.iters < 1:
        raise SystemExit(f"--iters must be at least 1, got {args.iters}")
    shapes = [parse_shape(s) for s in (args.shapes or DEFAULT_SHAPES[(args.part, args.family)])]
    variants = ["eager", *[v for v in args.variants if v != "eager"]]
    folder = Path(args.models) / f"{args.family}-{args.size}"
    cuda = args.device.startswith("cuda")
    if not (folder / "model_index.json").exists():
        write_model(args.family, args.size, folder, dtype=torch.float16 if cuda else torch.float32, device=args.device)
    dtype = torch.float16 if cuda else torch.float32
    rows = run(args.part, args.family, load_part(args.part, args.family, folder, dtype, args.device), shapes, variants,
               args.iters, on_row=lambda row: print(row, flush=True))
    device = torch.cuda.get_device_name() if cuda else "cpu"
    what = "VAE encoder forward + backward" if args.part == "vae" else "UNet forward"
    title = f"{what}, {args.family} ({args.size}), {device}"
    print(format_table(rows, title))
    if args.out:
        args.out.write_text(json.dumps({"title": title, "device": device, "part": args.part, "family": args.family,
                                        "command": sys.argv, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    bad = [r for r in rows if r.note.startswith("differs")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
