"""GPU benchmark of whole training runs, cache off vs on on identical configs, full-size random-weight models.

    python bench/training.py --pipeline stable-zero123 [--steps 600] [--etas 0.1 0.5 1] [--modes features noise]
    python bench/training.py --pipeline dreamgaussian [--stage2]
    python bench/training.py --pipeline gaussiandreamer-sd
    python bench/training.py --pipeline dreamgaussian-text_mv   # also dreamgaussian-text, dreamgaussian-imagedream

Pipelines: the threestudio-hash3d configs (stable-zero123, zero123, dreamfusion-sd) and gaussian-dreamer-hash3d's
gaussiandreamer-sd run through the shared launcher (`--train`, no validation or test render); dreamgaussian runs
dreamgaussian-hash3d's stage 1 (image_sai.yaml / image_sai_hash3d.yaml), and stage 2 after it with --stage2;
dreamgaussian-text / -text_mv / -imagedream run its text.yaml / text_mv.yaml / imagedream.yaml (and twins) the same
way with Stable Diffusion 2.1-base / MVDream / ImageDream (the multi-view ones cache in noise mode only).
Each `_hash3d` twin differs from its base only in the cache block. Runs: cache off; the base config with the SDS
weight set to 0 (everything but the guidance); cache on in each mode at each hash probability η; cache off with
as few steps as take the time of the fastest cached run.

Per run: total training time, it/s, speed-up vs cache off, peak GPU memory, the share of UNet samples answered from
the cache, the CUDA graphs the cache captured (one per phase and batch shape, each costing a few eager passes that
a short run does not amortise), and where a step's time goes (GPU time from CUDA events, `hash3d.profiling`): rendering, VAE encoder
forward and backward, UNet (with the cache's lookups and inserts), the rest of the guidance (timestep and noise
sampling, conditioning, ε, CFG, the SDS gradient), the rest of the backward pass, optimiser (+ densification) and
what is left (the host, data, losses). Trailing key=value pairs override every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hash3d.launch import main as launch  # noqa: E402
from hash3d.profiling import SectionTimer  # noqa: E402
from hash3d.testing.models import write_model  # noqa: E402


@dataclass(frozen=True)
class Pipeline:
    front_end: str
    base: str
    hashed: str
    family: str
    model_key: str
    """Option naming the model folder."""
    no_guidance: str | None
    """Option that switches the SDS term off (None: the per-part times alone say what the guidance costs)."""
    steps: int
    """Default training steps (the upstream recipe's, DreamFusion's 10,000 cut to 1,000)."""
    launcher: bool = True
    options: tuple[str, ...] = ()
    """Options of every run of this pipeline."""
    input: str | None = "mug_rgba.png"
    """dreamgaussian-hash3d: the input image in its data/ folder (None: text only)."""
    cache_modes: tuple[str, ...] = ("features", "noise")
    """Cache modes the pipeline's guidance supports (--modes is cut down to these)."""


PIPELINES = {
    "stable-zero123": Pipeline("threestudio-hash3d", "stable-zero123.yaml", "stable-zero123_hash3d.yaml", "zero123",
                               "system.guidance.pretrained_model_name_or_path", "system.loss.lambda_sds=0", 600),
    "zero123": Pipeline("threestudio-hash3d", "zero123.yaml", "zero123_hash3d.yaml", "zero123",
                        "system.guidance.pretrained_model_name_or_path", "system.loss.lambda_sds=0", 600),
    "dreamfusion-sd": Pipeline("threestudio-hash3d", "dreamfusion-sd.yaml", "dreamfusion-sd_hash3d.yaml", "sd",
                               "system.guidance.pretrained_model_name_or_path", "system.loss.lambda_sds=0", 1000),
    "gaussiandreamer-sd": Pipeline("gaussian-dreamer-hash3d", "gaussiandreamer-sd.yaml", "gaussiandreamer-sd_hash3d.yaml",
                                   "sd", "system.guidance.pretrained_model_name_or_path", "system.loss.lambda_sds=0", 1200,
                                   # Shap-E cannot be downloaded here: a ball of about as many points as its grown cloud
                                   options=("system.init.kind=sphere", "system.init.sphere.num_points=50000")),
    "dreamgaussian": Pipeline("dreamgaussian-hash3d", "image_sai.yaml", "image_sai_hash3d.yaml", "zero123",
                              "guidance.pretrained_model_name_or_path", None, 500, launcher=False,
                              # the mesh written after training is not timed: keep it small
                              options=("mesh_resolution=64", "texture_size=256")),
    "dreamgaussian-text": Pipeline("dreamgaussian-hash3d", "text.yaml", "text_hash3d.yaml", "sd",
                                   "guidance.pretrained_model_name_or_path", None, 500, launcher=False, input=None,
                                   options=("mesh_resolution=64", "texture_size=256", "prompt=a photo of an icecream")),
    "dreamgaussian-text_mv": Pipeline("dreamgaussian-hash3d", "text_mv.yaml", "text_mv_hash3d.yaml", "mvdream",
                                      "guidance.pretrained_model_name_or_path", None, 500, launcher=False, input=None,
                                      options=("mesh_resolution=64", "texture_size=256",
                                               "prompt=a plush toy of a corgi nurse"),
                                      cache_modes=("noise",)),
    "dreamgaussian-imagedream": Pipeline("dreamgaussian-hash3d", "imagedream.yaml", "imagedream_hash3d.yaml",
                                         "imagedream", "guidance.pretrained_model_name_or_path", None, 500,
                                         launcher=False, options=("mesh_resolution=64", "texture_size=256",
                                                                  "prompt=a mug"),
                                         cache_modes=("noise",)),
}  # fmt: skip

