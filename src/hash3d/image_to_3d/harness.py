"""The quality harness: held-out objects -> the image-to-3D pipeline with each cache variant -> 16 novel views ->
PSNR / SSIM (/ LPIPS), silhouette IoU and foreground colour error against ground truth, time and cache statistics ->
a table and a JSON file.

    from hash3d.image_to_3d import HarnessConfig, run_harness
    result = run_harness(HarnessConfig(out="outputs/quality", objects=2, variants=parse_variants("off,features@0.5")))

Layout under `out`:
    cases/objectN/input_rgba.png, gt/000.png …      the held-out input view and ground truth (see `cases`)
    runs/<pipeline>/<model>/<variant>/objectN/       the front-end's outputs (ply, mesh, reports / trial folder)
        pred/000.png …, pred_mesh/000.png …          the 16 views rendered from the result (and its mesh)
    quality.json                                     settings, one row per (model, variant), per-object numbers

Scores come from `hash3d.eval.evaluate_nvs` (what `eval_nvs.py` runs) on the PNG folders, composited on white,
as the paper's image-to-3D table. LPIPS is off by default: the `lpips` package imports torchvision, which must not
be imported next to the CPU torch build; pass `lpips_net="vgg"` where it works.

The "random weights" row runs the same pipeline, cache off, with `write_random_mini` (the mini architecture with
fresh weights): the floor that a model which knows nothing reaches through the reference-view losses alone. Pipelines
that also run Stable Diffusion (magic123-coarse-sd, prompted with the object's caption) get `write_random_sd_twin`'s
twin of that model in the same row: both priors know nothing there.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cases import DEFAULT_ID_OFFSET, N_VIEWS, Case, case_ids, make_case, save_rgb
from ..config.errors import ConfigError
from ..mini.caption_score import shape_and_color
from ..shipped import MINI_MODEL, MINI_SD_MODEL
from .pipeline import PIPELINES, SD_PIPELINES, run_pipeline
from .random_model import write_random_mini
from .variants import Variant, default_variants

__all__ = ["HarnessConfig", "HarnessRunOptions", "aggregate", "environment", "format_table", "run_harness", "run_plan", "score_folder", "write_views"]

logger = logging.getLogger(__name__)


@dataclass
class HarnessRunOptions:
    """What every quality harness (image to 3D here, text to 3D in `hash3d.text_to_3d`) takes."""

    out: Path
    pipeline: str = "dreamgaussian"
    objects: int = 1
    """How many held-out objects (ids HELD_OUT_ID_BASE + id_offset + i)."""
    id_offset: int = DEFAULT_ID_OFFSET
    variants: list[Variant] = field(default_factory=default_variants)
    random_baseline: bool = True
    """Also run the random-weight twin of the model, cache off."""
    trained: bool = True
    """Run the trained model's variants (False: only the random baseline)."""
    model: Path = MINI_MODEL
    label: str = "mini"
    """Name of the trained model's rows (e.g. to tell apart runs with different overrides in a merged table)."""
    overrides: list[str] = field(default_factory=list)
    """Config overrides for every run (DreamGaussian: iters=150 num_pts=500; threestudio: trainer.max_steps=100)."""
    progress: bool = True
    json_name: str = "quality.json"
    n_views: int = N_VIEWS
    """Scored views per object (elevation 30°, evenly spaced azimuths)."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.objects < 1:
            raise ConfigError(f"objects must be >= 1; got {self.objects}")

    def model_plan(self, random_dir: Path, write_random: Callable[[Path, Path], None]) -> list[tuple[str, Path, Variant]]:
        """(row label, model folder, variant) of every run: the trained model's variants, then (random_baseline) its
        random-weight twin with the cache off, written into `random_dir` by `write_random(random_dir, model)` once."""
        plan = [(self.label, Path(self.model), v) for v in self.variants] if self.trained else []
        if self.random_baseline:
            if not (random_dir / "model_index.json").is_file():
                write_random(random_dir, self.model)
            plan.append(("random weights", random_dir, Variant(False)))
        return plan


@dataclass
class HarnessConfig(HarnessRunOptions):
    """The image-to-3D harness: pipeline dreamgaussian (configs/image_mini*.yaml), threestudio
    (configs/stable-zero123-mini*.yaml) or magic123-coarse-sd (configs/magic123-coarse-sd-mini*.yaml; `model` is its
    Zero123, `sd_model` its Stable Diffusion)."""

    sd_model: Path = MINI_SD_MODEL
    """The Stable Diffusion model of the SD_PIPELINES (Magic123's 2D prior), prompted with each object's caption."""

    refine: bool = False
    """DreamGaussian: also run stage 2 (texture refinement); the mesh scores are then the refined mesh's."""
    score_mesh: bool = True
    """DreamGaussian: also render and score the mesh (stage 1's, or stage 2's with `refine`)."""
    lpips_net: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"unknown pipeline {self.pipeline!r}; choose from {', '.join(PIPELINES)}")


