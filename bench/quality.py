"""Quality harness: does the Hash3D cache keep image-to-3D (and text-to-3D) quality? (command line of
`hash3d.image_to_3d` and `hash3d.text_to_3d`)

    python bench/quality.py [--pipeline dreamgaussian|threestudio|magic123-coarse-sd] [--objects 2]
                            [--variants default|off,noise@1,...] [--out outputs/quality] [--no-random] [--refine]
                            [--threads 2] [OPTION=VALUE ...]
    python bench/quality.py --task text [--pipeline dreamgaussian|dreamfusion-sd|gaussiandreamer-sd|...] [--objects 2]
                            [--all-captions] [--variants ...] [--out outputs/quality-text] [OPTION=VALUE ...]

Held-out procedural objects (ids 10**12 + offset + i, never trained on) are reconstructed from one 64 px view
(elevation 15°) by the image-to-3D pipeline with the shipped Hash3D-mini model (dreamgaussian-hash3d
configs/image_mini*.yaml, or threestudio-hash3d configs/stable-zero123-mini*.yaml), once per cache variant, then
rendered at 16 views at elevation 30° and scored against ground truth (PSNR, SSIM; LPIPS with --lpips vgg where
the lpips package and its torchvision work). A random-weight twin of the model, cache off, gives the floor.
--pipeline magic123-coarse-sd (threestudio-hash3d configs/magic123-coarse-sd-mini*.yaml) guides with two models at
once: Hash3D-mini (Zero123, --model) and Hash3D-mini-sd (Stable Diffusion, --sd-model) prompted with the object's
caption; each has its own cache, and the floor's row replaces both with their random-weight twins.
Prints a markdown table and writes OUT/quality.json; `--merge A.json B.json` prints one table of several files
(e.g. variants split over two processes with --variants and --no-random / --only-random).

--task text: held-out captions of procedural objects (by default one-part, one-colour ones: "a pink sphere") are
turned into 3D by a text pipeline with the shipped Hash3D-mini-sd model and its -mini config (dreamgaussian-hash3d
configs/text_mini*.yaml, threestudio-hash3d configs/dreamfusion-sd-mini*.yaml, magic3d-coarse-sd-mini*.yaml and
gaussian_splatting_shading-mini*.yaml, gaussian-dreamer-hash3d configs/gaussiandreamer-sd-mini*.yaml; `hash3d.text_to_3d.TEXT_PIPELINES`), rendered at the same 16 views at elevation 30° (world azimuth, 0 = the
caption's front) and scored against the described object's renders: PSNR, SSIM, silhouette IoU and foreground colour
error. The random-weight twin is `write_random_sd_twin`'s.

Variants: 'off', '{features|noise}[+adaptive]@η', or 'default' = off, features and noise at η = 0.1, 0.3, 0.5, 1,
features on the adaptive grid at the same η. Trailing OPTION=VALUE pairs override the DreamGaussian options of
every run (e.g. iters=150; threestudio-style pipelines: trainer.max_steps=100 checkpoint.every_n_train_steps=100).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from hash3d.cli import setup_logging  # noqa: E402
from hash3d.config.errors import ConfigError  # noqa: E402
from hash3d.image_to_3d import HarnessConfig, format_table, parse_variants, run_harness  # noqa: E402
from hash3d.image_to_3d.cases import DEFAULT_ID_OFFSET  # noqa: E402
from hash3d.image_to_3d.pipeline import PIPELINES, SD_PIPELINES  # noqa: E402
from hash3d.shipped import MINI_MODEL, MINI_SD_MODEL  # noqa: E402
from hash3d.text_to_3d import TEXT_PIPELINES, TextHarnessConfig, run_text_harness  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="image", choices=["image", "text"])
    parser.add_argument("--pipeline", default="dreamgaussian",
                        choices=list(dict.fromkeys([*PIPELINES, *TEXT_PIPELINES])),
                        help=f"image: {', '.join(PIPELINES)}; text: {', '.join(TEXT_PIPELINES)} (default dreamgaussian)")
    parser.add_argument("--all-captions", action="store_true",
                        help="text: every held-out object in order, not only one-part, one-colour captions")
    parser.add_argument("--objects", type=int, default=1, help="held-out objects (default 1)")
    parser.add_argument("--id-offset", type=int, default=DEFAULT_ID_OFFSET, help="first id = 10**12 + this")
    parser.add_argument("--variants", default="default", help="comma-separated cache variants (default: all)")
    parser.add_argument("--no-random", action="store_true", help="skip the random-weight baseline")
    parser.add_argument("--only-random", action="store_true", help="run only the random-weight baseline")
    parser.add_argument("--refine", action="store_true", help="also run stage 2 (texture) and score its mesh")
    parser.add_argument("--no-mesh", action="store_true", help="score only the Gaussians, not the mesh")
    parser.add_argument("--lpips", default=None, help="LPIPS backbone (vgg/alex/squeeze); needs lpips + torchvision")
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder (default: the shipped Hash3D-mini, or Hash3D-mini-sd with --task text)")
    parser.add_argument("--sd-model", type=Path, default=MINI_SD_MODEL,
                        help=f"{', '.join(SD_PIPELINES)}: its Stable Diffusion model folder (default: Hash3D-mini-sd)")
    parser.add_argument("--label", default=None,
                        help="name of the model's rows in the table (default mini, mini+mini-sd or mini-sd)")
    parser.add_argument("--out", type=Path, default=None, help="default outputs/quality (text: outputs/quality-text)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="print one table of the rows of several quality.json files (runs split over processes)")
    args, extras = parser.parse_known_args(argv)
    if args.merge:
        rows = [row for path in args.merge for row in json.loads(path.read_text())["rows"]]
        print(format_table(rows))
        return 0
    bad = [e for e in extras if "=" not in e or e.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (pipeline options are given as key=value)")
    try:
        variants = parse_variants(args.variants)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging()
    if args.task == "text":
        if args.pipeline not in TEXT_PIPELINES:
            parser.error(f"--task text runs a text pipeline: {', '.join(TEXT_PIPELINES)}; got {args.pipeline!r}")
        if args.refine or args.lpips:
            parser.error("--refine and --lpips are options of --task image")
        out = args.out or REPO / "outputs" / "quality-text"
        result = run_text_harness(TextHarnessConfig(
            out=out, pipeline=args.pipeline, objects=args.objects, id_offset=args.id_offset,
            simple=not args.all_captions, variants=variants, random_baseline=not args.no_random,
            trained=not args.only_random, model=args.model or MINI_SD_MODEL, label=args.label or "mini-sd",
            overrides=extras, progress=not args.no_progress,
        ))
        print(result["table"])
        print(f"\nwrote {out / 'quality.json'}")
        return 0
    if args.pipeline not in PIPELINES:
        parser.error(f"{args.pipeline!r} is a text pipeline: add --task text")
    if args.all_captions:
        parser.error("--all-captions is an option of --task text")
    args.out = args.out or REPO / "outputs" / "quality"
    args.model = args.model or MINI_MODEL
    args.label = args.label or ("mini+mini-sd" if args.pipeline in SD_PIPELINES else "mini")
    result = run_harness(HarnessConfig(
        out=args.out, pipeline=args.pipeline, objects=args.objects, id_offset=args.id_offset, variants=variants,
        random_baseline=not args.no_random, trained=not args.only_random, model=args.model, label=args.label,
        sd_model=args.sd_model, overrides=extras,
        refine=args.refine, score_mesh=not args.no_mesh, lpips_net=args.lpips, progress=not args.no_progress,
    ))
    print(result["table"])
    print(f"\nwrote {args.out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
