"""`python -m hash3d.batch`: the command line (see --help)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hash3d.cli import run_cli

from .config import BatchConfig, ScoreConfig
from .errors import BatchError
from .frontends import FRONT_ENDS

PROG = "python -m hash3d.batch"
DEFAULT_CLIP = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"  # hash3d.eval.DEFAULT_CLIP_MODEL (not imported: keeps --help fast)

EPILOG = """\
Items: --prompts FILE (one prompt a line; blank lines and '#' comments skipped) or --images DIR (every RGBA image).
Each item runs once per config into OUT/<config stem>/<item id>/; a finished item (result.json) is skipped, an
unfinished one (killed, failed) is deleted and redone, so rerunning the same command resumes the batch.
After each run the evaluation views are rendered (8 views at elevation 0 deg for text, 16 at 30 deg for images,
as the paper); then the views are scored and OUT/summary.md, .json, .csv are written.
Any key=value argument overrides both configs (the front-end's own option names), e.g. trainer.max_steps=500.
Jobs run on this machine (--backend local, the default) or on a Ray cluster (--backend ray [--address auto|
ray://HOST:PORT]: one worker per GPU keeping its model loaded, dead workers replaced and their job retried up to
--retries times; the output folder must be shared by every node; see docs/cluster.md).

Exit status: 0 every run finished and was scored, 1 some run failed or a metric could not be computed (the summary
says which), 2 bad input, 130 interrupted (rerun to resume). The default CLIP model is optional: when it cannot be
had (offline, not in the Hugging Face cache) its score is skipped with a note; a model named with --clip-model is not.
Relative paths inside a config are read from its front-end folder (as the front-end's own command does), relative
paths in key=value overrides from where you run the command; every local path is checked before anything runs.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Run a Hash3D front-end over a list of prompts or images, "
                                "render and score the evaluation views, and write one summary table.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--front-end", required=True, metavar="NAME", help=f"one of {', '.join(FRONT_ENDS)}")
    p.add_argument("--config", required=True, help="config file, relative to here or to the front-end's folder "
                   "(e.g. configs/dreamfusion-sd_hash3d.yaml)")  # fmt: skip
    items = p.add_mutually_exclusive_group(required=True)
    items.add_argument("--prompts", type=Path, metavar="FILE", help="text-to-3D: a file of prompts, one a line")
    items.add_argument("--images", type=Path, metavar="DIR", help="image-to-3D: a folder of RGBA images")
    p.add_argument("--compare-with", metavar="CONFIG", help="also run this config (e.g. the cache-off twin "
                   "configs/dreamfusion-sd.yaml) and report both side by side")  # fmt: skip
    p.add_argument("--out", type=Path, help="output folder (default outputs/batch/<front-end>/<config stem>)")
    p.add_argument("--jobs", type=int, metavar="N", help="N jobs at once, one worker per GPU; local: worker processes "
                   "pinned with CUDA_VISIBLE_DEVICES, 1 (default) runs in this process, the CPU takes 1; Ray: default "
                   "one per GPU of the cluster")  # fmt: skip
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="where the jobs run: this machine "
                   "(default) or a Ray cluster (needs the extra: pip install -e \".[ray]\"; see docs/cluster.md)")  # fmt: skip
    p.add_argument("--address", metavar="ADDR", help="Ray cluster to use: auto (the cluster this node belongs to), "
                   "ray://HOST:PORT, or local (a new instance on this machine, for this batch); default: RAY_ADDRESS, "
                   "else a cluster started on this machine, else a new local instance")  # fmt: skip
    p.add_argument("--retries", type=int, default=2, metavar="N", help="Ray: run a job again up to N times when its "
                   "worker dies or runs out of GPU memory (default 2)")  # fmt: skip
    p.add_argument("--gpus", metavar="LIST", help="GPU indices to use, e.g. 0,1,3 (default: all visible); 'cpu' for none")
    p.add_argument("--isolate", action="store_true", help="run every job in a fresh worker process, also with --jobs 1")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N items")
    p.add_argument("--views", type=int, metavar="N", help="evaluation views per item (default 8 text, 16 image)")
    p.add_argument("--elevation", type=float, metavar="DEG", help="elevation of the evaluation views, positive = "
                   "above (default 0 text, 30 image)")  # fmt: skip
    p.add_argument("--view-size", type=int, metavar="PX", help="side of the evaluation views (default: the config's "
                   "evaluation size; DreamGaussian: ref_size)")  # fmt: skip
    p.add_argument("--clip-model", metavar="MODEL", help="CLIP hub id, local folder, or bigG-14 / L-14 / B-32; 'none' "
                   f"for no CLIP score (default {DEFAULT_CLIP}, skipped with a note when it cannot be had offline)")  # fmt: skip
    p.add_argument("--gt", type=Path, metavar="DIR", help="image-to-3D ground truth: DIR/<item>/000.png … "
                   "(<item> = the image's file stem) for PSNR / SSIM / LPIPS")  # fmt: skip
    p.add_argument("--lpips-net", default="vgg", choices=["vgg", "alex", "squeeze", "none"],
                   help="LPIPS backbone with --gt (default vgg)")
    p.add_argument("--eval-device", default="auto", help="device of the scoring models: auto, cpu, cuda, cuda:N")
    p.add_argument("--fail-fast", action="store_true", help="start no new job after a failure")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything, write OUT/jobs.json and print the job list; run nothing")
    p.add_argument("--verbose", action="store_true", help="full tracebacks")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    return p


def parse_gpus(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    if text.strip().lower() == "cpu":
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BatchError(f"--gpus {text!r}: give GPU indices such as 0,1 (or cpu)") from None


def to_config(args: argparse.Namespace) -> BatchConfig:
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise BatchError(f"unexpected argument(s) {' '.join(bad)}: config overrides are key.sub=value")
    given = args.clip_model
    clip = DEFAULT_CLIP if given is None else None if given.strip().lower() == "none" else given
    return BatchConfig(
        front_end=args.front_end,
        config=args.config,
        prompts=args.prompts,
        images=args.images,
        out=args.out,
        compare_with=args.compare_with,
        overrides=tuple(args.overrides),
        jobs=args.jobs,
        backend=args.backend,
        address=args.address,
        retries=args.retries,
        gpus=parse_gpus(args.gpus),
        isolate=args.isolate,
        limit=args.limit,
        n_views=args.views,
        elevation_deg=args.elevation,
        view_size=args.view_size,
        score=ScoreConfig(clip_model=clip, clip_optional=given is None, gt_dir=args.gt,
                          lpips_net=None if args.lpips_net == "none" else args.lpips_net, device=args.eval_device),  # fmt: skip
        fail_fast=args.fail_fast,
        dry_run=args.dry_run,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides may come before or after the options
    from .runner import dry_run_text, run_batch


    def body() -> int:
        report = run_batch(to_config(args))
        if args.dry_run:
            print(dry_run_text(report))
            where = Path(report.jobs[0].out_dir).parents[1] / "jobs.json"
            print(f"{len(report.jobs)} job(s); the list is in {where}", file=sys.stderr)
            return 0
        print(report.markdown)
        print("wrote " + ", ".join(str(p) for p in report.files), file=sys.stderr)
        return 0 if report.complete else 1

    return run_cli(body, PROG, verbose=args.verbose,
                   interrupted="interrupted: rerun the same command to resume (finished items are kept)")  # fmt: skip