def score_folder(gt_dir: Path, pred_dir: Path, lpips_net: str | None = None) -> dict[str, float]:
    """Mean PSNR / SSIM (/ LPIPS) over the views of two folders, through `hash3d.eval.evaluate_nvs`."""
    from hash3d.eval import NVSConfig, evaluate_nvs

    table = evaluate_nvs(NVSConfig(gt_dir=gt_dir, pred_dir=pred_dir, lpips_net=lpips_net, device="cpu"))
    return {name: float(stat.mean) for name, stat in table.summary().items()}


def write_views(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, view in enumerate(images):
        save_rgb(view, folder / f"{i:03d}.png")
    return folder


def _run_one(cfg: HarnessConfig, label: str, model: Path, sd_model: Path | None, variant: Variant, case: Case,
             input_path: Path, gt_dir: Path) -> dict[str, Any]:
    variant_dir = variant.name.replace("@", "_eta")
    folder = cfg.out / "runs" / cfg.pipeline / re.sub(r"[^\w.+-]+", "-", label) / variant_dir / case.name
    size = case.gt.shape[-1]
    n = len(case.delta_azimuths)
    if cfg.pipeline == "dreamgaussian":
        extra = dict(overrides=["save_video=false", *cfg.overrides], refine=cfg.refine)
    else:
        extra = dict(overrides=list(cfg.overrides), test_views=(case.eval_elevation, n, size), export=False)
    if sd_model is not None:
        extra.update(sd_model=sd_model, prompt=case.caption)
    run = run_pipeline(cfg.pipeline, variant, input_path, folder, input_elevation=case.input_elevation, model=model,
                       progress=cfg.progress, **extra)
    row: dict[str, Any] = {"object": case.name, "object_id": case.object_id, "wall_s": round(run.wall_s, 2)}
    row.update(run.stats)
    views = run.views(case.eval_elevation, case.delta_azimuths, size)
    row["views"] = score_folder(gt_dir, write_views(views, folder / "pred"), cfg.lpips_net)
    row["views"].update(shape_and_color(views, case.gt))
    if cfg.score_mesh:
        mesh = run.mesh_views(case.eval_elevation, case.delta_azimuths, size)
        if mesh is not None:
            row["mesh"] = score_folder(gt_dir, write_views(mesh, folder / "pred_mesh"), cfg.lpips_net)
    return row


def aggregate(label: str, variant: Variant, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: the means over the objects' rows of one (model, variant)."""
    def mean(get) -> float | None:
        values = [get(r) for r in rows]
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 4) if values else None

    lookups = sum(r["lookups"] for r in rows)
    calls = sum(r["unet_calls"] for r in rows)
    train = sum(r["train_time_s"] for r in rows)
    steps = sum(r["steps"] for r in rows)
    out = {
        "model": label,
        "variant": variant.name,
        "cache": variant.overrides(),
        "objects": len(rows),
        "psnr": mean(lambda r: r["views"]["psnr"]),
        "ssim": mean(lambda r: r["views"]["ssim"]),
        "lpips": mean(lambda r: r["views"].get("lpips")),
        "iou": mean(lambda r: r["views"].get("iou")),
        "color_error": mean(lambda r: r["views"].get("color_error")),
        "mesh_psnr": mean(lambda r: r.get("mesh", {}).get("psnr")),
        "mesh_ssim": mean(lambda r: r.get("mesh", {}).get("ssim")),
        "train_time_s": round(train / len(rows), 2),
        "wall_s": round(sum(r["wall_s"] for r in rows) / len(rows), 2),
        "it_per_s": round(steps / train, 3) if train > 0 else None,
        "unet_calls": calls,
        "unet_calls_saved": sum(r["unet_calls_saved"] for r in rows),
        "hit_rate": round(sum(r["hits"] for r in rows) / lookups, 4) if lookups else 0.0,
        "per_object": rows,
    }
    out["saved_fraction"] = round(out["unet_calls_saved"] / calls, 4) if calls else 0.0
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one line per (model, variant), PSNR/SSIM of the 3D result's views (and of its mesh), time,
    it/s, UNet calls and how many the cache saved, hit rate."""
    # ΔPSNR: against cache off of the same model; the random-weight row against the trained model's cache off
    base = {}
    for r in rows:
        if r["variant"] == "off":
            base.setdefault(r["model"], r)
    trained_off = next((r for r in rows if r["variant"] == "off" and r["model"] != "random weights"), None)
    if trained_off is not None:
        base["random weights"] = trained_off
    has_lpips = any(r.get("lpips") is not None for r in rows)
    has_mesh = any(r.get("mesh_psnr") is not None for r in rows)
    has_shape = any(r.get("iou") is not None for r in rows)
    head = ["model", "cache", "PSNR", "ΔPSNR", "SSIM"] + (["LPIPS"] if has_lpips else [])
    head += ["IoU", "colour err"] if has_shape else []
    head += (["mesh PSNR", "mesh SSIM"] if has_mesh else []) + ["train s", "it/s", "UNet calls", "saved", "hit rate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(x, d):
        return "–" if x is None else f"{x:.{d}f}"

    for r in rows:
        ref = base.get(r["model"])
        delta = None if ref is None or r["psnr"] is None or ref["psnr"] is None else r["psnr"] - ref["psnr"]
        cells = [r["model"], r["variant"], f(r["psnr"], 2), "–" if delta is None else f"{delta:+.2f}", f(r["ssim"], 4)]
        if has_lpips:
            cells.append(f(r.get("lpips"), 4))
        if has_shape:
            cells += [f(r.get("iou"), 3), f(r.get("color_error"), 3)]
        if has_mesh:
            cells += [f(r.get("mesh_psnr"), 2), f(r.get("mesh_ssim"), 4)]
        cells += [f(r["train_time_s"], 1), f(r["it_per_s"], 2), str(r["unet_calls"]),
                  f"{r['unet_calls_saved']} ({100 * r['saved_fraction']:.1f}%)", f"{100 * r['hit_rate']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_harness(cfg: HarnessConfig) -> dict[str, Any]:
    """Run every (model, variant) on every held-out object; returns (and writes) the results."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    cases = []
    for object_id in case_ids(cfg.objects, cfg.id_offset):
        case = make_case(object_id, n_views=cfg.n_views)
        input_path, gt_dir = case.write(cfg.out / "cases" / case.name)
        cases.append((case, input_path, gt_dir))
    random_dir = cfg.out / "random-mini"
    plan = cfg.model_plan(random_dir, write_random_mini)
    sd_models = _sd_models(cfg, random_dir) if cfg.pipeline in SD_PIPELINES else {}
    result: dict[str, Any] = {
        "settings": {
            "pipeline": cfg.pipeline + (" (stage 1 + 2)" if cfg.refine and cfg.pipeline == "dreamgaussian" else ""),
            "model": str(cfg.model),
            **({"sd_model": str(cfg.sd_model), "captions": [c.caption for c, _, _ in cases]} if sd_models else {}),
            "object_ids": [c.object_id for c, _, _ in cases],
            "input_view": {"elevation": cases[0][0].input_elevation, "azimuth": cases[0][0].input_azimuth},
            "eval_views": {"elevation": cases[0][0].eval_elevation, "delta_azimuths": cases[0][0].delta_azimuths},
            "overrides": list(cfg.overrides),
            "lpips": cfg.lpips_net,
            **environment(),
        },
        "rows": [],
    }

    def run_one(label: str, model: Path, variant: Variant, item) -> dict[str, Any]:
        return _run_one(cfg, label, model, sd_models.get(model), variant, *item)

    return run_plan(plan, [(c.name, (c, i, g)) for c, i, g in cases], run_one, result, cfg.out / cfg.json_name)


def _sd_models(cfg: HarnessConfig, random_dir: Path) -> dict[Path, Path]:
    """The Stable Diffusion model that goes with each Zero123 model of the plan: `cfg.sd_model` with `cfg.model`, and
    with the random-weight Zero123 twin in `random_dir` the random-weight twin of `cfg.sd_model` (written once, beside
    it), so that the floor's row knows nothing in either prior."""
    from hash3d.mini.sd_model import write_random_sd_twin

    out = {Path(cfg.model): Path(cfg.sd_model)}
    if cfg.random_baseline:
        random_sd = random_dir.with_name(random_dir.name + "-sd")
        if not (random_sd / "model_index.json").is_file():
            write_random_sd_twin(random_sd, cfg.sd_model)
        out[random_dir] = random_sd
    return out


def environment() -> dict[str, Any]:
    """Where the numbers come from: torch version, threads, processor."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}


def run_plan(plan: list[tuple[str, Path, Variant]], cases: list[tuple[str, Any]], run_one, result: dict[str, Any],
             path: Path) -> dict[str, Any]:
    """For every (label, model, variant) of `plan` and every (name, case) of `cases`, `run_one(label, model, variant,
    case)` -> that object's row; each (label, variant) is aggregated into a table row of `result["rows"]`. `result` is
    written to `path` after every variant (partial results survive) and once more with the table."""
    for label, model, variant in plan:
        rows = []
        for name, case in cases:
            logger.info("quality: %s, cache %s, %s", label, variant.name, name)
            rows.append(run_one(label, model, variant, case))
        result["rows"].append(aggregate(label, variant, rows))
        path.write_text(json.dumps(result, indent=2) + "\n")
    result["table"] = format_table(result["rows"])
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result
