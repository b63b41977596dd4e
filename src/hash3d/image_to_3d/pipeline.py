"""The image-to-3D pipelines that the demo and the quality harness run, called in-process through the front-ends'
own entry functions (no code of theirs is repeated here):

- `dreamgaussian`: dreamgaussian-hash3d's `run_stage1` (main.py) and `run_stage2` (main2.py) with
  `configs/image_mini.yaml` / `image_mini_hash3d.yaml`;
- `threestudio`: threestudio-hash3d's launcher (`hash3d.launch.run`, i.e. launch.py --train, then --export) with
  `configs/stable-zero123-mini.yaml` / `stable-zero123-mini_hash3d.yaml`;
- `magic123-coarse-sd`: the same launcher with `configs/magic123-coarse-sd-mini.yaml` / `..._hash3d.yaml`: the
  Zero123 model (`model`) as its 3D prior, a Stable Diffusion model (`sd_model`, the shipped Hash3D-mini-sd by
  default) prompted with the object's caption as its 2D prior, each guidance with its own cache.

The same two runners take another config and a prompt: `hash3d.text_to_3d` runs the text pipelines through them.

Cameras: a view is named in threestudio's terms, elevation above the horizon and azimuth relative to the input
view. DreamGaussian's own options use the opposite elevation sign, so its runs get elevation = −e; its azimuth 0 is
the input view. The threestudio runs put the input view at azimuth 0.

The demo runs DreamGaussian: on a CPU it reaches a better result in a fraction of threestudio's time (the
measurement is in `hash3d.demo`'s docstring and docs/benchmarks.md).
"""

from __future__ import annotations

import csv
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config.errors import ConfigError
from ..shipped import DG_CONFIGS, MINI_MODEL, MINI_SD_MODEL, TS_CONFIGS, require
from .variants import Variant

__all__ = [
    "PIPELINES",
    "SD_PIPELINES",
    "CONFIGS",
    "PipelineRun",
    "dreamgaussian_options",
    "guidance_blocks",
    "run_pipeline",
    "run_dreamgaussian",
    "run_threestudio",
]

PIPELINES = ("dreamgaussian", "threestudio", "magic123-coarse-sd")
SD_PIPELINES = ("magic123-coarse-sd",)
"""The image pipelines that also run a Stable Diffusion model, prompted with a caption of the input's object."""
CONFIGS = {
    "dreamgaussian": (DG_CONFIGS / "image_mini.yaml", DG_CONFIGS / "image_mini_hash3d.yaml"),
    "threestudio": (TS_CONFIGS / "stable-zero123-mini.yaml", TS_CONFIGS / "stable-zero123-mini_hash3d.yaml"),
    "magic123-coarse-sd": (TS_CONFIGS / "magic123-coarse-sd-mini.yaml", TS_CONFIGS / "magic123-coarse-sd-mini_hash3d.yaml"),
}
"""(cache off, cache on) config of each pipeline; the two differ only in their cache blocks."""


def config_path(pipeline: str, variant: Variant) -> Path:
    if pipeline not in CONFIGS:
        raise ConfigError(f"unknown pipeline {pipeline!r}; choose from {', '.join(PIPELINES)}")
    return require(CONFIGS[pipeline][1 if variant.enabled else 0], f"the {pipeline} mini config")


def _model_arg(model: str | Path) -> str:
    return str(Path(model).resolve()) if Path(model).exists() else str(model)


