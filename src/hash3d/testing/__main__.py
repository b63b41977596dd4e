"""Command line: ``python -m hash3d.testing write-model FAMILY SIZE PATH [options]``."""

from __future__ import annotations

import argparse
import sys
import time

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="python -m hash3d.testing",
        description="Test helpers for hash3d: write diffusion models with random weights in the real diffusers layout.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    write = commands.add_parser(
        "write-model",
        help="write a random-weight Stable Diffusion, Zero123, MVDream or ImageDream model folder",
        description=(
            "Write a model with random (seeded) weights in the diffusers layout, loadable with "
            "hash3d.diffusion.loading.load_stable_diffusion / load_zero123 / load_multiview or from_pretrained. "
            "'full' has the real architectures (SD 2.1-base: ~1.3B parameters, ~5 GB in fp32; "
            "Stable-Zero123: ~1.2B; MVDream: ~1.3B; ImageDream: ~2.0B); 'tiny' is a few MB and runs fast on a CPU."
        ),
    )
    write.add_argument(
        "family", choices=["sd", "zero123", "mvdream", "imagedream"],
        help="sd (stable-diffusion-2-1-base layout), zero123, mvdream (ashawkey/mvdream-sd2.1-diffusers) or "
        "imagedream (ashawkey/imagedream-ipmv-diffusers)",
    )
    write.add_argument("size", choices=["tiny", "full"], help="tiny (for tests) or full (real sizes, for timing)")
    write.add_argument("path", help="folder to write (created if missing; existing files are overwritten)")
    write.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weight dtype on disk (default fp32)")
    write.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default="epsilon",
                       help="scheduler prediction_type (default epsilon)")
    write.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    write.add_argument("--device", default="cpu",
                       help="device to build the weights on: cpu or cuda[:N] (default cpu; use cuda for full size)")
    return parser, write


def main(argv: list[str] | None = None) -> int:
    parser, write_parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2

    import torch

    from hash3d.testing.models import write_model

    try:
        device = torch.device(args.device)
    except RuntimeError:
        write_parser.error(f"--device: not a torch device: {args.device!r} (use cpu or cuda)")
    if device.type not in ("cpu", "cuda"):
        write_parser.error(f"--device: use cpu or cuda, not {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        write_parser.error("--device cuda: torch sees no CUDA device here; use --device cpu")
    start = time.perf_counter()
    path = write_model(
        args.family,
        args.size,
        args.path,
        seed=args.seed,
        dtype=getattr(torch, DTYPES[args.dtype]),
        prediction_type=args.prediction_type,
        device=device,
    )
    print(
        f"wrote {args.size} {args.family} model ({args.dtype}, prediction_type={args.prediction_type}, "
        f"seed={args.seed}) to {path.resolve()} in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
