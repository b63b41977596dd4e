"""The text quality harness: held-out captions -> a text-to-3D pipeline with each cache variant -> 16 views of the
result -> PSNR / SSIM, silhouette IoU and foreground colour error against the described object's ground truth,
time and cache statistics -> a table and a JSON file (the image harness's rows, table and JSON,
`hash3d.image_to_3d.harness`).

    from hash3d.text_to_3d import TextHarnessConfig, run_text_harness
    result = run_text_harness(TextHarnessConfig(out="outputs/quality-text", pipeline="dreamfusion-sd"))

Layout under `out`:
    cases/objectN/caption.txt, gt/000.png …          the held-out caption and ground truth (see `cases`)
    runs/<pipeline>/<model>/<variant>/objectN/       the front-end's outputs, pred/000.png … (the scored views)
    quality.json                                     settings, one row per (model, variant), per-object numbers

The "random weights" row runs the same pipeline, cache off, with `write_random_sd_twin` (the mini-sd layout,
tokenizer and VAE, with a fresh UNet and text encoder): the floor of a model that knows no caption.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hash3d.image_to_3d.harness import HarnessRunOptions, environment, run_plan, score_folder, write_views
from hash3d.image_to_3d.variants import Variant
from hash3d.mini.caption_score import shape_and_color
from hash3d.shipped import MINI_SD_MODEL

from .cases import TextCase, make_text_case, text_case_ids
from .pipelines import text_pipeline

__all__ = ["TextHarnessConfig", "run_text_harness"]

EVAL_SIZE = 64
"""The scored views' size: the model card's image size."""


@dataclass
class TextHarnessConfig(HarnessRunOptions):
    """The text-to-3D harness: `pipeline` a name of `TEXT_PIPELINES` (dreamgaussian, dreamfusion-sd,
    gaussiandreamer-sd, magic3d-coarse-sd, gaussian_splatting_shading); overrides e.g. iters=100 (DreamGaussian),
    trainer.max_steps=100 (threestudio-style)."""

    model: Path = MINI_SD_MODEL
    label: str = "mini-sd"
    simple: bool = True
    """Only one-part, one-colour captions ('a pink sphere'); False: every held-out object in order."""

    def __post_init__(self) -> None:
        super().__post_init__()
        text_pipeline(self.pipeline)


def _run_one(cfg: TextHarnessConfig, label: str, model: Path, variant: Variant, case: TextCase,
             gt_dir: Path) -> dict[str, Any]:
    pipeline = text_pipeline(cfg.pipeline)
    variant_dir = variant.name.replace("@", "_eta")
    folder = cfg.out / "runs" / cfg.pipeline / re.sub(r"[^\w.+-]+", "-", label) / variant_dir / case.name
    overrides = list(cfg.overrides)
    if pipeline.front_end == "dreamgaussian":
        overrides.insert(0, "save_video=false")
    run = pipeline.run(variant, case.caption, folder, model=model, overrides=overrides,
                       test_views=(case.eval_elevation, len(case.azimuths), EVAL_SIZE), progress=cfg.progress)
    row: dict[str, Any] = {"object": case.name, "object_id": case.object_id, "caption": case.caption,
                           "wall_s": round(run.wall_s, 2)}
    row.update(run.stats)
    views = run.views(case.eval_elevation, case.azimuths, EVAL_SIZE)
    row["views"] = score_folder(gt_dir, write_views(views, folder / "pred"))
    row["views"].update(shape_and_color(views, case.gt))
    return row


def run_text_harness(cfg: TextHarnessConfig) -> dict[str, Any]:
    """Run every (model, variant) on every held-out caption; returns (and writes) the results."""
    from hash3d.mini.sd_model import write_random_sd_twin

    cfg.out.mkdir(parents=True, exist_ok=True)
    cases = []
    for object_id in text_case_ids(cfg.objects, cfg.id_offset, cfg.simple):
        case = make_text_case(object_id, n_views=cfg.n_views)
        cases.append((case, case.write(cfg.out / "cases" / case.name)))
    plan = cfg.model_plan(cfg.out / "random-mini-sd", write_random_sd_twin)
    first = cases[0][0]
    result: dict[str, Any] = {
        "settings": {
            "task": "text",
            "pipeline": cfg.pipeline,
            "config": str(text_pipeline(cfg.pipeline).config(Variant(False)).name),
            "model": str(cfg.model),
            "object_ids": [c.object_id for c, _ in cases],
            "captions": [c.caption for c, _ in cases],
            "eval_views": {"elevation": first.eval_elevation, "azimuths": first.azimuths, "size": EVAL_SIZE},
            "overrides": list(cfg.overrides),
            **environment(),
        },
        "rows": [],
    }

    def run_one(label: str, model: Path, variant: Variant, item) -> dict[str, Any]:
        return _run_one(cfg, label, model, variant, *item)

    return run_plan(plan, [(c.name, (c, g)) for c, g in cases], run_one, result, cfg.out / cfg.json_name)