CACHE_PREFIX = {True: "system.guidance.cache.", False: "cache."}
STEPS_KEY = {True: "trainer.max_steps", False: "iters"}
PARTS = ["render", "vae_fwd", "vae_bwd", "unet", "guidance_rest", "backward_rest", "optimiser", "other"]


def _launcher_run(pipe: Pipeline, config: str, out: Path, steps: int, extra: list[str], timer: SectionTimer) -> dict:
    with timer:
        status = launch([
            "--config", str(REPO / pipe.front_end / "configs" / config), "--train", "--gpu", "0",
            f"exp_root_dir={out}", "use_timestamp=false", f"trainer.max_steps={steps}", "trainer.val_check_interval=0",
            "trainer.num_sanity_val_steps=0", "trainer.test_after_fit=false", "trainer.enable_progress_bar=false",
            f"checkpoint.every_n_train_steps={steps}", *extra,
        ])  # fmt: skip
    if status != 0:
        raise SystemExit(f"run failed: {config} {extra}")
    trial = sorted(p for p in out.glob("*/*") if p.is_dir())[-1]
    with open(trial / "csv_logs" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    saved = float(last.get("cache/cached_samples") or 0)
    run = float(last.get("cache/full_samples") or 0)
    return {"train_s": float(last["elapsed_s"]), "saved": saved, "unet_samples": saved + run,
            "graphs_captured": int(float(last.get("cache/graphs_captured") or 0))}


def _dreamgaussian_run(
    pipe: Pipeline, config: str, out: Path, steps: int, extra: list[str], timer: SectionTimer, stage2: bool
) -> dict:
    from hash3d.systems.dreamgaussian.config import load_options
    from hash3d.systems.dreamgaussian.stage1 import run_stage1

    options = [*([f"input={REPO / pipe.front_end / 'data' / pipe.input}"] if pipe.input else []), f"outdir={out}",
               "save_path=bench", f"iters={steps}", f"position_lr_max_steps={steps}", *extra]  # fmt: skip
    cfg = load_options(str(REPO / pipe.front_end / "configs" / config), options)
    with timer:
        report = json.loads(run_stage1(cfg, progress=False).report.read_text())
    row = {"train_s": report["train_time_s"], "saved": report["cache"]["unet_calls_saved"],
           "unet_samples": report["cache"]["unet_calls_saved"] + report["cache"]["unet_calls_run"],
           "num_gaussians": report["num_gaussians"], "graphs_captured": report["cache"]["graphs_captured"]}  # fmt: skip
    if stage2:
        from hash3d.systems.dreamgaussian.stage2 import run_stage2

        report2 = json.loads(run_stage2(load_options(str(REPO / pipe.front_end / "configs" / config), options), progress=False).report.read_text())
        row["stage2_s"] = report2["train_time_s"]
        row["stage2_saved"] = report2["cache"]["unet_calls_saved"]
    return row


def _parts(totals: dict[str, float], train_s: float, steps: int) -> dict[str, float]:
    """ms per step of each part (see the module docstring); the parts add up to the measured step time."""
    g = totals.get
    top = sum(g(k, 0.0) for k in ("data", "render", "guidance", "backward", "optimizer", "densify"))
    parts = {
        "render": g("render", 0.0),
        "vae_fwd": g("vae_encode", 0.0),
        "vae_bwd": g("vae_backward", 0.0),
        "unet": g("unet", 0.0),
        "guidance_rest": g("guidance", 0.0) - g("vae_encode", 0.0) - g("unet", 0.0),
        "backward_rest": g("backward", 0.0) - g("vae_backward", 0.0),
        "optimiser": g("optimizer", 0.0) + g("densify", 0.0),
        "other": 1000 * train_s - top + g("data", 0.0),
    }
    return {k: v / steps for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="stable-zero123", choices=sorted(PIPELINES))
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--etas", nargs="+", type=float, default=[0.1, 0.5, 1.0])
    parser.add_argument("--modes", nargs="+", default=["features", "noise"])
    parser.add_argument("--stage2", action="store_true", help="dreamgaussian: run stage 2 after every stage 1")
    parser.add_argument("--no-baselines", action="store_true", help="skip the no-guidance and fewer-steps runs")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unrecorded warm-up run")
    parser.add_argument("--models", default="/tmp/hash3d-bench-models")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("extra", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/training.py needs a CUDA GPU")
    pipe = PIPELINES[args.pipeline]
    os.chdir(REPO / pipe.front_end)  # configs name their example inputs relative to the front-end folder
    model = Path(args.models) / f"{pipe.family}-full"
    if not (model / "model_index.json").exists():
        write_model(pipe.family, "full", model, dtype=torch.float16, device="cuda")
    steps = args.steps or pipe.steps
    work = Path("/tmp/hash3d-bench-runs") / args.pipeline
    prefix = CACHE_PREFIX[pipe.launcher]
    rows: list[dict] = []

    def go(config: str, n: int, extra: list[str], label: str) -> dict:
        # one folder per run (the warm-up's too): a run reads its own metrics.csv, never an earlier run's
        out = work / f"{len(rows):02d}-{label.replace(' ', '_').replace('=', '')}"
        if out.exists():
            shutil.rmtree(out)
        options = [f"{pipe.model_key}={model}", *pipe.options, *args.extra, *extra]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        timer = SectionTimer()
        if pipe.launcher:
            row = _launcher_run(pipe, config, out, n, options, timer)
        else:
            row = _dreamgaussian_run(pipe, config, out, n, options, timer, args.stage2)
        row.update(label=label, config=config, extra=extra, steps=n, it_per_s=n / row["train_s"],
                   peak_gb=torch.cuda.max_memory_allocated() / 2**30,
                   parts_ms=_parts(timer.totals_ms(), row["train_s"], n))  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    if not args.no_warmup:  # CUDA context, kernels compiled on first use, cuDNN autotuning: not the first run's bill
        go(pipe.hashed, min(steps, 30), [f"{prefix}mode={pipe.cache_modes[0]}"], "warm-up")
        rows.clear()
    off = go(pipe.base, steps, [], "cache off")
    if not args.no_baselines and pipe.no_guidance:
        go(pipe.base, steps, [pipe.no_guidance], "no guidance (SDS weight 0)")
    for mode in (m for m in args.modes if m in pipe.cache_modes):
        for eta in args.etas:
            go(pipe.hashed, steps, [f"{prefix}mode={mode}", f"{prefix}policy.probability={eta}"], f"cache {mode} η={eta:g}")
    cached = [r for r in rows if r["label"].startswith("cache ") and r is not off]
    if cached and not args.no_baselines:
        fewer = max(1, round(steps * min(r["train_s"] for r in cached) / off["train_s"]))
        go(pipe.base, fewer, [], f"cache off, {fewer} steps (time of the fastest cached run)")

    device = torch.cuda.get_device_name()
    print(f"\n### {args.pipeline}: {steps} training steps, {device}")
    print(format_table(rows, off))
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device, "pipeline": args.pipeline, "rows": rows}, indent=2))


def format_table(rows: list[dict], off: dict) -> str:
    head = ["run", "steps", "train s", "it/s", "speed-up", "UNet samples from cache", "cache graphs", "peak GB"]
    head += [f"{p} ms" for p in PARTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    off_step = off["train_s"] / off["steps"]
    for r in rows:
        saved = f"{r['saved'] / r['unet_samples']:.0%}" if r["unet_samples"] else "-"
        cells = [r["label"], str(r["steps"]), f"{r['train_s']:.1f}", f"{r['it_per_s']:.2f}",
                 f"{off_step / (r['train_s'] / r['steps']):.2f}x", saved, str(r.get("graphs_captured", 0)),
                 f"{r['peak_gb']:.1f}"]  # fmt: skip
        cells += [f"{r['parts_ms'][p]:.1f}" for p in PARTS]
        if "stage2_s" in r:
            cells[2] += f" (+{r['stage2_s']:.1f} stage 2)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
