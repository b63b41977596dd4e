#!/usr/bin/env python
"""CLIP similarity between a prompt or reference image and rendered views.

    python eval_clip_sim.py TARGET PRED_DIR [--mode text|image] [--model HUB_ID_OR_DIR] [--views 8]
                            [--batch-size 16] [--out results.json|results.csv] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys

try:
    import hash3d  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from hash3d.eval.config import CLIP_MODEL_ALIASES, DEFAULT_CLIP_MODEL, DTYPES, ClipSimConfig
from hash3d.eval.clip_sim import evaluate_clip
from hash3d.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    aliases = ", ".join(f"{k} = {v}" for k, v in CLIP_MODEL_ALIASES.items())
    parser = argparse.ArgumentParser(
        prog="eval_clip_sim.py",
        description="Mean ± std cosine similarity between the CLIP embedding of TARGET (a prompt, or a "
        "reference image) and those of views sampled evenly from PRED_DIR.",
    )
    parser.add_argument("target", metavar="TARGET", help="the prompt (text mode) or the reference image path (image mode)")
    parser.add_argument("pred_dir", metavar="PRED_DIR", help="folder of rendered views")
    parser.add_argument("--mode", choices=["text", "image"], help="what TARGET is (default: image if TARGET is an existing image file, else text)")
    parser.add_argument("--model", default=DEFAULT_CLIP_MODEL, help=f"CLIP model: hub id or local folder in transformers layout, or a short name ({aliases}); default {DEFAULT_CLIP_MODEL}")
    parser.add_argument("--views", type=int, default=8, help="number of views taken evenly from PRED_DIR (0 = all; default 8)")
    parser.add_argument("--batch-size", type=int, default=16, help="views per CLIP forward pass (default 16)")
    parser.add_argument("--background", default="white", help="colour transparent pixels are composited on (default white)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="model precision (default float32)")
    parser.add_argument("--out", help="also write the results to this .json or .csv file")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        config = ClipSimConfig(
            target=args.target,
            pred_dir=args.pred_dir,
            mode=args.mode,
            model=args.model,
            views=args.views,
            batch_size=args.batch_size,
            background=args.background,
            device=args.device,
            dtype=args.dtype,
            out=args.out,
        )
        table = evaluate_clip(config)
        print(table.to_text())
        if config.out is not None:
            print(f"wrote {table.write(config.out)}")
        return 0

    return run_cli(run, "eval_clip_sim.py")


if __name__ == "__main__":
    sys.exit(main())
