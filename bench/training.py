"""GPU benchmark of whole training runs, cache off vs on on identical configs, full-size random-weight models.

    python bench/training.py --pipeline stable-zero123 [--steps 100] [--variants noise@1 features@auto ...] [--as-user]
    python bench/training.py --pipeline dreamgaussian [--stage2]
    python bench/training.py --pipeline gaussiandreamer-sd
    python bench/training.py --pipeline magic3d-refine-sd   (also magic3d-coarse-sd, magic123-coarse-sd, magic123-refine-sd)
    python bench/training.py --pipeline dreamgaussian-text_mv   (also dreamgaussian-text, dreamgaussian-imagedream)
    python bench/training.py --pipeline stable-zero123 --profile 20 [--profile-config base]
    python bench/training.py --pipeline stable-zero123 --steps 20 --no-warmup --profile 10 --profile-after 300 --profile-config base

Pipelines: the threestudio-hash3d configs (stable-zero123, zero123, dreamfusion-sd; the Magic3D and Magic123 stages,
where a refine pipeline first trains its coarse config for a few hundred untimed steps and starts from that
checkpoint) and gaussian-dreamer-hash3d's gaussiandreamer-sd run through the shared launcher (`--train`, no
validation or test render); dreamgaussian runs
dreamgaussian-hash3d's stage 1 (image_sai.yaml / image_sai_hash3d.yaml), and stage 2 after it with --stage2;
dreamgaussian-text / -text_mv / -imagedream run its text.yaml / text_mv.yaml / imagedream.yaml (and twins) the same
way with Stable Diffusion 2.1-base / MVDream / ImageDream (the multi-view ones cache in noise mode only: their
features variants are skipped).
Each `_hash3d` twin differs from its base only in the cache block. Runs: cache off; "shipped", the `_hash3d` config
exactly as shipped; with --baselines, the base config with the SDS weight set to 0 (everything but the guidance) and
cache off with as few steps as take the time of the fastest cached run; each --variants entry (the quality harness's
names: `noise@1`, `features+adaptive@0.1`, `noise@auto`, ...) on the `_hash3d` config. With --as-user the launcher
runs keep the config's validation renders (the whole recipe as a user's command runs it); otherwise validation is
off. Each --with KEY=VALUE (an execution setting such as system.guidance.vae_encoder=compiled) adds both configs
with it after the pairs, behind a kept 30-step first run that shows its one-off costs.

Besides the measured speed-up each cached row shows the one expected from the cache-off step's UNet share u, the
row's share of UNet samples answered from the cache h, and the cost of a hit relative to a miss c (--hit-cost, per
mode; the defaults are the guidance benchmark's): 1 / (1 - u h (1 - c)), and the same with h the share of requests
answered whole (every sample a hit): a request split between hits and misses still runs a UNet pass over its
misses, which costs about a full pass where the UNet is launch-bound, so the truth lies between the two. Where the
measured speed-up falls below both, the time went outside what the cache saves (captures, host reads, inserts).
Each cached row counts its requests answered whole, split, quiet (probes) and skipped (the cost-aware policy's plain
calls). Rows go to
bench/results-training-<pipeline>[-<steps>]-<device>.json (the current file of that pipeline and device).

Per run: total training time, it/s, speed-up vs cache off, peak GPU memory, the share of UNet samples answered from
the cache, the CUDA graphs the cache captured (one per phase and batch shape, each costing a few eager passes that
a short run does not amortise), and where a step's time goes (GPU time from CUDA events, `hash3d.profiling`): rendering, VAE encoder
forward and backward, UNet (with the cache's lookups and inserts), the rest of the guidance (timestep and noise
sampling, conditioning, ε, CFG, the SDS gradient), the rest of the backward pass, the NeRF systems' regularisers
(forward; e.g. Stable-Zero123's 3D normal smoothness, a second field pass), optimiser (+ densification) and what is
left (the host, data, other losses). Trailing key=value pairs override every run.

--profile N: after the usual rows, one more run of the shipped `_hash3d` config (--profile-config base: the base
config, cache off) for N steps under `torch.profiler` (`hash3d.profiling.kernel_profile`), and a table of the kernels
that make up each section: per section its GPU time a step, and its top kernels (the op that launched each, calls
and ms a step, % of the profiled step's wall time; a kernel launched by several ops has a row for each), then the
top kernels overall. A kernel counts under the innermost section that launched it; the backward pass's kernels
(launched by the autograd engine outside the sections) under "backward", those launched between sections under
"other"; only what was launched between the first section and the last counts (not the set-up or the checkpoint).
The profiler slows the run, so it is no timing row. Its rows go to profile-<pipeline>[-<steps>][-after<K>]-<device>.json
next to the results file, with `profiled_step_ms`, the wall time a profiled step took (the denominator of the %
column).

--profile-after K: the profiled run trains K + N steps and the profiler records steps K+1..K+N only: a recipe's last
phase (Stable-Zero123's last resolution from step 300), which a run cannot start in (it runs out of GPU memory before
the occupancy grid has emptied space). `profiled_step_ms` is then the profile's own span over those N steps.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))  # its sibling shipped_table, also when imported from elsewhere

from shipped_table import request_counts  # noqa: E402
from hash3d.launch import main as launch  # noqa: E402
from hash3d.profiling import (  # noqa: E402
    Attribution,
    KernelProfile,
    KernelRow,
    SectionTimer,
    attribute,
    kernel_profile,
    section_span,
)
from hash3d.image_to_3d.variants import parse_variant  # noqa: E402
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
    more_models: tuple[tuple[str, str], ...] = ()
    """(option, family) of further models (Magic123's second guidance)."""
    more_caches: tuple[str, ...] = ()
    """Cache blocks besides the guidance's that the cache options go to (Magic123's guidance_3d)."""
    coarse: str | None = None
    """Refine stages: the pipeline whose base config is first trained (untimed, `COARSE_STEPS`) to start from."""
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
    # Latent-NeRF: no VAE encoder, so the UNet is most of the step (1,000 of the recipe's 10,000 steps keep 64x64
    # latents throughout; the 256x256 milestone is at 5,000). UNet share of a step: parts_ms["unet"] / step time.
    "latentnerf": Pipeline("threestudio-hash3d", "latentnerf.yaml", "latentnerf_hash3d.yaml", "sd",
                           "system.guidance.pretrained_model_name_or_path", "system.loss.lambda_sds=0", 1000),
    # threestudio-3dgs' recipes: gaussian_splatting_zero123 and gaussian_splatting_shading (its 5,000 steps cut to 1,000)
    "gs-zero123": Pipeline("threestudio-hash3d", "gaussian_splatting_zero123.yaml",
                           "gaussian_splatting_zero123_hash3d.yaml", "zero123",
                           "system.guidance.pretrained_model_name_or_path", "system.loss.lambda_sds=0", 1000),
    "gs-shading": Pipeline("threestudio-hash3d", "gaussian_splatting_shading.yaml",
                           "gaussian_splatting_shading_hash3d.yaml", "sd",
                           "system.guidance.pretrained_model_name_or_path", "system.loss.lambda_sds=0", 1000),
    "dreamgaussian": Pipeline("dreamgaussian-hash3d", "image_sai.yaml", "image_sai_hash3d.yaml", "zero123",
                              "guidance.pretrained_model_name_or_path", None, 500, launcher=False,
                              # the mesh written after training is not timed: keep it small
                              options=("mesh_resolution=64", "texture_size=256")),
    # two-stage methods: the refine rows start from a short untimed coarse run (random weights: its density is
    # still near the initial blob, so the conversion's auto threshold finds a surface)
    "magic3d-coarse-sd": Pipeline("threestudio-hash3d", "magic3d-coarse-sd.yaml", "magic3d-coarse-sd_hash3d.yaml", "sd",
                                  "system.guidance.pretrained_model_name_or_path", "system.loss.lambda_sds=0", 1000),
    "magic3d-refine-sd": Pipeline("threestudio-hash3d", "magic3d-refine-sd.yaml", "magic3d-refine-sd_hash3d.yaml", "sd",
                                  "system.guidance.pretrained_model_name_or_path", "system.loss.lambda_sds=0", 500,
                                  coarse="magic3d-coarse-sd"),
    "magic123-coarse-sd": Pipeline("threestudio-hash3d", "magic123-coarse-sd.yaml", "magic123-coarse-sd_hash3d.yaml",
                                   "sd", "system.guidance.pretrained_model_name_or_path", None, 1000,
                                   more_models=(("system.guidance_3d.pretrained_model_name_or_path", "zero123"),),
                                   more_caches=("system.guidance_3d.cache.",)),
    "magic123-refine-sd": Pipeline("threestudio-hash3d", "magic123-refine-sd.yaml", "magic123-refine-sd_hash3d.yaml",
                                   "sd", "system.guidance.pretrained_model_name_or_path", None, 500,
                                   more_models=(("system.guidance_3d.pretrained_model_name_or_path", "zero123"),),
                                   more_caches=("system.guidance_3d.cache.",), coarse="magic123-coarse-sd"),
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
COARSE_STEPS = 300

CACHE_PREFIX = {True: "system.guidance.cache.", False: "cache."}
HIT_COST = {"noise": 0.05, "features": 0.35}
"""Cost of a hit relative to a miss (bench/guidance.py: noise hits 2-8 % of a miss, features 20-47 %)."""
STEPS_KEY = {True: "trainer.max_steps", False: "iters"}
PARTS = ["render", "vae_fwd", "vae_bwd", "unet", "guidance_rest", "backward_rest", "regularisers", "optimiser", "other"]


def _launcher_run(
    pipe: Pipeline, config: str, out: Path, steps: int, extra: list[str], timer: SectionTimer, as_user: bool
) -> dict:
    validation = [] if as_user else ["trainer.val_check_interval=0", "trainer.num_sanity_val_steps=0"]
    with timer:
        status = launch([
            "--config", str(REPO / pipe.front_end / "configs" / config), "--train", "--gpu", "0",
            f"exp_root_dir={out}", "use_timestamp=false", f"trainer.max_steps={steps}", *validation,
            "trainer.test_after_fit=false", "trainer.enable_progress_bar=false",
            f"checkpoint.every_n_train_steps={steps}", *extra,
        ])  # fmt: skip
    if status != 0:
        raise SystemExit(f"run failed: {config} {extra}")
    trial = sorted(p for p in out.glob("*/*") if p.is_dir())[-1]
    with open(trial / "csv_logs" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    saved = float(last.get("cache/cached_samples") or 0)
    run = float(last.get("cache/full_samples") or 0)
    from omegaconf import OmegaConf

    parsed = OmegaConf.load(trial / "configs" / "parsed.yaml")
    cache = parsed.system.guidance.cache
    logged = {k.removeprefix("cache/"): v for k, v in last.items() if k.startswith("cache/")}  # CSV strings
    return {"train_s": float(last["elapsed_s"]), "saved": saved, "unet_samples": saved + run,
            "graphs_captured": int(float(logged.get("graphs_captured") or 0)),
            **_request_counts({k: float(v or 0) for k, v in logged.items()}), **_policy_stats(logged),
            "mode": str(cache.mode) if cache.enabled else None,
            "strategy": str(cache.policy.strategy) if cache.enabled else None}


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
           "num_gaussians": report["num_gaussians"], "graphs_captured": report["cache"]["graphs_captured"],
           **_request_counts(report["cache"]), **_policy_stats(report["cache"]),
           "mode": cfg.cache.mode if cfg.cache.enabled else None,
           "strategy": cfg.cache.policy.strategy if cfg.cache.enabled else None}  # fmt: skip
    if stage2:
        from hash3d.systems.dreamgaussian.stage2 import run_stage2

        report2 = json.loads(run_stage2(load_options(str(REPO / pipe.front_end / "configs" / config), options), progress=False).report.read_text())
        row["stage2_s"] = report2["train_time_s"]
        row["stage2_saved"] = report2["cache"]["unet_calls_saved"]
    return row


def _request_counts(cache: dict) -> dict[str, int]:
    """Requests of a run: all, those answered whole from the cache, those split between hits and misses, and those
    the cost-aware policy ran as quiet probes or skipped (both the plain UNet call)."""
    skipped, probed = int(cache.get("skipped", 0)), int(cache.get("probed", 0))
    return {"requests": int(cache.get("tried", 0)) + probed + skipped, "skipped_requests": skipped,
            "probed_requests": probed,
            "answered_requests": int(cache.get("answered_requests", 0)),
            "split_requests": int(cache.get("split_requests", 0))}


def _policy_stats(cache: dict) -> dict[str, float]:
    """The cost-aware policy's state at the end of a run, where it reports one: whether its latest shape was trying,
    its mean measured step (ms) of each arm, and how often it switched (in the JSON rows, not the table)."""
    names = ("policy_trying", "policy_try_ms", "policy_skip_ms", "policy_switches")
    return {name: float(cache[name]) for name in names if cache.get(name) not in (None, "")}


def fresh_peak_memory() -> None:
    """Start a run's peak-memory count from what is really alive: an earlier run's models can outlive it in reference
    cycles (a diffusers hook registry and its module point at each other) until the cyclic collector runs, and their
    GPU memory would count in this run's peak."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def step_parts(totals: dict[str, float], train_s: float, steps: int) -> dict[str, float]:
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
        "regularisers": g("regularisers", 0.0),
        "optimiser": g("optimizer", 0.0) + g("densify", 0.0),
        "other": 1000 * train_s - top + g("data", 0.0) - g("regularisers", 0.0),
    }
    return {k: v / steps for k, v in parts.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="stable-zero123", choices=sorted(PIPELINES))
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--variants", nargs="*", default=[], help="cache variants besides the shipped config (noise@1, features@auto, ...)")
    parser.add_argument("--as-user", action="store_true", help="keep the config's validation renders (whole recipe)")
    parser.add_argument("--hit-cost", nargs="*", default=[f"{m}={c}" for m, c in HIT_COST.items()], metavar="MODE=C",
                        help="cost of a hit relative to a miss, per mode, for the expected speed-up")
    parser.add_argument("--stage2", action="store_true", help="dreamgaussian: run stage 2 after every stage 1")
    parser.add_argument("--baselines", action="store_true", help="also the no-guidance and fewer-steps runs")
    parser.add_argument("--with", dest="with_options", nargs="*", default=[], metavar="KEY=VALUE",
                        help="per option, after the pairs: both configs again with it (e.g. "
                        "system.guidance.vae_encoder=compiled), after a kept first run of the cache-off config "
                        "with it (what a first run pays: compiles, autotuning)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unrecorded warm-up runs (both configs)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run cache off and shipped this many times, as pairs in alternating order (off, "
                             "shipped, shipped, off, ...); each shipped row is also compared with the cache-off run "
                             "of its pair (the 'vs pair' column)")
    parser.add_argument("--models", default="/tmp/hash3d-bench-models")
    parser.add_argument("--out", help="write the rows as JSON here (default: bench/results-training-<pipeline>[-<steps>]-<device>.json)")
    parser.add_argument("--out-dir", help="write the rows under their default name into this folder instead of bench/")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="then profile N steps of one more run under torch.profiler: kernels per section")
    parser.add_argument("--profile-config", choices=("base", "hashed"), default="hashed",
                        help="the config of the profiled run (default: the shipped _hash3d config)")
    parser.add_argument("--profile-after", type=int, default=0, metavar="K",
                        help="with --profile: the profiled run trains K + N steps, the profiler records the last N")
    parser.add_argument("extra", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args(argv)
    if args.profile is not None and args.profile < 1:
        parser.error(f"--profile takes a number of steps >= 1, got {args.profile}")
    if args.profile_after < 0:
        parser.error(f"--profile-after takes a number of steps >= 0, got {args.profile_after}")
    if args.profile_after and args.profile is None:
        parser.error("--profile-after needs --profile N (the steps to profile after the K skipped ones)")
    return args


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/training.py needs a CUDA GPU")
    pipe = PIPELINES[args.pipeline]
    os.chdir(REPO / pipe.front_end)  # configs name their example inputs relative to the front-end folder

    def full_model(family: str) -> Path:
        folder = Path(args.models) / f"{family}-full"
        if not (folder / "model_index.json").exists():
            write_model(family, "full", folder, dtype=torch.float16, device="cuda")
        return folder

    model = full_model(pipe.family)
    model_options = [f"{key}={full_model(family)}" for key, family in pipe.more_models]
    steps = args.steps or pipe.steps
    work = Path("/tmp/hash3d-bench-runs") / args.pipeline
    prefix = CACHE_PREFIX[pipe.launcher]
    rows: list[dict] = []
    if pipe.coarse:
        coarse = PIPELINES[pipe.coarse]
        coarse_out = work / "coarse"
        shutil.rmtree(coarse_out, ignore_errors=True)
        _launcher_run(coarse, coarse.base, coarse_out, COARSE_STEPS, [f"{pipe.model_key}={model}", *model_options,
                      *args.extra], SectionTimer(), False)  # fmt: skip
        trial = sorted(p for p in coarse_out.glob("*/*") if p.is_dir())[-1]
        model_options.append(f"system.geometry_convert_from={trial / 'ckpts' / 'last.ckpt'}")

    def run(config: str, n: int, extra: list[str], label: str, stage2: bool) -> dict:
        # one folder per run (the warm-up's too): a run reads its own metrics.csv, never an earlier run's
        out = work / f"{len(rows):02d}-{label.replace(' ', '_').replace('=', '')}"
        if out.exists():
            shutil.rmtree(out)
        # a cache option of a variant goes to every cache of the pipeline (Magic123: guidance and guidance_3d)
        extra = [*extra, *[o.replace(prefix, c, 1) for o in extra if o.startswith(prefix) for c in pipe.more_caches]]
        options = [f"{pipe.model_key}={model}", *model_options, *pipe.options, *args.extra, *extra]
        fresh_peak_memory()
        timer = SectionTimer()
        if pipe.launcher:
            row = _launcher_run(pipe, config, out, n, options, timer, args.as_user)
        else:
            row = _dreamgaussian_run(pipe, config, out, n, options, timer, stage2)
        row.update(label=label, config=config, extra=extra, steps=n, it_per_s=n / row["train_s"],
                   peak_gb=torch.cuda.max_memory_allocated() / 2**30,
                   parts_ms=step_parts(timer.totals_ms(), row["train_s"], n))  # fmt: skip
        return row

    def go(config: str, n: int, extra: list[str], label: str) -> dict:
        row = run(config, n, extra, label, args.stage2)
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    variants = [parse_variant(v) for v in args.variants]
    hit_cost = dict(HIT_COST, **{k: float(v) for k, v in (item.split("=", 1) for item in args.hit_cost)})
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    no_guidance = pipe.no_guidance if args.baselines else None
    off = paired_runs(go, pipe.base, pipe.hashed, steps, args.repeats, not args.no_warmup, no_guidance, rows.clear)
    for variant in (v for v in variants if v.mode in ("config", *pipe.cache_modes)):
        go(pipe.hashed, steps, variant.overrides(prefix.rstrip(".")), f"cache {variant.name}")
    option_runs(go, pipe.base, pipe.hashed, steps, args.with_options, not args.no_warmup)
    cached = [r for r in rows if r.get("mode")]
    if cached and args.baselines:
        fewer = max(1, round(steps * min(r["train_s"] for r in cached) / off["train_s"]))
        go(pipe.base, fewer, [], f"cache off, {fewer} steps (time of the fastest cached run)")

    device = torch.cuda.get_device_name()
    title = f"{args.pipeline}: {steps} training steps{' (whole recipe, validation on)' if args.as_user else ''}, {device}"
    print(f"\n### {title}")
    print(format_table(rows, off, hit_cost))
    stem = f"{args.pipeline}{'' if args.steps is None else f'-{steps}'}{'-as-user' if args.as_user else ''}"
    name = f"{stem}-{device_slug(device)}.json"
    out = Path(args.out) if args.out else Path(args.out_dir or REPO / "bench") / f"results-training-{name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "pipeline": args.pipeline, "title": title, "command": sys.argv,
                               "rows": rows}, indent=2))
    print(f"rows: {out}")
    if args.profile:
        config = pipe.hashed if args.profile_config == "hashed" else pipe.base
        after, steps = args.profile_after, args.profile
        kp, row = profiled_run(lambda n: run(config, n, [], "profile", stage2=False), after, steps)
        events = kp.profiler.events()
        found = attribute(events, kp.sections, device_time=True, window=section_span(events, kp.sections))
        step_ms = profiled_step_ms(kp, row["train_s"])
        title = (f"{args.pipeline}: GPU kernels by section, {config}, {profiled_steps(after, steps)} under "
                 f"torch.profiler ({step_ms:.1f} ms a step; the profiler slows the run: not a timing row), {device}")
        print(f"\n### {title}")
        print(format_profile(found, steps, step_ms))
        path = out.parent / f"profile-{stem}{f'-after{after}' if after else ''}-{device_slug(device)}.json"
        path.write_text(json.dumps({"device": device, "pipeline": args.pipeline, "config": config, "title": title,
                                    "command": sys.argv, **profile_record(found, after, steps, step_ms)}, indent=2))
        print(f"kernel rows: {path}")


def profiled_run(run, after: int, steps: int) -> tuple[KernelProfile, dict]:
    """run(n) trains n steps and returns its row: here `after + steps` steps, of which the profile records the last
    `steps`."""
    with kernel_profile(skip_steps=after) as kp:
        row = run(after + steps)
    if kp.recorded_steps != steps:
        raise SystemExit(f"the profiled run recorded {kp.recorded_steps} steps after {after}, not {steps}: does its "
                         f"training loop call hash3d.profiling.step_done() once a step?")
    return kp, row


def profiled_steps(after: int, steps: int) -> str:
    """'10 steps' or '10 steps (301-310)'."""
    return f"{steps} steps" + (f" ({after + 1}-{after + steps})" if after else "")


def profiled_step_ms(kp: KernelProfile, train_s: float) -> float:
    """Wall time a recorded step took. After skipped steps: the profile's span over the recorded ones (the run's
    training time holds the skipped ones too). Without: the run's training time (it starts at the first step; the
    profile's span also holds the set-up before it, model loading included)."""
    if kp.skip_steps:
        return kp.recorded_ms() / kp.recorded_steps
    return 1000 * train_s / kp.recorded_steps


