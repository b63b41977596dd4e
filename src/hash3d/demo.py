"""Hash3D demo, the README's main job: image to 3D on a CPU with the shipped Hash3D-mini model, cache on; and,
with `--text`, text to 3D with the shipped Hash3D-mini-sd model.

    python -m hash3d.demo [--pipeline dreamgaussian|threestudio] [--input IMAGE] [--elevation DEG] [--out DIR]
                          [--steps N] [--refine-steps N] [--cache on|off|both] [--threads N] [--no-progress]
                          [OPTION=VALUE ...]
    python -m hash3d.demo --text "a red sphere on a blue cube" [--pipeline dreamgaussian|dreamfusion-sd|
                          gaussiandreamer-sd] [--out DIR] [--steps N] [--refine-steps N] [--cache ...] [...]

By default it reconstructs `assets/mini_heldout_rgba.png` — a 64 px view, from 15° above, of procedural object
10**12 + 1011, which the model never saw in training (held-out ids start at 10**12) — with dreamgaussian-hash3d
(`configs/image_mini_hash3d.yaml`: 3D Gaussians by Zero123 SDS, then mesh extraction and texture refinement),
offline, and leaves in `--out` (default `outputs/demo`):

    object.mp4            orbit video of the Gaussians (stage 1)      object_refined.mp4  orbit of the textured mesh
    object.obj/.mtl/_albedo.png   the textured mesh (stage 2; object_mesh.* is stage 1's)
    object_model.ply      the Gaussians                              object_*report.json  the front-end's reports
    report.json           this demo's report: time, it/s, UNet calls, calls saved, hit rate per run

and prints the same numbers as a table. `--cache both` runs cache off and then on, on identical configs, into
`OUT/cache-off/` and `OUT/cache-on/`, and reports them side by side. Both pipelines run in-process through their
front-ends' entry functions (`hash3d.image_to_3d.pipeline`); trailing OPTION=VALUE pairs are passed to the
front-end's config (DreamGaussian option names, or threestudio dotted keys).

Why DreamGaussian by default. Both pipelines reconstructed held-out object 10**12 + 2000 from the same 64 px view
on this 2-core CPU (one torch thread each, other jobs running beside them), scored by `bench/quality.py` on 16
views at elevation 30° against ground truth (times vary with the other jobs' load):

    pipeline (mini config, cache off)                             steps  training time   PSNR   SSIM
    dreamgaussian  image_mini.yaml (2000 Gaussians, 1 view/step)     300   120-235 s     15.10  0.600
    threestudio    stable-zero123-mini.yaml (NeRF, 1 view/step)      200      602 s      10.37  0.337

A DreamGaussian step (rasterising 2000 Gaussians at 64², one Zero123 call) costs 0.4 s; a threestudio step
(volume rendering a hash-grid NeRF at 64² with 96 samples per ray, analytic normals and their regularisers, for
the random view and the reference view) costs about 3 s with one random view and 8-14 s with the config's four.
In the 10-minute budget DreamGaussian runs its whole schedule, mesh and videos included; threestudio gets through
200 of its config's 300 steps (threestudio's own recipe has 600) and its object is still a blob in the wrong
colours. So the demo runs DreamGaussian;
`--pipeline threestudio` runs the other one (expect about an hour for its 300 default steps on a CPU; `--steps` cuts it).

Text to 3D (`--text PROMPT`): the same outputs from a prompt, by DreamGaussian's text mode with
`configs/text_mini_hash3d.yaml` (Gaussians by SDS from Hash3D-mini-sd, then mesh and texture), offline; `--pipeline
dreamfusion-sd` or `gaussiandreamer-sd` runs those recipes' mini configs instead (`hash3d.text_to_3d.pipelines`).
Hash3D-mini-sd knows only the words of its captions (colours, shapes, 'striped', 'checkered', 'on', 'next to':
models/hash3d-mini-sd/README.md); other words are embedded but mean nothing to it, and the demo says so. Its
output is a soft object in the described colours: the model follows colours clearly and shapes weakly (its card).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .cli import run_cli
from .config.errors import UserInputError
from .image_to_3d.variants import AS_CONFIGURED, Variant
from .shipped import EXAMPLE_ELEVATION, EXAMPLE_INPUT, MINI_MODEL, MINI_SD_MODEL, require

IMAGE_PIPELINES = ("dreamgaussian", "threestudio")

__all__ = ["main", "run_demo", "format_report"]


def _runs(cache: str) -> list[tuple[str, Variant]]:
    off, on = ("cache off", Variant(False)), ("cache on", AS_CONFIGURED)
    return {"on": [on], "off": [off], "both": [off, on]}[cache]


def _pipeline_overrides(args) -> list[str]:
    out: list[str] = []
    if args.pipeline == "dreamgaussian":  # DreamGaussian's option names, in image and text mode
        if args.steps is not None:
            out += [f"iters={args.steps}", f"position_lr_max_steps={args.steps}"]
        if args.refine_steps is not None:
            out.append(f"iters_refine={args.refine_steps}")
    elif args.steps is not None:
        out += [f"trainer.max_steps={args.steps}", f"checkpoint.every_n_train_steps={args.steps}"]
    return out + list(args.options)


def _run_entry(name: str, variant: Variant, run, folder: Path, wall: float) -> dict[str, Any]:
    entry = {"run": name, "cache": variant.name, "folder": str(folder), "total_time_s": round(wall, 2)}
    entry.update(run.stats)
    calls = run.stats["unet_calls"]
    entry["saved_fraction"] = round(run.stats["unet_calls_saved"] / calls, 4) if calls else 0.0
    entry["video"] = str(run.video) if run.video else None
    entry["mesh"] = [str(p) for p in run.mesh]
    cache_reports = [r.get("cache_config") for r in run.reports.values() if isinstance(r, dict) and r.get("cache_config")]
    if cache_reports:
        entry["cache_config"] = cache_reports[0]
    return entry


def format_report(report: dict[str, Any]) -> str:
    """The printed table: one line per run, and the speed-up of cache on over off when both ran."""
    head = (f"{'run':<10} {'steps':>6} {'total s':>8} {'train s':>8} {'it/s':>6} {'UNet calls':>10} {'saved':>14} "
            f"{'hit rate':>9}")
    lines = [head, "-" * len(head)]
    for r in report["runs"]:
        saved = f"{r['unet_calls_saved']} ({100 * r['saved_fraction']:.1f}%)"
        its = "-" if r["it_per_s"] is None else f"{r['it_per_s']:.2f}"
        lines.append(f"{r['run']:<10} {r['steps']:>6} {r['total_time_s']:>8.1f} {r['train_time_s']:>8.1f} {its:>6} "
                     f"{r['unet_calls']:>10} {saved:>14} {100 * r['hit_rate']:>8.1f}%")
    if "speedup_train" in report:
        lines.append(f"cache on vs off: {report['speedup_train']:.2f}x training time, {report['speedup_total']:.2f}x in all")
    return "\n".join(lines)


def _existing(path: Path, default: Path, what: str, flag: str) -> Path:
    """A user-given input path that must exist; the shipped default's absence means a broken checkout instead."""
    if path == default:
        return require(path, what)
    if not path.exists():
        raise UserInputError(f"{what} not found: {path} (check the {flag} path)")
    return path


