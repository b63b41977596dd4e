"""dreamgaussian-hash3d (image-to-3D): stage 1 of `main.py` (`run_stage1`) per image, then the evaluation views
rendered from the trained Gaussians.

Training: `load_options(config, overrides + [input=<image>, save_path=<item id>, outdir=<item>/run, device=…])`
and `run_stage1` in this process, as `python main.py --config … input=… save_path=…` does; its outputs are
`<item>/run/<item id>_model.ply`, `_mesh.obj` (+ .mtl, albedo) and `_report.json` (steps, training time, cache).

Evaluation views: the stage-1 Gaussians rendered on white at the config's `radius` and `fovy`, size `ref_size`
(or --view-size), azimuth 0 = the input view; the batch's elevation is threestudio's (positive = above), i.e.
DreamGaussian elevation −elevation. Stage 2 (main2.py, texture refinement) is not run by the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import BatchError
from ..jobs import JobSpec
from .base import PLACEHOLDER, ConfigInfo, FrontEnd, TrainRecord, digest, quote
from .views import orbit_azimuths, save_rgb, view_path


class DreamGaussianFrontEnd(FrontEnd):
    name = "dreamgaussian-hash3d"
    kinds = ("image",)
    reserved = ("input", "save_path", "outdir", "device", "load")

    def item_overrides(self, target: str, item: str, run_dir: str) -> list[str]:
        return [f"input={quote(target)}", f"save_path={quote(item)}", f"outdir={quote(run_dir)}"]

    def inspect(self, config: Path, overrides: tuple[str, ...]) -> ConfigInfo:
        from hash3d.config import UserInputError, to_data
        from hash3d.systems.dreamgaussian import load_options

        try:
            cfg = load_options(config, [*overrides, *self.item_overrides(PLACEHOLDER, PLACEHOLDER, PLACEHOLDER)])
            cfg.check_supported()
        except UserInputError as exc:
            raise BatchError(f"{config}: {exc}") from None
        data = to_data(cfg)
        return ConfigInfo(("image",), digest(data), bool(cfg.cache.enabled), data)

    def _options(self, job: JobSpec, gpu: str | None, run_dir: Path):
        from hash3d.systems.dreamgaussian import load_options

        device = f"device=cuda:{gpu}" if gpu is not None else "device=cpu"
        return load_options(job.config, [*job.overrides, *self.item_overrides(job.target, job.item, str(run_dir)), device])

    def train(self, job: JobSpec, gpu: str | None, run_dir: Path) -> TrainRecord:
        from hash3d.systems.dreamgaussian.stage1 import run_stage1

        cfg = self._options(job, gpu, run_dir)
        result = run_stage1(cfg, progress=False)
        report = json.loads(result.report.read_text())
        cache = report.get("cache", {})
        stats = {}
        if cache.get("enabled"):
            stats = {k: float(cache.get(k, 0.0)) for k in ("hit_rate", "queries", "hits", "unet_calls_saved", "unet_calls_run")}
        return TrainRecord(steps=int(report["steps"]), max_steps=int(cfg.iters), train_s=float(report["train_time_s"]),
                           cache=stats, outputs=str(run_dir), state=result.model)  # fmt: skip

    def render_views(self, job: JobSpec, record: TrainRecord, gpu: str | None, views_dir: Path) -> list[Path]:
        from hash3d.render.gaussian_raster import resolve_backend
        from hash3d.scene.gaussians import GaussianModel
        from hash3d.systems.dreamgaussian.common import make_views
        from hash3d.systems.dreamgaussian.stage1 import render_gaussians

        cfg = self._options(job, gpu, Path(record.outputs))
        device = torch.device(cfg.device)
        model = record.state
        if model is None:
            ply = cfg.output_path("_model.ply")
            if not ply.is_file():
                raise BatchError(f"{ply} is missing: the stage-1 run did not finish")
            model = GaussianModel.from_ply(ply, device=device)
        backend = resolve_backend(cfg.gaussian_backend, device)
        size = job.views.size or cfg.ref_size
        white = torch.ones(3, device=device)
        written = []
        for i, azimuth in enumerate(orbit_azimuths(job.views.n_views, 0.0)):
            views = make_views([-job.views.elevation_deg], [azimuth], cfg.radius, cfg.fovy, size, device)
            with torch.no_grad():
                rgb, _, _ = render_gaussians(model, views, white, backend)
            written.append(save_rgb(view_path(views_dir, i), rgb[0]))
        return written