@dataclass
class PipelineRun:
    """One run: what it wrote, its UNet / cache / time numbers, and how to render views of its result."""

    pipeline: str
    variant: Variant
    folder: Path
    stats: dict[str, Any]
    video: Path | None
    mesh: list[Path]
    reports: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    handle: Any = None  # dreamgaussian: (options, Stage1Result); threestudio: (trial folder, test-view spec)

    @property
    def mesh_file(self) -> Path | None:
        return next((p for p in self.mesh if p.suffix in (".obj", ".glb")), None)

    # ------------------------------------------------------------------ views of the result
    @torch.no_grad()
    def views(self, elevation: float, delta_azimuths: list[float], size: int) -> torch.Tensor:
        """The 3D result seen from threestudio elevation `elevation`, azimuths input + Δ -> [V, 3, S, S] on white."""
        if self.pipeline == "dreamgaussian":
            from hash3d.render.gaussian_raster import resolve_backend
            from hash3d.systems.dreamgaussian.stage1 import render_gaussians

            cfg, stage1 = self.handle
            model = stage1.model
            device = model.means.device
            views = _dg_views(cfg, elevation, delta_azimuths, size, device)
            backend = resolve_backend(cfg.gaussian_backend, device)
            rgb, _, _ = render_gaussians(model, views, torch.ones(3, device=device), backend)
            return rgb.clamp(0, 1).cpu()
        return _threestudio_test_views(self, elevation, delta_azimuths, size)

    @torch.no_grad()
    def mesh_views(self, elevation: float, delta_azimuths: list[float], size: int) -> torch.Tensor | None:
        """The written mesh (DreamGaussian's, read back as its stage 2 reads it) from the same views, else None."""
        if self.pipeline != "dreamgaussian" or self.mesh_file is None:
            return None
        from hash3d.render.mesh_raster import resolve_mesh_backend
        from hash3d.systems.dreamgaussian.stage2 import load_mesh, render_mesh, textured_mesh

        cfg, _ = self.handle
        mesh = textured_mesh(load_mesh(self.mesh_file), cfg.texture_size)
        views = _dg_views(cfg, elevation, delta_azimuths, size, "cpu")
        image, _, _ = render_mesh(mesh.vertices, mesh, mesh.texture, views, resolve_mesh_backend(cfg.mesh_backend, "cpu"))
        return image.clamp(0, 1).cpu()


# ---------------------------------------------------------------------------------------------- DreamGaussian


def dreamgaussian_options(
    variant: Variant,
    *,
    input_path: str | Path | None,
    outdir: str | Path,
    input_elevation: float | None = None,
    save_path: str = "object",
    model: str | Path = MINI_MODEL,
    overrides: list[str] | tuple[str, ...] = (),
    config: Path | None = None,
    prompt: str | None = None,
):
    """The DreamGaussian options of a run: `config` (default: the image mini config, cache off or on) with the
    variant's cache settings, absolute paths for the model, input and outputs, the input elevation (threestudio sign),
    the prompt, then `overrides`."""
    from hash3d.systems.dreamgaussian import load_options

    options = [
        f"outdir={Path(outdir).resolve()}",
        f"save_path={save_path}",
        f"guidance.pretrained_model_name_or_path={_model_arg(model)}",
        *variant.overrides("cache"),
    ]
    if input_path is not None:
        options.insert(0, f"input={Path(input_path).resolve()}")
    if input_elevation is not None:
        options.append(f"elevation={-float(input_elevation):g}")
    if prompt is not None:
        options.append(f"prompt={json.dumps(prompt)}")  # quoted: a caption may hold commas
    return load_options(config or config_path("dreamgaussian", variant), [*options, *overrides])


def _dg_views(cfg, elevation: float, delta_azimuths: list[float], size: int, device):
    from hash3d.systems.dreamgaussian.common import make_views

    n = len(delta_azimuths)
    return make_views([-elevation] * n, list(delta_azimuths), cfg.radius, cfg.fovy, size, device)