def profile_record(found: Attribution, after: int, steps: int, step_ms: float) -> dict:
    """The profile's JSON fields besides the run's description: per section and per kernel, totals a step."""
    return {
        "steps": steps, "profile_after": after, "profiled_step_ms": step_ms,
        "totals_ms_per_step": {k: v / steps for k, v in found.totals_ms.items()},
        "rows": [dict(asdict(r), calls_per_step=r.calls / steps, ms_per_step=r.ms / steps) for r in found.rows],
    }  # fmt: skip


def paired_runs(go, base: str, hashed: str, steps: int, repeats: int, warmup: bool, no_guidance: str | None,
                forget_warmup) -> dict:
    """The cache-off and shipped runs in `pair_order`, after a 30-step warm-up of each config (CUDA context, kernels
    compiled on first use, cuDNN autotuning for each config's own shapes: not the bill of whichever config happens to
    run first; `forget_warmup()` drops their rows); with `no_guidance`, the no-guidance baseline after the first
    cache-off run. go(config, steps, extra, label) runs one and returns its row; each shipped row gets its pair's
    cache-off time as `pair_train_s`. Returns the first cache-off row."""
    if warmup:
        for config in (base, hashed):
            go(config, min(steps, 30), [], "warm-up")
        forget_warmup()
    pairs: dict[int, dict[str, dict]] = {}
    for run, repeat in pair_order(repeats):
        label = ("cache off" if run == "off" else "shipped") + ("" if repeat == 1 else f" ({repeat})")
        pairs.setdefault(repeat, {})[run] = go(base if run == "off" else hashed, steps, [], label)
        if (run, repeat) == ("off", 1) and no_guidance:
            go(base, steps, [no_guidance], "no guidance (SDS weight 0)")
    for pair in pairs.values():
        pair["shipped"]["pair_train_s"] = pair["off"]["train_s"]
    return pairs[1]["off"]


