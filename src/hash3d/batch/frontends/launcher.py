"""Front-ends run by the shared threestudio-style launcher (`hash3d.launch`): threestudio-hash3d, and
gaussian-dreamer-hash3d whose launch.py calls the same `hash3d.launch.main`.

Training: the launcher in this process with `--train`, the item given as `system.prompt_processor.prompt=…` (text)
or `data.image_path=…` (image), and `exp_root_dir=<item>/run use_timestamp=false tag=<item id>`, so the trial
folder is `<item>/run/<config name>/<item id>/` (threestudio's layout, short names). The launcher's own test video
after training is turned off (`trainer.test_after_fit=false`, 120 large frames the batch does not use; an override
turns it back on).

Evaluation views: rendered from the finished checkpoint through the system itself, as `launch.py --test` does
(parsed.yaml, the checkpoint's weights, `on_test_start`, the config's precision), but on the batch's own orbit:
exactly `n_views` distinct azimuths (the launcher's test orbit repeats its first view as its last), starting at the
input view's azimuth (`data.default_azimuth_deg`) for image-to-3D, at the batch's elevation, at the config's
evaluation distance, field of view and size (`eval_camera_distance`, `eval_fovy_deg`, `eval_height/width`), and
only the `rgb` image of `test_step` (on the config's background), not the rgb | normal | opacity strip.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from ..errors import BatchError
from ..jobs import JobSpec
from .base import PLACEHOLDER, ConfigInfo, FrontEnd, TrainRecord, digest, quote
from .views import orbit_azimuths, save_rgb, view_path


class LauncherFrontEnd(FrontEnd):
    kinds = ("text", "image")
    reserved = ("exp_root_dir", "use_timestamp", "timestamp", "tag", "resume",
                "system.prompt_processor.prompt", "data.image_path")  # fmt: skip
    defaults = ("trainer.test_after_fit=false", "trainer.enable_progress_bar=false")
    """Given before the user's overrides, which may change them."""

    def __init__(self, name: str):
        self.name = name

    # ------------------------------------------------------------------ config
    def item_overrides(self, kind: str, target: str, tag: str, run_dir: str) -> list[str]:
        key = "system.prompt_processor.prompt" if kind == "text" else "data.image_path"
        return [f"exp_root_dir={quote(run_dir)}", "use_timestamp=false", f"tag={quote(tag)}", f"{key}={quote(target)}"]

    def inspect(self, config: Path, overrides: tuple[str, ...]) -> ConfigInfo:
        from hash3d.config import UserInputError, load_config, to_data

        try:
            cfg, _ = load_config(config, [*self.defaults, *overrides])
        except UserInputError as exc:
            raise BatchError(f"{config}: {exc}") from None
        kinds = []
        if hasattr(cfg.system, "prompt_processor"):
            kinds.append("text")
        if hasattr(cfg.data, "image_path"):
            kinds.append("image")
        if not kinds:
            raise BatchError(
                f"{config}: the batch runner does not know how to give this config an item (its system has no "
                "prompt_processor.prompt and its data no image_path): not supported yet"
            )
        kind = kinds[0]
        placeholder = self.item_overrides(kind, PLACEHOLDER, PLACEHOLDER, PLACEHOLDER)
        cfg, _ = load_config(config, [*self.defaults, *overrides, *placeholder])
        data = to_data(cfg)
        cache = getattr(getattr(getattr(cfg.system, "guidance", None), "cache", None), "enabled", None)
        return ConfigInfo(tuple(kinds), digest(data), cache, data)

    # ------------------------------------------------------------------ train
    def train(self, job: JobSpec, gpu: str | None, run_dir: Path) -> TrainRecord:
        from hash3d import launch

        argv = ["--config", job.config, "--train", "--gpu", gpu if gpu is not None else "cpu",
                *self.defaults, *job.overrides, *self.item_overrides(job.kind, job.target, job.item, str(run_dir))]  # fmt: skip
        trial = launch.run(argv, prog=f"{self.name}/launch.py")
        return read_trial(trial)

    # ------------------------------------------------------------------ views
    def render_views(self, job: JobSpec, record: TrainRecord, gpu: str | None, views_dir: Path) -> list[Path]:
        return render_trial_views(Path(record.outputs), job, gpu, views_dir, self.name)


def _last_row(metrics: Path) -> dict[str, str]:
    if not metrics.is_file():
        return {}
    with metrics.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def _float(row: dict[str, str], key: str) -> float | None:
    try:
        return float(row[key]) if row.get(key) not in (None, "") else None
    except ValueError:
        return None