def _sum_stats(reports: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    asked = saved = queries = hits = steps = 0
    train = 0.0
    for report in reports:
        n = int(report.get("steps", 0))
        steps += n
        asked += n * batch_size
        cache = report.get("cache") or {}
        saved += int(cache.get("unet_calls_saved", 0))
        queries += int(cache.get("queries", 0))
        hits += int(cache.get("hits", 0))
        train += float(report.get("train_time_s", 0.0))
    return {
        "steps": steps,
        "train_time_s": round(train, 3),
        "it_per_s": round(steps / train, 3) if train > 0 else None,
        "unet_calls": asked,
        "unet_calls_run": asked - saved,
        "unet_calls_saved": saved,
        "lookups": queries,
        "hits": hits,
        "hit_rate": round(hits / queries, 4) if queries else 0.0,
    }


def run_dreamgaussian(
    variant: Variant,
    input_path: str | Path | None,
    outdir: str | Path,
    *,
    input_elevation: float | None = None,
    model: str | Path = MINI_MODEL,
    overrides: list[str] | tuple[str, ...] = (),
    refine: bool = True,
    progress: bool = True,
    config: Path | None = None,
    prompt: str | None = None,
) -> PipelineRun:
    """Stage 1 (Gaussians, coarse mesh, video) and, when `refine` and iters_refine > 0, stage 2 (texture). `config`
    and `prompt` as in `dreamgaussian_options` (text-to-3D: a text config, a prompt and no input)."""
    from hash3d.systems.dreamgaussian.stage1 import run_stage1
    from hash3d.systems.dreamgaussian.stage2 import run_stage2

    cfg = dreamgaussian_options(variant, input_path=input_path, outdir=outdir, input_elevation=input_elevation,
                                model=model, overrides=overrides, config=config, prompt=prompt)
    start = time.perf_counter()
    stage1 = run_stage1(cfg, progress=progress)
    reports = {"stage1": json.loads(Path(stage1.report).read_text())}
    video, mesh = stage1.video, [Path(p) for p in stage1.mesh]
    if refine and cfg.iters_refine > 0:
        stage2 = run_stage2(cfg, progress=progress)
        reports["stage2"] = json.loads(Path(stage2.report).read_text())
        video, mesh = stage2.video or video, [Path(p) for p in stage2.files]
    stats = _sum_stats(list(reports.values()), cfg.batch_size)
    stats["num_gaussians"] = int(reports["stage1"].get("num_gaussians", 0))
    return PipelineRun("dreamgaussian", variant, Path(outdir), stats, Path(video) if video else None, mesh, reports,
                       time.perf_counter() - start, (cfg, stage1))


# ---------------------------------------------------------------------------------------------- threestudio


def _read_metrics(trial: Path) -> list[dict[str, str]]:
    with open(trial / "csv_logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def run_threestudio(
    variant: Variant,
    input_path: str | Path | None,
    outdir: str | Path,
    *,
    input_elevation: float | None = None,
    model: str | Path = MINI_MODEL,
    overrides: list[str] | tuple[str, ...] = (),
    test_views: tuple[float, int, int] | None = None,
    export: bool = True,
    progress: bool = True,
    config: Path | None = None,
    prompt: str | None = None,
    eval_block: str = "data.random_camera",
    model_3d: str | Path | None = None,
) -> PipelineRun:
    """launch.py --train (then --export) with `config` (default: the image mini config, cache off or on). `test_views`
    = (elevation, n, size) makes the test orbit that training ends with render n views at that elevation (azimuths
    0, 360/n, …) at size², so that `views()` can score them; otherwise the config's own orbit is rendered (the
    video). Text-to-3D: a text config, `prompt` and no input; `eval_block` is where the config's random-camera
    options sit (`data` in the random-camera datamodule of the text configs). `model` is `system.guidance`'s model;
    a config with a second guidance (Magic123's `system.guidance_3d`) gets `model_3d` there, and the variant's cache
    settings go to every guidance's cache."""
    from hash3d.config import load_config
    from hash3d.launch import run as launch

    config = config or config_path("threestudio", variant)
    blocks = guidance_blocks(load_config(config, [])[0])
    options = [
        f"exp_root_dir={Path(outdir).resolve()}",
        "use_timestamp=false",
        f"system.guidance.pretrained_model_name_or_path={_model_arg(model)}",
        f"trainer.enable_progress_bar={str(progress).lower()}",
    ]
    if model_3d is not None:
        if "system.guidance_3d" not in blocks:
            raise ConfigError(f"{config.name} has one guidance (no system.guidance_3d): it takes no second model")
        options.append(f"system.guidance_3d.pretrained_model_name_or_path={_model_arg(model_3d)}")
    for block in blocks:
        options += variant.overrides(f"{block}.cache")
    if input_path is not None:
        options.insert(0, f"data.image_path={Path(input_path).resolve()}")
    if input_elevation is not None:
        options.append(f"data.default_elevation_deg={float(input_elevation):g}")
    if prompt is not None:
        options.append(f"system.prompt_processor.prompt={json.dumps(prompt)}")  # quoted: a caption may hold commas
    if test_views is not None:
        elevation, n, size = test_views
        # threestudio's test orbit has n + 1 frames from 0 to 360° inclusive: the first n are the views wanted
        options += [f"{eval_block}.eval_elevation_deg={elevation:g}", f"{eval_block}.n_test_views={n + 1}",
                    f"{eval_block}.eval_height={size}", f"{eval_block}.eval_width={size}"]
    options += list(overrides)
    cfg, _ = load_config(config, options)
    start = time.perf_counter()
    trial = Path(launch(["--config", str(config), "--train", "--gpu", "0", *options], prog="launch.py"))
    steps = int(cfg.trainer.max_steps)
    last = _read_metrics(trial)[-1]
    mesh: list[Path] = []
    if export:
        launch(["--config", str(trial / "configs" / "parsed.yaml"), "--export", "--gpu", "0",
                f"resume={trial / 'ckpts' / 'last.ckpt'}"], prog="launch.py")
        mesh = sorted((trial / "save" / f"it{steps}-export").glob("*"))
    batch = functools.reduce(getattr, eval_block.split("."), cfg).batch_size
    batch = int(batch[0] if isinstance(batch, (list, tuple)) else batch)

    def num(key: str) -> float:
        value = last.get(key)
        return float(value) if value not in (None, "") else 0.0

    train = num("elapsed_s")
    saved, queries, hits = int(num("cache/unet_calls_saved")), int(num("cache/queries")), int(num("cache/hits"))
    stats = {
        "steps": steps,
        "train_time_s": round(train, 3),
        "it_per_s": round(steps / train, 3) if train > 0 else None,
        "unet_calls": steps * batch * len(blocks),
        "unet_calls_run": steps * batch * len(blocks) - saved,
        "unet_calls_saved": saved,
        "lookups": queries,
        "hits": hits,
        "hit_rate": round(hits / queries, 4) if queries else 0.0,
    }
    video = trial / "save" / f"it{steps}-test.mp4"
    return PipelineRun("threestudio", variant, trial, stats, video if video.is_file() else None, mesh,
                       {"metrics": last}, time.perf_counter() - start, (trial, test_views, steps))


def guidance_blocks(cfg) -> list[str]:
    """Dotted paths of a loaded launcher config's guidance blocks: `system.guidance`, and `system.guidance_3d` where
    the system runs a second one (Magic123)."""
    return ["system.guidance"] + (["system.guidance_3d"] if getattr(cfg.system, "guidance_3d", None) is not None else [])


def _threestudio_test_views(run: PipelineRun, elevation: float, delta_azimuths: list[float], size: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    trial, spec, steps = run.handle
    n = len(delta_azimuths)
    expected = [360.0 * k / n for k in range(n)]
    if spec is None or spec[0] != elevation or spec[1] != n or spec[2] != size or list(delta_azimuths) != expected:
        raise ConfigError("threestudio runs can only be scored at the test views they rendered: run with "
                         f"test_views=({elevation}, {n}, {size}) and evenly spaced azimuths")
    frames = []
    for i in range(n):
        image = np.asarray(Image.open(trial / "save" / f"it{steps}-test" / f"{i}.png").convert("RGB"))
        frames.append(torch.from_numpy(image[:, :size].copy()).permute(2, 0, 1).float() / 255.0)  # rgb | normal | opacity
    return torch.stack(frames)


def run_pipeline(pipeline: str, variant: Variant, input_path, outdir, *, sd_model: str | Path = MINI_SD_MODEL,
                 **kwargs) -> PipelineRun:
    """Run image pipeline `pipeline`; `model` (in kwargs) is its Zero123-family model; `sd_model` and `prompt` are
    what the SD_PIPELINES also take (Magic123: its Stable Diffusion and the input object's caption)."""
    if pipeline == "dreamgaussian":
        return run_dreamgaussian(variant, input_path, outdir, **kwargs)
    if pipeline == "threestudio":
        return run_threestudio(variant, input_path, outdir, **kwargs)
    if pipeline == "magic123-coarse-sd":
        if not kwargs.get("prompt"):
            raise ConfigError("magic123-coarse-sd needs a prompt: the caption of the input's object")
        return run_threestudio(variant, input_path, outdir, model=sd_model, model_3d=kwargs.pop("model", MINI_MODEL),
                               config=config_path(pipeline, variant), **kwargs)
    raise ConfigError(f"unknown pipeline {pipeline!r}; choose from {', '.join(PIPELINES)}")