def option_runs(go, base: str, hashed: str, steps: int, options: list[str], first_run: bool) -> None:
    """For each `KEY=VALUE` option (an execution setting, e.g. a compiled encoder), the cache-off and shipped configs
    with it, after (with `first_run`) a 30-step first run of the cache-off config with it whose row is kept: the
    one-off costs the option brings (compiles, autotuning) show there, the steady effect in the two rows after it.
    go(config, steps, extra, label) runs one."""
    for option in options:
        if "=" not in option:
            raise SystemExit(f"--with takes KEY=VALUE options, got {option!r}")
        if first_run:
            go(base, min(steps, 30), [option], f"first run + {option}")
        go(base, steps, [option], f"cache off + {option}")
        go(hashed, steps, [option], f"shipped + {option}")


def pair_order(repeats: int) -> list[tuple[str, int]]:
    """The order of the cache-off and shipped runs: (run, repeat) with run "off" or "shipped", each repeat a pair,
    and every other pair in the opposite order (off, shipped, shipped, off, off, shipped, ...): a drift over the
    process (memory, clocks) favours neither side over an even number of repeats."""
    order = []
    for repeat in range(1, repeats + 1):
        pair = [("off", repeat), ("shipped", repeat)]
        order += pair if repeat % 2 else pair[::-1]
    return order


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'."""
    for word in name.lower().replace("-", " ").split():
        if word[:1].isalpha() and any(c.isdigit() for c in word):
            return word
    return name.lower().replace(" ", "-")


