"""Scoring the evaluation views with hash3d.eval, in the batch's own process after the runs (each model loads once).

Per item: the CLIP similarity between the views and the prompt (text) or the input image (image), and, with --gt,
PSNR / SSIM / LPIPS against GT_DIR/<item>/ (000.png, … paired by name with the views). The means go into the item's
scores.json with the settings that made them, so a rerun scores only what is new; the per-view tables are written
beside it (clip.json, nvs.json). A metric that cannot be computed (model not available, no ground truth) is left
out with a note; the runs themselves are kept. The default CLIP model (not named with --clip-model) is optional:
offline and not in the local Hugging Face cache, its score is skipped with one note saying how to enable it, and the
batch still counts as complete.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .config import ScoreConfig
from .jobs import JobSpec
from .paths import hub_reachable, in_hub_cache, offline
from .state import ItemDir

FLAG = "--clip-model"


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")


def as_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Scorer:
    def __init__(self, cfg: ScoreConfig):
        self.cfg = cfg
        self.notes: list[str] = []
        self.incomplete = False
        """Set when a wanted metric could not be computed for some item."""
        self._clip: Any = None
        self._clip_failed = False
        self.clip_skipped = False
        """The optional default CLIP model could not be loaded: no CLIP column, not incomplete."""
        self._lpips: Any = None
        self._lpips_loaded = False

    @property
    def metric_names(self) -> list[str]:
        names = ["clip"] if self.cfg.clip_model and not self.clip_skipped else []
        if self.cfg.gt_dir is not None:
            names += ["psnr", "ssim"] + (["lpips"] if self.cfg.lpips_net else [])
        return names

    # ------------------------------------------------------------------ models, loaded on first use
    def _embedder(self):
        if self._clip is None and not self._clip_failed:
            from hash3d.eval import ClipEmbedder, EvalError
            from hash3d.eval.config import CLIP_MODEL_ALIASES, resolve_device

            name = CLIP_MODEL_ALIASES.get(self.cfg.clip_model, self.cfg.clip_model)
            if self.cfg.clip_optional and not self._can_have(name):
                self._clip_failed = self.clip_skipped = True
                self.notes.append(f"CLIP score skipped (the other metrics are complete): the default CLIP model "
                                  f"{name!r} is not in the local Hugging Face cache and the hub cannot be reached. "
                                  f"{self._how_to_enable(name)}")  # fmt: skip
                return None
            try:
                self._clip = ClipEmbedder.load(name, resolve_device(self.cfg.device), flag=FLAG)
            except EvalError as exc:
                self._clip_failed = True
                if self.cfg.clip_optional:
                    self.clip_skipped = True
                    self.notes.append(f"CLIP score skipped (the other metrics are complete): {exc} "
                                      f"`{FLAG} none` leaves CLIP out without this note.")  # fmt: skip
                else:
                    self.notes.append(f"CLIP not scored: {exc}")
        return self._clip

    def _lpips_fn(self):
        if not self._lpips_loaded and self.cfg.lpips_net:
            from hash3d.eval import load_lpips
            from hash3d.eval.config import resolve_device

            self._lpips_loaded = True
            status = load_lpips(self.cfg.lpips_net, resolve_device(self.cfg.device))
            if status.available:
                self._lpips = status.fn
            else:
                self.notes.append(f"LPIPS not scored: {status.reason}")
        return self._lpips

    @staticmethod
    def _can_have(name: str) -> bool:
        """A local folder, a cached hub model, or one the hub answers for now (no download of bigG on a machine
        that cannot reach the hub: the load would retry for a minute and fail)."""
        return Path(name).expanduser().is_dir() or in_hub_cache(name) or (not offline() and hub_reachable(name))

    @staticmethod
    def _how_to_enable(name: str) -> str:
        return (f"To score CLIP offline: `hf download {name} --local-dir DIR` on a machine with network, copy DIR here "
                f"and pass {FLAG} DIR (or set HF_HOME to a cache that holds it); {FLAG} none leaves CLIP out "
                "without this note.")  # fmt: skip

    def availability_note(self) -> str | None:
        """A note when the CLIP model cannot be loaded without the network (for --dry-run, before anything runs)."""
        from hash3d.eval.config import CLIP_MODEL_ALIASES

        if not self.cfg.clip_model:
            return None
        name = CLIP_MODEL_ALIASES.get(self.cfg.clip_model, self.cfg.clip_model)
        local = Path(name).expanduser()
        if local.is_dir():
            return None
        if name.startswith((".", "/", "~")):
            return f"CLIP: no model folder at {name}: the CLIP score will fail (give {FLAG} DIR, or {FLAG} none)"
        if in_hub_cache(name):
            return None
        then = ("is skipped (the batch still completes)" if self.cfg.clip_optional
                else "fails and the batch exits with status 1")  # fmt: skip
        return (f"CLIP: the model {name!r} is not in the local Hugging Face cache: after the runs the batch tries to "
                f"download it, and where that is not possible (offline) the CLIP score {then}. "
                f"{self._how_to_enable(name)}")  # fmt: skip

    # ------------------------------------------------------------------ per item
    def gt_folder(self, job: JobSpec) -> Path | None:
        if self.cfg.gt_dir is None:
            return None
        names = [job.item] + ([Path(job.target).stem] if job.kind == "image" else [])
        for name in dict.fromkeys(names):
            if (self.cfg.gt_dir / name).is_dir():
                return self.cfg.gt_dir / name
        self.notes.append(f"{job.item}: no ground truth in {self.cfg.gt_dir} (looked for {', '.join(dict.fromkeys(names))}/)")
        self.incomplete = True
        return None

    def score(self, job: JobSpec) -> dict[str, Any]:
        """The item's metric means (computed now, or read from scores.json when made with the same settings)."""
        item = ItemDir(job)
        scores = item.scores()
        changed = False
        if self.cfg.clip_model:
            settings = {"model": self.cfg.clip_model, "background": self.cfg.background}
            if scores.get("clip", {}).get("settings") != settings:
                values = self._score_clip(job, item)
                if values is not None:
                    scores["clip"] = {"settings": settings, "values": values}
                    changed = True
            if ("clip" not in scores or scores["clip"].get("settings") != settings) and not self.clip_skipped:
                self.incomplete = True
        gt = self.gt_folder(job)
        if gt is not None:
            settings = {"gt": str(gt.resolve()), "lpips": self.cfg.lpips_net, "background": self.cfg.background}
            stale = scores.get("nvs", {}).get("settings") != settings
            if stale or (self.cfg.lpips_net and "lpips" not in scores["nvs"]["values"]):
                values = self._score_nvs(job, item, gt)
                if values is not None:
                    scores["nvs"] = {"settings": settings, "values": values}
                    changed = True
            if "nvs" not in scores or scores["nvs"].get("settings") != settings:
                self.incomplete = True
        if changed:
            item.write_scores(scores)
        out: dict[str, Any] = {}
        for block in ("clip", "nvs"):
            if block in scores:
                out.update(scores[block]["values"])
        return out

    def _score_clip(self, job: JobSpec, item: ItemDir) -> dict[str, Any] | None:
        from hash3d.eval import ClipSimConfig, EvalError, evaluate_clip

        embedder = self._embedder()
        if embedder is None:
            return None
        try:
            table = evaluate_clip(
                ClipSimConfig(target=job.target, pred_dir=item.views, mode=job.kind, model=embedder.name, views=0,
                              device=self.cfg.device, background=self.cfg.background),  # fmt: skip
                embedder=embedder,
            )
        except EvalError as exc:
            self.notes.append(f"{job.job_id}: CLIP not scored: {exc}")
            return None
        table.write(item.root / "clip.json")
        stat = table.summary()["clip"]
        return {"clip": _number(stat.mean), "clip_std": _number(stat.std), "clip_views": stat.n}

    def _score_nvs(self, job: JobSpec, item: ItemDir, gt: Path) -> dict[str, Any] | None:
        from hash3d.eval import EvalError, NVSConfig, evaluate_nvs

        lpips = self._lpips_fn()
        try:
            table = evaluate_nvs(
                NVSConfig(gt_dir=gt, pred_dir=item.views, lpips_net=None, device=self.cfg.device,
                          background=self.cfg.background, name=job.job_id),  # fmt: skip
                lpips=lpips,
            )
        except EvalError as exc:
            self.notes.append(f"{job.job_id}: PSNR/SSIM not scored: {exc}")
            return None
        table.write(item.root / "nvs.json")
        return {name: _number(stat.mean) for name, stat in table.summary().items()} | {"nvs_views": len(table.rows)}
