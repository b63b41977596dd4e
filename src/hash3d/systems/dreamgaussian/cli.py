"""Command lines of dreamgaussian-hash3d: `main.py` (stage 1), `main2.py` (stage 2), `process.py`.

    python main.py --config configs/image_sai_hash3d.yaml input=data/name_rgba.png save_path=name
    python main2.py --config configs/image_sai_hash3d.yaml input=data/name_rgba.png save_path=name

`--config` plus OmegaConf `key=value` overrides with DreamGaussian's option names (see `config.py`). Bad input
(unknown option, missing file, unwritable output folder, stage 2 before stage 1) prints one line naming the fix
and exits with status 2; `--verbose` adds the traceback; anything else is a bug and shows its traceback
(`hash3d.cli.run_cli`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from hash3d.cli import run_cli, setup_logging

from .config import DreamGaussianConfig, load_options

__all__ = ["main_stage1", "main_stage2", "main_process", "run_stage_cli"]


def run_stage_cli(
    argv: Sequence[str] | None, prog: str, description: str, stage: Callable[[DreamGaussianConfig, bool], object]
) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Any option of the config can be overridden as key=value (e.g. iters=300 elevation=-30 save_video=true).",
    )
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/image_sai_hash3d.yaml")
    parser.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the final report still prints)")
    args, extras = parser.parse_known_args(argv)
    flags = [e for e in extras if "=" not in e or e.startswith("-")]
    if flags:
        parser.error(f"unrecognized arguments: {' '.join(flags)} (config options are given as key=value)")
    setup_logging(args.verbose)

    def body() -> None:
        result = stage(load_options(args.config, extras), not args.no_progress)
        print(result.summary)  # type: ignore[attr-defined]

    return run_cli(body, prog, verbose=args.verbose, interrupted="interrupted (nothing was written)")


def main_stage1(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from .stage1 import run_stage1

    return run_stage_cli(
        argv, prog or os.path.basename(sys.argv[0]) or "main.py",
        "DreamGaussian stage 1: 3D Gaussians and a coarse textured mesh from one image (Zero123 SDS + Hash3D cache).",
        lambda cfg, progress: run_stage1(cfg, progress=progress),
    )  # fmt: skip


def main_stage2(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from .stage2 import run_stage2

    return run_stage_cli(
        argv, prog or os.path.basename(sys.argv[0]) or "main2.py",
        "DreamGaussian stage 2: refine the stage-1 mesh's texture (Zero123 SDS + Hash3D cache).",
        lambda cfg, progress: run_stage2(cfg, progress=progress),
    )  # fmt: skip


def main_process(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from hash3d.data.process_image import main

    return main(argv, prog or os.path.basename(sys.argv[0]) or "process.py")