def expected_speedup(off: dict, row: dict, hit_cost: dict[str, float], whole: bool = False) -> float | None:
    """1 / (1 - u h (1 - c)): u the cache-off step's UNet share, h the row's share of UNet samples from the cache, c
    the cost of a hit relative to a miss in the row's mode. With `whole`, h is the share of requests answered whole
    instead: what the cache saves when a split request's pass over its misses costs a full pass (a launch-bound
    UNet costs about the same for a few rows as for all)."""
    if not row.get("mode") or not row["unet_samples"] or (whole and not row.get("requests")):
        return None
    u = off["parts_ms"]["unet"] / (1000 * off["train_s"] / off["steps"])
    h = row["answered_requests"] / row["requests"] if whole else row["saved"] / row["unet_samples"]
    return 1.0 / (1.0 - u * h * (1.0 - hit_cost[row["mode"]]))


def format_table(rows: list[dict], off: dict, hit_cost: dict[str, float]) -> str:
    head = ["run", "cache", "steps", "train s", "it/s", "speed-up", "expected", "expected (whole requests)",
            "UNet samples from cache", "requests answered whole / split / quiet / skipped", "cache graphs", "peak GB", "vs pair"]
    head += [f"{p} ms" for p in PARTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    off_step = off["train_s"] / off["steps"]
    for r in rows:
        saved = f"{r['saved'] / r['unet_samples']:.0%}" if r["unet_samples"] else "-"
        expected = expected_speedup(off, r, hit_cost)
        whole = expected_speedup(off, r, hit_cost, whole=True)
        requests = request_counts(r) if r.get("mode") else "-"
        cache = f"{r['mode']} {r['strategy']}" if r.get("mode") else "off"
        cells = [r["label"], cache, str(r["steps"]), f"{r['train_s']:.1f}", f"{r['it_per_s']:.2f}",
                 f"{off_step / (r['train_s'] / r['steps']):.2f}x", "-" if expected is None else f"{expected:.2f}x",
                 "-" if whole is None else f"{whole:.2f}x", saved, requests, str(r.get("graphs_captured", 0)),
                 f"{r['peak_gb']:.1f}", f"{r['pair_train_s'] / r['train_s']:.2f}x" if "pair_train_s" in r else "-"]
        cells += [f"{r['parts_ms'][p]:.1f}" for p in PARTS]
        if "stage2_s" in r:
            cells[2] += f" (+{r['stage2_s']:.1f} stage 2)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def short(name: str, width: int = 80) -> str:
    """A kernel name cut to `width` characters, safe in a markdown cell."""
    name = name.replace("|", "\\|")
    return name if len(name) <= width else name[: width - 3] + "..."


def format_profile(found: Attribution, steps: int, step_ms: float, per_section: int = 8, overall: int = 30) -> str:
    """Markdown: per section its total and its top kernels, then the top kernels overall (calls and ms a step, % of
    the profiled step's wall time `step_ms`)."""
    head = "| section | kernel | launched by | calls/step | ms/step | % of step |\n|---|---|---|---|---|---|"

    def line(section: str, name: str, by: str, calls: float | None, ms: float) -> str:
        calls_cell = "-" if calls is None else f"{calls / steps:.1f}"
        return (f"| {section} | {name} | {by or '-'} | {calls_cell} | {ms / steps:.2f} | "
                f"{100 * ms / steps / step_ms:.1f}% |")

    def row(r: KernelRow) -> str:
        return line(r.section, short(r.name), short(r.launched_by, 40), r.calls, r.ms)

    lines = [head, line("all", "(all kernels)", "", None, sum(found.totals_ms.values()))]
    for section, total in found.totals_ms.items():
        lines.append(line(f"**{section}**", "(all)", "", None, total))
        lines += [row(r) for r in found.rows if r.section == section][:per_section]
    top = [row(r) for r in found.rows[:overall]]
    return "\n".join([*lines, "", f"Top {overall} kernels overall:", "", head, *top])


if __name__ == "__main__":
    main()