def read_trial(trial: Path) -> TrainRecord:
    """Steps, training time and cache counters of a finished trial (its csv_logs/metrics.csv); a run stopped
    before trainer.max_steps (Ctrl-C, which the launcher turns into a last checkpoint) raises KeyboardInterrupt."""
    from hash3d.config import load_config

    cfg, _ = load_config(trial / "configs" / "parsed.yaml", [])
    row = _last_row(trial / "csv_logs" / "metrics.csv")
    steps = int(_float(row, "step") or 0)
    max_steps = int(cfg.trainer.max_steps)
    if steps < max_steps:
        raise KeyboardInterrupt(f"training stopped at step {steps} of {max_steps}")
    cache: dict[str, float] = {}
    if _float(row, "cache/queries") is not None:
        saved, run = _float(row, "cache/unet_calls_saved") or 0.0, _float(row, "cache/full_samples") or 0.0
        cache = {
            "hit_rate": _float(row, "cache/hit_rate") or 0.0,
            "queries": _float(row, "cache/queries") or 0.0,
            "hits": _float(row, "cache/hits") or 0.0,
            "unet_calls_saved": saved,
            "unet_calls_run": run,
        }
    return TrainRecord(steps=steps, max_steps=max_steps, train_s=_float(row, "elapsed_s") or 0.0, cache=cache,
                       outputs=str(trial))  # fmt: skip


def _eval_camera(data: Any, config: str) -> tuple[float, float, int, int, float]:
    """(distance, fovy, height, width, start azimuth) of the data config's evaluation orbit."""
    camera = getattr(data, "random_camera", None)
    if camera is not None and hasattr(camera, "eval_camera_distance"):  # single image + random cameras
        start = float(getattr(data, "default_azimuth_deg", 0.0))
    elif hasattr(data, "eval_camera_distance"):  # random cameras
        camera, start = data, 0.0
    else:
        raise BatchError(f"{config}: its data module has no evaluation camera settings: evaluation views not supported yet")
    return (float(camera.eval_camera_distance), float(camera.eval_fovy_deg), int(camera.eval_height),
            int(camera.eval_width), start)  # fmt: skip


def render_trial_views(trial: Path, job: JobSpec, gpu: str | None, views_dir: Path, front_end: str) -> list[Path]:
    from hash3d.config import build, load_config
    from hash3d.data.batches import CameraBatch
    from hash3d.data.cameras import camera_position, look_at
    from hash3d.launch import select_device
    from hash3d.training.checkpoint import load_checkpoint
    from hash3d.training.loop import Trainer
    from hash3d.training.outputs import TrialDir

    cfg, _ = load_config(trial / "configs" / "parsed.yaml", [])
    distance, fovy, height, width, start = _eval_camera(cfg.data, job.config)
    if job.views.size is not None:
        height = width = job.views.size
    device, _ = select_device(gpu if gpu is not None else "cpu")
    datamodule = build("data", cfg.data_type, cfg.data, seed=cfg.seed)
    datamodule.setup()
    system = build("system", cfg.system_type, cfg.system, device=device)
    trainer = Trainer(cfg, TrialDir(trial), device)
    ckpt_path = TrialDir(trial).last_ckpt
    trainer.restore(system, load_checkpoint(ckpt_path), ckpt_path, full=False)
    trainer.place(system)
    system.global_step = trainer.global_step
    system.on_test_start(datamodule)
    system.eval()

    written = []
    for i, azimuth in enumerate(orbit_azimuths(job.views.n_views, start)):
        e, a, d = torch.tensor([job.views.elevation_deg]), torch.tensor([azimuth]), torch.tensor([distance])
        position = camera_position(e, a, d)
        batch = CameraBatch(
            c2w=look_at(position), elevation=e, azimuth=a, camera_distances=d, fovy=torch.tensor([fovy]),
            camera_positions=position, light_positions=position.clone(), height=height, width=width,
            index=torch.tensor([i]),
        ).to(device)  # fmt: skip
        with torch.no_grad(), trainer.autocast():
            images = system.test_step(batch, i)
        if "rgb" not in images:
            raise BatchError(
                f"{front_end}: {cfg.system_type}.test_step gives no 'rgb' image ({', '.join(images)}): "
                "evaluation views for this system are not supported yet"
            )
        rgb = images["rgb"]
        written.append(save_rgb(view_path(views_dir, i), rgb[0] if rgb.ndim == 4 else rgb))
    return written
