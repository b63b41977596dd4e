"""The training loop: a small explicit loop (no Lightning) with exact-step resume, precision, checkpoints, validation
and test renders.

Why not Lightning: an SDS step is a few tens of milliseconds and the project measures the time outside the UNet, so
the loop must add next to nothing per step (no callback/hook dispatch, no host syncs except on log steps); resume
must restore every random stream (torch, CUDA, numpy, python, the camera sampler, the guidance's generators) and
the Hash3D cache (table, policy stream, counters) so a resumed run reproduces an uninterrupted one exactly; and
checkpoints must load on a CPU with `torch.load(weights_only=True)`. The file names and config keys stay
Lightning's / threestudio's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import to_data
from ..profiling import paused, section, step_done
from .checkpoint import CheckpointError, make_checkpoint, save_checkpoint, set_rng_state
from .loggers import ExtraLoggers, LoggersConfig
from .outputs import MetricsLogger, TrialDir, compose_views, remove_tree, save_image, save_video
from .progress import ProgressBar
from .system import System

log = logging.getLogger("hash3d")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Precision:
    name: str
    """'32', '16-mixed' or 'bf16-mixed' (what actually runs)."""
    dtype: torch.dtype | None
    """Autocast dtype (None: full precision)."""

    @property
    def uses_scaler(self) -> bool:
        return self.dtype is torch.float16


def resolve_precision(requested: str, device: torch.device) -> tuple[Precision, str | None]:
    """The precision to run with on `device`, and a note when it differs from the request."""
    if requested == "32":
        return Precision("32", None), None
    if device.type != "cuda":
        return Precision("32", None), f"precision {requested} needs a GPU; running in 32-bit on {device.type}"
    if requested == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        return Precision("16-mixed", torch.float16), "this GPU has no bfloat16: running 16-mixed instead"
    return Precision(requested, torch.bfloat16 if requested == "bf16-mixed" else torch.float16), None


def _split_optim(result: Any) -> tuple[torch.optim.Optimizer, Any]:
    if isinstance(result, torch.optim.Optimizer):
        return result, None
    if isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], torch.optim.Optimizer):
        return result[0], result[1]
    raise TypeError("configure_optimizers() must return an optimizer or (optimizer, lr_scheduler)")


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _views(datamodule: Any, split: str, limit: int | None) -> int | None:
    """How many views a val/test render makes (for its progress bar; None when the data module does not say)."""
    count = getattr(datamodule, f"num_{split}_views", None)
    views = count() if callable(count) else 0
    if not views:
        return None
    return views if limit is None else min(views, limit)


class Trainer:
    """Runs a System on a DataModule: `fit`, `validate`, `test`, `export`; writes into a TrialDir."""

    def __init__(self, cfg: Any, trial: TrialDir, device: torch.device, precision: Precision | None = None):
        self.cfg = cfg
        self.trial = trial
        self.device = device
        if precision is None:
            precision, note = resolve_precision(cfg.trainer.precision, device)
            if note:
                log.info("note: %s", note)
        self.precision = precision
        self.global_step = 0
        self.interrupted = False
        self.loggers = ExtraLoggers(LoggersConfig(), trial.root, trial.root.name)  # opened by fit()

    # ------------------------------------------------------------------ helpers
    def _open_loggers(self, system: System) -> ExtraLoggers:
        loggers = self._system_option(system, "loggers", None)
        if loggers is None:
            return ExtraLoggers(LoggersConfig(), self.trial.root, self.trial.root.name)
        return ExtraLoggers(loggers, self.trial.root, self.trial.root.name, to_data(self.cfg))

    def place(self, system: System) -> None:
        """Move the system to the run's device (and keep `system.device` in step)."""
        system.move_to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.dtype)

    def bind(self, system: System) -> None:
        """Hand the system the trial's save/ folder (for files it writes itself); every stage calls this first."""
        system.set_save_dir(self.trial.save)

    def _system_option(self, system: System, name: str, default: Any) -> Any:
        return getattr(system.cfg, name, default)

    def _save(self, path: Path, system: System, optimizer, scheduler, scaler, datamodule) -> None:
        payload = make_checkpoint(
            global_step=self.global_step,
            system=system,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            datamodule=datamodule,
            config=self.cfg,
        )
        save_checkpoint(path, payload)

    def _prune_step_ckpts(self) -> None:
        k = self.cfg.checkpoint.save_top_k
        if k < 0:
            return
        ckpts = sorted(
            self.trial.ckpts.glob("epoch=*-step=*.ckpt"), key=lambda p: int(p.stem.rsplit("step=", 1)[-1])
        )
        for p in ckpts[: max(0, len(ckpts) - k)]:
            p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ loading
    def restore(self, system: System, ckpt: dict[str, Any], path: str | Path, *, optimizer=None, scheduler=None,
                scaler=None, datamodule=None, full: bool = True) -> None:
        """Load a checkpoint into the run: the weights always; with `full`, optimizer, sampler, RNG and step too."""
        try:
            system.load_checkpoint_state_dict(ckpt["state_dict"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {path} does not fit this system ({str(exc).splitlines()[0]}); was it made with another config?"
            ) from exc
        system.load_extra_state(ckpt.get("system_state", {}))
        self.global_step = int(ckpt["global_step"])
        if not full:
            return
        if optimizer is not None and ckpt.get("optimizer_states"):
            try:
                optimizer.load_state_dict(ckpt["optimizer_states"][0])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"the optimizer state in {path} does not fit this system: {exc}") from exc
        if scheduler is not None and ckpt.get("lr_schedulers"):
            scheduler.load_state_dict(ckpt["lr_schedulers"][0])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if datamodule is not None and ckpt.get("datamodule"):
            datamodule.load_state_dict(ckpt["datamodule"])
        try:
            system.load_guidance_state(ckpt.get("guidance_state", {}))
        except ValueError as exc:
            raise CheckpointError(f"the guidance state in {path} does not fit this run: {exc}") from exc
        set_rng_state(ckpt["rng"])

    def load_weights(self, system: System, path: str, ignore: list[str]) -> None:
        """`system.weights=PATH`: parameters only (no optimizer state; the step starts at 0)."""
        from .checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        try:
            system.load_checkpoint_state_dict(ckpt["state_dict"], ignore=tuple(ignore))
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"system.weights={path} does not fit this system: {str(exc).splitlines()[0]}") from exc

    # ------------------------------------------------------------------ fit
    def fit(self, system: System, datamodule: Any, ckpt: dict[str, Any] | None = None, ckpt_path: str | None = None) -> None:
        cfg = self.cfg
        max_steps = cfg.trainer.max_steps
        self.place(system)
        self.bind(system)
        system.max_steps = max_steps
        system.train()
        torch.backends.cudnn.benchmark = bool(cfg.trainer.benchmark)
        # first, so that what it resets (set_image / set_prompt reseed the guidance) is then overwritten by the checkpoint
        system.resuming = ckpt is not None
        system.on_fit_start(datamodule)
        if ckpt is None and getattr(system.cfg, "weights", None):
            self.load_weights(system, system.cfg.weights, getattr(system.cfg, "weights_ignore_modules", []))
        optimizer, scheduler = _split_optim(system.configure_optimizers())
        system.optimizer = optimizer
        scaler = torch.amp.GradScaler(self.device.type) if self.precision.uses_scaler else None
        start = 0
        if ckpt is not None:
            self.restore(system, ckpt, ckpt_path or "", optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                         datamodule=datamodule)
            start = self.global_step
            log.info("resuming from %s at step %d", ckpt_path, start)
            if start >= max_steps:
                log.info("note: the checkpoint is at step %d >= trainer.max_steps=%d: nothing to train", start, max_steps)
        self.global_step = start
        metrics = MetricsLogger(self.trial.metrics, resume_step=start if ckpt is not None else None)
        self.loggers = self._open_loggers(system)
        if cfg.trainer.num_sanity_val_steps > 0 and start == 0:
            with paused():  # before the training clock starts: not in the step sections either
                self.validate(system, datamodule, limit=cfg.trainer.num_sanity_val_steps)
            system.train()

        every = cfg.checkpoint.every_n_train_steps
        val_every = cfg.trainer.val_check_interval
        log_every = cfg.trainer.log_every_n_steps
        clip = cfg.trainer.gradient_clip_val
        bar = ProgressBar(max_steps, start, enabled=cfg.trainer.enable_progress_bar)
        t_log, step_log = time.perf_counter(), start
        t_start = time.perf_counter()
        try:
            for step in range(start, max_steps):
                system.global_step = step
                system.update_step(step, max_steps)
                with section("data"):
                    batch = datamodule.train_batch(step)
                    batch = batch.to(self.device) if hasattr(batch, "to") else batch
                with self.autocast(), section("forward"):
                    out = system.training_step(batch, step)
                if not isinstance(out, dict) or "loss" not in out:
                    raise TypeError(f"{type(system).__name__}.training_step must return a dict with a 'loss' entry")
                loss = out["loss"]
                if system.automatic_optimization:
                    with section("backward"):
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    with section("optimizer"):
                        system.on_before_optimizer_step(optimizer, step)
                        if clip is not None:
                            torch.nn.utils.clip_grad_norm_(system.parameters(), clip)
                        if scaler is not None:
                            scaler.step(optimizer)
                            scaler.update()
                        else:
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        if scheduler is not None:
                            scheduler.step()
                        system.on_after_optimizer_step(optimizer, step)
                self.global_step = gstep = step + 1
                step_done()  # before the logging and checkpoint: a profiled span ends with a step, not the final save
                bar.update()
                if gstep % log_every == 0 or gstep == max_steps:
                    if self.device.type == "cuda":  # the host runs ahead of the GPU: time (and it/s) of finished work
                        torch.cuda.synchronize(self.device)
                    now = time.perf_counter()
                    values: dict[str, Any] = {}
                    for key, value in out.items():
                        s = _scalar(value)
                        if s is not None:
                            values[f"train/{key}"] = s
                    values["lr"] = optimizer.param_groups[0]["lr"]
                    values["it_per_s"] = (gstep - step_log) / max(now - t_log, 1e-9)
                    values["elapsed_s"] = now - t_start
                    cache = system.cache_stats()
                    values.update({f"cache/{k}": v for k, v in cache.items()})
                    metrics.log(gstep, values)
                    self.loggers.log_scalars(gstep, values)
                    bar.set_postfix(values.get("train/loss"), cache)
                    if not math.isfinite(values.get("train/loss", 0.0)):
                        log.warning("the loss is %s at step %d", values.get("train/loss"), gstep)
                    t_log, step_log = now, gstep
                if every is not None and gstep % every == 0:
                    if cfg.checkpoint.save_top_k != 0:
                        self._save(self.trial.step_ckpt(gstep), system, optimizer, scheduler, scaler, datamodule)
                        self._prune_step_ckpts()
                    if cfg.checkpoint.save_last:
                        self._save(self.trial.last_ckpt, system, optimizer, scheduler, scaler, datamodule)
                    metrics.flush()
                if val_every and gstep % val_every == 0:
                    metrics.flush()
                    self.validate(system, datamodule)
                    system.train()
        except KeyboardInterrupt:
            self.interrupted = True
            bar.write(f"interrupted at step {self.global_step}: saving last.ckpt (press Ctrl-C again to quit)")
        finally:
            bar.close()
            metrics.flush()
            self.loggers.close()
        if cfg.checkpoint.save_last or self.interrupted:  # an interrupted run always leaves a checkpoint to resume
            self._save(self.trial.last_ckpt, system, optimizer, scheduler, scaler, datamodule)
        system.on_fit_end()

    # ------------------------------------------------------------------ evaluation
    def _render(
        self, system: System, batches: Iterable[Any], split: str, total: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Render the views of `batches`, with a progress bar over `total` frames (a test orbit takes minutes on a
        CPU)."""
        cleanup = self._system_option(system, f"cleanup_after_{'validation' if split == 'val' else 'test'}_step", False)
        system.eval()
        bar = ProgressBar(total or 0, enabled=self.cfg.trainer.enable_progress_bar, desc=split, unit="view")
        try:
            with torch.no_grad():
                for n, batch in enumerate(batches):
                    batch = batch.to(self.device) if hasattr(batch, "to") else batch
                    with self.autocast():
                        images = system.validation_step(batch, n) if split == "val" else system.test_step(batch, n)
                    frames = compose_views(images)
                    index = getattr(batch, "index", None)
                    ids = index.tolist() if isinstance(index, torch.Tensor) else range(n * len(frames), (n + 1) * len(frames))
                    for i, frame in zip(ids, frames):
                        yield int(i), frame
                    bar.update(len(frames))
                    if cleanup and self.device.type == "cuda":
                        torch.cuda.empty_cache()
        finally:
            bar.close()

    def validate(self, system: System, datamodule: Any, limit: int | None = None) -> list[Path]:
        """Render the validation views: save/it{N}-{i}.png, or save/it{N}-val.mp4 with `system.val_as_video`."""
        self.bind(system)
        limit = limit if limit is not None else self.cfg.trainer.limit_val_batches
        batches = islice(datamodule.val_batches(), limit) if limit is not None else datamodule.val_batches()
        step = self.global_step
        as_video = self._system_option(system, "val_as_video", False)
        written: list[Path] = []
        frames = []
        for i, frame in self._render(system, batches, "val", _views(datamodule, "val", limit)):
            path = self.trial.save / (f"it{step}-val" / Path(f"{i}.png") if as_video else Path(f"it{step}-{i}.png"))
            save_image(path, frame)
            frames.append(frame)
            written.append(path)
        self.loggers.log_images(step, "val", frames)
        if as_video and frames:
            video = self.trial.save / f"it{step}-val.mp4"
            save_video(video, frames, self._system_option(system, "video_fps", 30))
            remove_tree(self.trial.save / f"it{step}-val")
            written = [video]
        return written

    def test(self, system: System, datamodule: Any) -> Path | None:
        """Render the test orbit: save/it{N}-test/{i}.png and save/it{N}-test.mp4; returns the video path."""
        self.bind(system)
        # the step the test files are named by: the steps trained (after fit) or the checkpoint's (--test)
        system.global_step = self.global_step
        system.on_test_start(datamodule)
        limit = self.cfg.trainer.limit_test_batches
        batches = islice(datamodule.test_batches(), limit) if limit is not None else datamodule.test_batches()
        step = self.global_step
        folder = self.trial.save / f"it{step}-test"
        frames = []
        for i, frame in self._render(system, batches, "test", _views(datamodule, "test", limit)):
            save_image(folder / f"{i}.png", frame)
            frames.append(frame)
        if not frames:
            return None
        video = self.trial.save / f"it{step}-test.mp4"
        save_video(video, frames, self._system_option(system, "video_fps", 30))
        if not self._system_option(system, "keep_test_frames", True):
            remove_tree(folder)
        log.info("test video: %s (%d frames)", video, len(frames))
        return video

    def export(self, system: System) -> list[Path]:
        self.bind(system)
        out_dir = self.trial.save / f"it{self.global_step}-export"
        fresh = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        system.eval()
        try:
            files = system.export(out_dir)
        except BaseException:
            if fresh:  # a failed export leaves no folder behind (nor half its files)
                remove_tree(out_dir)
            raise
        for f in files or []:
            log.info("exported %s", f)
        return list(files or [])
