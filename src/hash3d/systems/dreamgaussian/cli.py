"""Command lines of dreamgaussian-hash3d: `main.py` (stage 1), `main2.py` (stage 2), `process.py`.

    python main.py --config configs/image_sai_hash3d.yaml input=data/name_rgba.png save_path=name
    python main2.py --config configs/image_sai_hash3d.yaml input=data/name_rgba.png save_path=name

`--config` plus OmegaConf `key=value` overrides with DreamGaussian's option names (see `config.py`). Bad input
(unknown option, missing file, unwritable output folder, stage 2 before stage 1) prints one line naming the fix
and exits with status 2; `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from hash3d.config.errors import UserInputError

from .config import DreamGaussianConfig, load_options

__all__ = ["main_stage1", "main_stage2", "main_process", "run_cli"]


def _configure_logging(verbose: bool) -> None:
    log = logging.getLogger("hash3d")
    if not any(getattr(h, "_hash3d_dg", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        handler._hash3d_dg = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def run_cli(
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
    _configure_logging(args.verbose)
    try:
        cfg = load_options(args.config, extras)
        result = stage(cfg, not args.no_progress)
    except UserInputError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"{prog}: error: {exc} (run with --verbose for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (nothing was written)", file=sys.stderr)
        return 130
    print(result.summary)  # type: ignore[attr-defined]
    return 0


def main_stage1(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from .stage1 import run_stage1

    return run_cli(
        argv, prog or os.path.basename(sys.argv[0]) or "main.py",
        "DreamGaussian stage 1: 3D Gaussians and a coarse textured mesh from one image (Zero123 SDS + Hash3D cache).",
        lambda cfg, progress: run_stage1(cfg, progress=progress),
    )  # fmt: skip


def main_stage2(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from .stage2 import run_stage2

    return run_cli(
        argv, prog or os.path.basename(sys.argv[0]) or "main2.py",
        "DreamGaussian stage 2: refine the stage-1 mesh's texture (Zero123 SDS + Hash3D cache).",
        lambda cfg, progress: run_stage2(cfg, progress=progress),
    )  # fmt: skip


def main_process(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from hash3d.data.process_image import main

    return main(argv, prog or os.path.basename(sys.argv[0]) or "process.py")