def _input_image(path: Path) -> Path:
    image = _existing(path, EXAMPLE_INPUT, "input image", "--input")
    if not image.is_file():
        raise UserInputError(f"--input must be an image file; {image} is a folder")
    return image


def _output_folder(out: Path) -> Path | None:
    """Create --out (checked before any work); returns the topmost folder created, None when it existed."""
    created = next((p for p in reversed((out, *out.parents)) if not p.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserInputError(f"--out {out} is a file; name a folder") from None
    except NotADirectoryError:
        parent = next((p for p in out.parents if p.is_file()), out.parent)
        raise UserInputError(f"cannot create the output folder {out}: {parent} is a file; name another --out") from None
    except PermissionError:
        raise UserInputError(f"cannot create the output folder {out}: permission denied; name a writable --out") from None
    except OSError as exc:
        raise UserInputError(f"cannot create the output folder {out}: {exc.strerror or exc}; name another --out") from None
    if not os.access(out, os.W_OK):
        raise UserInputError(f"the output folder {out} is not writable; name a writable --out")
    return created


def unknown_words(prompt: str) -> list[str]:
    """The words of `prompt` that no Hash3D-mini-sd caption holds (the model has learnt nothing for them)."""
    from .mini.text_data import WORDS

    return [w for w in prompt.replace(",", " ").lower().split() if w not in WORDS]


def _text_prompt(text: str, model: Path) -> str:
    if not text.strip():
        raise UserInputError('--text is empty: describe an object, e.g. --text "a red sphere on a blue cube"')
    unknown = unknown_words(text)
    if unknown and model.resolve() == MINI_SD_MODEL.resolve():
        print(f"[demo] warning: Hash3D-mini-sd has never seen {', '.join(repr(w) for w in unknown)}: it knows only "
              f"the words of its captions (colours, shapes, 'striped', 'checkered', 'on', 'next to'; "
              f"{MINI_SD_MODEL / 'README.md'})", file=sys.stderr)
    return text


def run_demo(args) -> dict[str, Any]:
    text = getattr(args, "text", None)
    if text is None:
        from .image_to_3d.pipeline import run_pipeline

        model = _existing(Path(args.model or MINI_MODEL), MINI_MODEL, "the Zero123 model folder", "--model")
        source = _input_image(Path(args.input or EXAMPLE_INPUT))
        elevation = EXAMPLE_ELEVATION if args.elevation is None else args.elevation

        def run_one(variant: Variant, folder: Path, overrides: list[str]):
            extra = {"refine": True} if args.pipeline == "dreamgaussian" else {"export": True}
            return run_pipeline(args.pipeline, variant, source, folder, input_elevation=elevation, model=model,
                                overrides=overrides, progress=not args.no_progress, **extra)
    else:
        from .text_to_3d import text_pipeline

        model = _existing(Path(args.model or MINI_SD_MODEL), MINI_SD_MODEL, "the Stable Diffusion model folder",
                          "--model")
        source, elevation = _text_prompt(text, model), None
        pipeline = text_pipeline(args.pipeline)

        def run_one(variant: Variant, folder: Path, overrides: list[str]):
            return pipeline.run(variant, source, folder, model=model, overrides=overrides,
                                progress=not args.no_progress, finish=True)

    out = Path(args.out)
    created = _output_folder(out)
    try:
        return _run_all(args, run_one, model, source, elevation, out)
    except BaseException:
        if created is not None and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)  # a rejected input leaves no empty folder behind
        raise


def _run_all(args, run_one, model: Path, source, elevation: float | None, out: Path) -> dict[str, Any]:
    overrides = _pipeline_overrides(args)
    runs = _runs(args.cache)
    text = getattr(args, "text", None)
    report: dict[str, Any] = {
        "pipeline": args.pipeline,
        "task": "image" if text is None else "text",
        **({"input": str(source), "input_elevation": elevation} if text is None else {"prompt": source}),
        "model": str(model),
        "overrides": overrides,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "runs": [],
    }
    start = time.perf_counter()
    for name, variant in runs:
        folder = out / name.replace(" ", "-") if len(runs) > 1 else out
        print(f"[demo] {args.pipeline}, {name}: {folder}", file=sys.stderr)
        t0 = time.perf_counter()
        run = run_one(variant, folder, overrides)
        report["runs"].append(_run_entry(name, variant, run, folder, time.perf_counter() - t0))
    report["total_time_s"] = round(time.perf_counter() - start, 2)
    by_name = {r["run"]: r for r in report["runs"]}
    if "cache off" in by_name and "cache on" in by_name:
        off, on = by_name["cache off"], by_name["cache on"]
        report["speedup_train"] = round(off["train_time_s"] / max(on["train_time_s"], 1e-9), 3)
        report["speedup_total"] = round(off["total_time_s"] / max(on["total_time_s"], 1e-9), 3)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hash3d.demo",
        description="Image to 3D on a CPU with the shipped Hash3D-mini model, offline (the README's main job); with "
        "--text, text to 3D with the shipped Hash3D-mini-sd. Trailing OPTION=VALUE pairs go to the front-end's config.",
        epilog="Outputs, timings and why DreamGaussian is the default: the hash3d.demo module docstring and README.md.",
    )
    parser.add_argument("--text", default=None, metavar="PROMPT",
                        help="text to 3D with Hash3D-mini-sd, e.g. 'a red sphere on a blue cube'")
    parser.add_argument("--pipeline", default="dreamgaussian", metavar="NAME",
                        help="dreamgaussian (default; minutes on a CPU) or threestudio (about an hour); with --text: "
                        "dreamgaussian or a threestudio-style recipe such as dreamfusion-sd")
    parser.add_argument("--input", default=None, help="RGBA image of one object (default: the example)")
    parser.add_argument("--elevation", type=float, default=None,
                        help="input camera's elevation in degrees, positive = from above (default 15, the example's)")
    parser.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the mini config's)")
    parser.add_argument("--refine-steps", type=int, default=None, help="DreamGaussian stage-2 steps (default: config)")
    parser.add_argument("--cache", choices=["on", "off", "both"], default="on",
                        help="Hash3D cache on, off, or both runs side by side (default on)")
    parser.add_argument("--model", default=None,
                        help="Zero123-family (--text: Stable Diffusion) model folder (default: Hash3D-mini / -mini-sd)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    bad = [e for e in extras if "=" not in e or e.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config options are given as key=value)")
    args.options = extras
    if args.text is not None or args.pipeline not in IMAGE_PIPELINES:
        from .text_to_3d.pipelines import TEXT_PIPELINES  # imported only here: --help stays quick

        if args.text is None:
            if args.pipeline in TEXT_PIPELINES:
                parser.error(f"--pipeline {args.pipeline} is text to 3D: give --text PROMPT")
            parser.error(f"unknown --pipeline {args.pipeline}: image to 3D runs {' or '.join(IMAGE_PIPELINES)}, "
                         f"--text runs {', '.join(TEXT_PIPELINES)}")
        if args.pipeline not in TEXT_PIPELINES:
            parser.error(f"--text runs a text pipeline: {', '.join(TEXT_PIPELINES)}; got --pipeline {args.pipeline}")
        if args.input is not None or args.elevation is not None:
            parser.error("--input and --elevation are for image to 3D; --text takes none")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.refine_steps is not None and args.refine_steps < 0:
        parser.error("--refine-steps must be >= 0")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)

    def body() -> None:
        report = run_demo(args)
        print()
        what = f"image-to-3D of {report['input']}" if args.text is None else f"text-to-3D of {report['prompt']!r}"
        print(f"{report['pipeline']} {what} on {report['device']} ({report['threads']} threads), "
              f"{report['total_time_s']:.1f} s in all")
        print(format_report(report))
        last = report["runs"][-1]
        print(f"outputs: {last['folder']} (video {last['video']}, mesh {', '.join(last['mesh'])})")
        print(f"report: {Path(args.out) / 'report.json'}")

    return run_cli(body, "hash3d.demo")


if __name__ == "__main__":
    sys.exit(main())
