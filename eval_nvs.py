#!/usr/bin/env python
"""Novel-view metrics: PSNR, SSIM and LPIPS between ground-truth and predicted views paired by file name.

    python eval_nvs.py --gt GT_DIR --pr PRED_DIR [--size 256] [--background white] [--lpips-net vgg|alex|none]
                       [--allow-missing] [--out results.json|results.csv] [--device auto|cpu|cuda] [--name LABEL]
"""

from __future__ import annotations

import argparse
import sys

try:
    import hash3d  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from hash3d.eval.config import NVSConfig
from hash3d.cli import run_cli
from hash3d.eval.nvs import evaluate_nvs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eval_nvs.py",
        description="PSNR, SSIM (11×11 Gaussian window) and LPIPS between views paired by file name "
        "(000.png ↔ 000.png). Prints a per-view table with mean ± std.",
    )
    parser.add_argument("--gt", required=True, help="folder of ground-truth views")
    parser.add_argument("--pr", required=True, help="folder of predicted (rendered) views")
    parser.add_argument("--size", type=int, default=256, help="pairs whose two images differ in size are resized to SIZE×SIZE (default 256)")
    parser.add_argument("--background", default="white", help="colour transparent pixels are composited on: white, black, gray, #rrggbb or r,g,b in [0, 1] (default white)")
    parser.add_argument("--lpips-net", default="vgg", choices=["vgg", "alex", "squeeze", "none"], help="LPIPS backbone, or none to skip LPIPS (default vgg)")
    parser.add_argument("--allow-missing", action="store_true", help="score the views both folders hold instead of failing on missing or extra files")
    parser.add_argument("--out", help="also write the results to this .json or .csv file")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    parser.add_argument("--name", help="a label for this run, shown in the table and saved in the results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        config = NVSConfig(
            gt_dir=args.gt,
            pred_dir=args.pr,
            size=args.size,
            background=args.background,
            lpips_net=None if args.lpips_net == "none" else args.lpips_net,
            allow_missing=args.allow_missing,
            device=args.device,
            out=args.out,
            name=args.name,
        )
        table = evaluate_nvs(config)
        print(table.to_text())
        if config.out is not None:
            print(f"wrote {table.write(config.out)}")
        return 0

    return run_cli(run, "eval_nvs.py")


if __name__ == "__main__":
    sys.exit(main())
