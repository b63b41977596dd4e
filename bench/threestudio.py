"""GPU benchmark of threestudio-hash3d training runs: cache off vs on, on identical configs, full-size random weights.

    python bench/threestudio.py [--config stable-zero123] [--steps 100] [--out bench.json]

Each run is the front-end's launcher (`--train`, no final test render) on the written full-size model. Runs:
cache off; cache on in features and noise mode at several hash probabilities η; the same config with the
guidance switched off (lambda_sds = 0: rendering + reference losses + optimiser only), which gives the time outside
the guidance; and cache off with fewer steps taking about the time of the fastest cached run. Prints total time,
it/s, peak GPU memory, the hit rate, UNet calls saved and the share of the step spent in the guidance.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hash3d.launch import main as launch  # noqa: E402
from hash3d.testing.models import write_model  # noqa: E402

FRONT = REPO / "threestudio-hash3d"
FAMILY = {"stable-zero123": "zero123", "zero123": "zero123", "dreamfusion-sd": "sd"}


def run(config: str, model: str, out: Path, steps: int, extra: list[str]) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    status = launch([
        "--config", str(FRONT / "configs" / config), "--train", "--gpu", "0",
        f"system.guidance.pretrained_model_name_or_path={model}", f"exp_root_dir={out}", "use_timestamp=false",
        f"trainer.max_steps={steps}", "trainer.val_check_interval=0", "trainer.test_after_fit=false",
        "trainer.enable_progress_bar=false", f"checkpoint.every_n_train_steps={steps}", *extra,
    ])
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"run failed: {config} {extra}")
    trial = sorted(p for p in out.glob("*/*") if p.is_dir())[-1]
    with open(trial / "csv_logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    train_s = float(last["elapsed_s"])
    return {
        "config": config, "extra": extra, "steps": steps, "wall_s": wall, "train_s": train_s,
        "it_per_s": steps / train_s, "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
        "hit_rate": float(last.get("cache/hit_rate") or 0), "unet_calls_saved": float(last.get("cache/unet_calls_saved") or 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="stable-zero123", choices=sorted(FAMILY))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--etas", nargs="+", type=float, default=[0.1, 0.3, 0.5, 1.0])
    parser.add_argument("--modes", nargs="+", default=["features", "noise"])
    parser.add_argument("--models", default="/tmp/hash3d-bench-models")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("extra", nargs="*", help="key=value overrides for every run (e.g. system.guidance.cache.adaptive=false)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/threestudio.py needs a CUDA GPU")
    os.chdir(FRONT)  # the configs name their example inputs relative to the front-end folder
    family = FAMILY[args.config]
    model = Path(args.models) / f"{family}-full"
    if not (model / "model_index.json").exists():
        write_model(family, "full", model, dtype=torch.float16, device="cuda")
    work = Path("/tmp/hash3d-bench-runs")
    rows = []

    def go(config, steps, extra, label):
        out = work / f"{len(rows):02d}"
        row = run(config, str(model), out, steps, args.extra + extra)
        row["label"] = label
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    base, hashed = f"{args.config}.yaml", f"{args.config}_hash3d.yaml"
    off = go(base, args.steps, [], "cache off")
    go(base, args.steps, ["system.loss.lambda_sds=0"], "no guidance (render + losses + optimiser)")
    for mode in args.modes:
        for eta in args.etas:
            go(hashed, args.steps, [f"system.guidance.cache.mode={mode}", f"system.guidance.cache.policy.probability={eta}"],
               f"cache {mode} η={eta:g}")
    fastest = min(r["train_s"] for r in rows if r["label"].startswith("cache ") and r is not off)
    fewer = max(1, round(args.steps * fastest / off["train_s"]))
    go(base, fewer, [], f"cache off, {fewer} steps (same time as the fastest cached run)")

    device = torch.cuda.get_device_name()
    no_guidance = rows[1]["train_s"]
    print(f"\n### {args.config}: {args.steps} training steps, {device}")
    print("| run | steps | train s | it/s | speed-up vs off | guidance share | hit rate | UNet calls saved | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_step = r["train_s"] / r["steps"]
        share = max(0.0, 1 - no_guidance / args.steps / per_step) if "no guidance" not in r["label"] else 0.0
        speed = (off["train_s"] / off["steps"]) / per_step
        print(f"| {r['label']} | {r['steps']} | {r['train_s']:.1f} | {r['it_per_s']:.2f} | {speed:.2f}x | {share:.0%} | "
              f"{r['hit_rate']:.1%} | {r['unet_calls_saved']:.0f} | {r['peak_gb']:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
