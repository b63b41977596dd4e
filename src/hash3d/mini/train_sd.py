"""Train Hash3D-mini-sd: a small latent text-to-image model on captioned renders of the procedural objects.

    python tools/train_mini_sd.py --out outputs/mini-sd --compile --export-parts $OUT/mini-sd   # one GPU command
    python tools/train_mini_sd.py --out /tmp/mini-sd --tiny                                     # CPU smoke test

Data: the Zero123 mini's `ViewPool` (objects × views, refreshed a few objects per step), elevations −10…85° so
that the guidance's "overhead view" (above 60°) is trained too; each view's caption is the object's caption
(`text_data.captions`) with the suffix of its camera's direction, as the SD guidance words it. The VAE is the
shipped Hash3D-mini Zero123 model's (trained on the same renders; frozen, copied into the folder). The UNet and the
CLIP text encoder train jointly: v-prediction MSE on the cosine schedule, t uniform, 10 % of captions replaced by
the empty prompt (the guidance's unconditional branch) for CFG, AdamW with warm-up and cosine decay, EMA (exported).

Training runs `--minutes` of loop time over all commands of the run: each command stops training at
`--deadline-minutes` of wall clock after its start, saves `OUT/checkpoint.pt` and, if budget is left, exits (the same
command again resumes). The default budget (6.5 min) fits one 10-minute command with pool rendering, export and
evaluation; `--minutes 14` takes two. When the budget is spent the command writes the folder (`OUT/model`, fp16
safetensors), scores held-out captions through that folder (`evaluate_sd`) and writes the model card and
`samples.png` into it.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hash3d.shipped import MINI_MODEL

from . import sd_model
from .data import ViewPool
from .objects import make_objects
from .text_data import WORDS, captions, view_captions, views_direction
from .tokenizer import write_clip_tokenizer
from .train_loop import (REFRESH_EVERY, EMA, BaseTrainConfig, CheckedUNet, autocast, build_seeded, common_parser,
                         common_values, cosine_lr, encode_posterior, export_parts, load_checkpoint, make_adamw,
                         make_logger, noised_v, optimize, run_main, run_steps, scheduler_alphas, setup_device,
                         write_checkpoint, write_eval_json)

__all__ = ["SD_ELEVATION_RANGE", "TINY_SD", "SDTrainConfig", "SDTrainer", "main", "parse_args"]

SD_ELEVATION_RANGE = (-10.0, 85.0)
CHECKPOINT = "checkpoint.pt"


@dataclass
class SDTrainConfig(BaseTrainConfig):
    minutes: float = 6.5
    """Training-loop budget of the one command, in minutes (pool rendering, export and evaluation come on top)."""
    deadline_minutes: float = 7.5
    """Wall-clock limit of training from the command's start: training stops there even if `minutes` is not spent
    (checkpoint; run again to resume), so that export and evaluation still fit a 10-minute command."""
    refresh: int = 2
    """Objects re-rendered per step (in batches every 8 steps)."""
    compile_unet: bool = False
    vae_dir: str = str(MINI_MODEL / "vae")
    eval_objects: int = 256
    eval_cfg: tuple[float, ...] = (1.0, 3.0, 7.5)
    grid_cfg: float = 7.5


TINY_SD = dict(preset="tiny", batch=4, pool_objects=8, pool_views=3, steps=3, warmup_steps=2, eval_objects=4,
               eval_steps=3, eval_cfg=(1.0, 3.0), grid_rows=2, refresh=1, log_every_s=5.0)

_log = make_logger("mini-sd")


class SDTrainer:
    def __init__(self, cfg: SDTrainConfig):
        from diffusers import AutoencoderKL
        from transformers import CLIPTokenizer

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.model_dir = Path(cfg.model_dir) if cfg.model_dir else self.out / "model"
        path = self.out / CHECKPOINT
        self._checkpoint = load_checkpoint(path)
        if self._checkpoint is not None and self._checkpoint["preset"] != cfg.preset:
            raise ValueError(f"{path} is a {self._checkpoint['preset']!r} run, not {cfg.preset!r}: use the same options "
                             "as the first command, or another --out")
        self.device, self.device_name = setup_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        self.configs = sd_model.sd_configs(cfg.preset)
        self.parts = build_seeded(lambda: sd_model.build_sd_parts(self.configs), cfg.seed, self.device)
        if self.cuda:
            self.parts["unet"].to(memory_format=torch.channels_last)
        self.vae = AutoencoderKL.from_pretrained(cfg.vae_dir).to(self.device).eval().requires_grad_(False)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        max_length = self.configs["tokenizer"]["model_max_length"]
        self.tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(self.out / "tokenizer", max_length, WORDS))
        self.uncond_tokens = self._tokenize([""])[0]
        self.alphas_cumprod = scheduler_alphas(self.configs["scheduler"], self.device)
        self.params = [p for m in self.parts.values() for p in m.parameters()]
        self.opt = make_adamw(self.params, cfg.lr, cfg.weight_decay)
        self.ema = EMA(self.params, cfg.ema)
        self.unet = CheckedUNet(self.parts["unet"], cfg.compile_unet, fallback=True, log=_log)
        self.pool = ViewPool(cfg.pool_objects, cfg.pool_views, self.device, elevation_range=SD_ELEVATION_RANGE)
        # token ids of every pool object's caption with each view suffix: [P, directions, max_length]
        self.tokens = torch.zeros(cfg.pool_objects, 4, max_length, dtype=torch.long, device=self.device)
        self.t_start = time.time()
        self.sessions: list[dict[str, Any]] = []
        self.progress: dict[str, Any] = {"step": 0, "seconds": 0.0}
        self.loss_log: list[list[float]] = []
        self.n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in self.parts.items()}
        _log(f"device {self.device_name}, preset {cfg.preset}, parameters "
             + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in self.n_params.items()))

    # ------------------------------------------------------------------------------------------- data
    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return ids.to(self.device)

    def _caption_ids(self, start: int, stop: int) -> None:
        """Tokenize the captions of object ids [start, stop) into their pool slots."""
        if stop <= start:
            return
        ids = torch.arange(start, stop)
        texts = [t for c in captions(make_objects(ids)) for t in view_captions(c)]
        self.tokens[(ids % self.pool.P).to(self.device)] = self._tokenize(texts).view(len(ids), 4, -1)

    def _refresh(self) -> None:
        start = self.pool.next_id
        self.pool.refresh(self.cfg.refresh * REFRESH_EVERY)
        self._caption_ids(start, self.pool.next_id)

    # ------------------------------------------------------------------------------------------- training
    @property
    def step(self) -> int:
        """Steps trained over all commands."""
        return self.progress["step"]

    @property
    def seconds(self) -> float:
        """Training-loop seconds over all commands."""
        return self.progress["seconds"]

    def _lr(self) -> float:
        if self.cfg.steps is not None:
            frac = self.step / max(1, self.cfg.steps)
        else:
            frac = self.seconds / max(1e-9, 60 * self.cfg.minutes)
        return cosine_lr(self.cfg.lr, self.step, self.cfg.warmup_steps, frac)

    def budget_spent(self) -> bool:
        if self.cfg.steps is not None:
            return self.step >= self.cfg.steps
        return self.seconds >= 60 * self.cfg.minutes

    def _done(self) -> bool:
        return time.time() - self.t_start >= 60 * self.cfg.deadline_minutes or self.budget_spent()

    def _train_step(self, step: int) -> torch.Tensor:
        cfg, pool = self.cfg, self.pool
        g = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + step)
        p, v = pool.sample_views(cfg.batch, g)
        direction = views_direction(pool.elevation[p, v], pool.azimuth[p, v])
        tokens = self.tokens[p, direction]
        drop = torch.rand(cfg.batch, generator=g, device=self.device) < cfg.cfg_drop
        tokens = torch.where(drop[:, None], self.uncond_tokens[None], tokens)
        mean, std = pool.latents[p, v].chunk(2, dim=1)
        x0 = (mean + std * torch.randn(mean.shape, generator=g, device=self.device)) * self.scaling_factor
        x_t, t, target = noised_v(x0, self.alphas_cumprod, g)
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        with autocast(self.device):
            states = self.parts["text_encoder"](tokens)[0]
            if self.cuda:
                x_t = x_t.contiguous(memory_format=torch.channels_last)
            pred = self.unet(x_t, t, encoder_hidden_states=states).sample
        return optimize(F.mse_loss(pred.float(), target), self.opt, self.params, self.ema, step)

    def save_checkpoint(self) -> None:
        ckpt = {"version": 1, "preset": self.cfg.preset, "parts": {k: m.state_dict() for k, m in self.parts.items()},
                "opt": self.opt.state_dict(), "ema": self.ema.state(), "step": self.step,
                "seconds": self.seconds, "loss_log": self.loss_log, "next_id": self.pool.next_id,
                "sessions": self.sessions}
        write_checkpoint(ckpt, self.out / CHECKPOINT)

    def _resume(self) -> int:
        """Load OUT/checkpoint.pt if there is one; returns the pool's next object id (0 for a fresh run)."""
        ckpt = self._checkpoint
        if ckpt is None:
            return 0
        for name, module in self.parts.items():
            module.load_state_dict(ckpt["parts"][name])
        self.opt.load_state_dict(ckpt["opt"])
        self.ema.load(ckpt["ema"])
        self.progress.update(step=ckpt["step"], seconds=ckpt["seconds"])
        self.loss_log = ckpt["loss_log"]
        self.sessions = ckpt["sessions"]
        self._checkpoint = None
        _log(f"resumed from {self.out / CHECKPOINT}: step {self.step}, {self.seconds / 60:.2f} min trained")
        return int(ckpt["next_id"])

    def train(self) -> bool:
        """Train until the budget is spent or this command's deadline; checkpoint; True when the budget is spent."""
        next_id = max(self._resume(), self.pool.P)
        start_step = self.step
        t0 = time.perf_counter()
        self.pool.fill(next_id)
        self._caption_ids(next_id - self.pool.P, next_id)
        self.pool.set_encoder(partial(encode_posterior, self.vae))
        _log(f"pool: {self.pool.P} objects × {self.pool.V} views rendered, encoded and captioned in "
             f"{time.perf_counter() - t0:.1f} s")
        for m in self.parts.values():
            m.train()

        def report(loss: float, rate: float, steps: int) -> None:
            self.loss_log.append([steps, round(self.seconds / 60, 2), round(loss, 4)])
            _log(f"step {steps} | loss {loss:.4f} | lr {self._lr():.2e} | {rate:.1f} it/s | "
                 f"{self.seconds / 60:.2f}/{self.cfg.minutes:g} min")

        run_steps(self.progress, ("step", "seconds"), step=lambda i: self.unet.first_step(lambda: self._train_step(i)),
                  refresh=self._refresh, stop=self._done, log_due=self._done, report=report,
                  log_every_s=self.cfg.log_every_s, device=self.device)

        self.sessions.append({"device": self.device_name, "command": self.command, "start_step": start_step,
                              "end_step": self.step, "wall_minutes": round((time.time() - self.t_start) / 60, 2),
                              "compiled": self.unet.compiled})
        self.save_checkpoint()
        _log(f"checkpoint saved: step {self.step}, {self.seconds / 60:.2f}/{self.cfg.minutes:g} min trained")
        return self.budget_spent()

    def ema_parts(self) -> dict[str, torch.nn.Module]:
        parts = {k: copy.deepcopy(m).eval() for k, m in self.parts.items()}
        self.ema.copy_to([p for m in parts.values() for p in m.parameters()])
        return parts

    def finalize(self) -> dict[str, Any]:
        from .evaluate_sd import evaluate_sd, write_sd_card
        from .model import folder_bytes

        sd_model.save_sd_model(self.ema_parts(), self.configs, self.cfg.vae_dir, self.model_dir)
        size = folder_bytes(self.model_dir)
        _log(f"model written to {self.model_dir} ({size / 1e6:.2f} MB)")
        t0 = time.perf_counter()
        metrics = evaluate_sd(self.model_dir, self.device, n_objects=self.cfg.eval_objects,
                              ddim_steps=self.cfg.eval_steps, cfg_scales=self.cfg.eval_cfg, grid_cfg=self.cfg.grid_cfg,
                              grid_path=self.model_dir / "samples.png", grid_rows=self.cfg.grid_rows)
        metrics["eval_seconds"] = round(time.perf_counter() - t0, 1)
        run = {"sessions": self.sessions, "scaling_factor": self.scaling_factor,
               "config": asdict(self.cfg), "device": self.device_name,
               "steps": self.step,
               "minutes": round(self.seconds / 60, 2), "loss_log": self.loss_log, "parameters": self.n_params,
               "folder_bytes": folder_bytes(self.model_dir), "command": self.command}
        write_eval_json(self.out / "eval.json", {"metrics": metrics, "run": run})
        write_sd_card(self.model_dir / "README.md", run, metrics)
        _log("held-out: " + ", ".join(f"CFG {k}: colour {v['color']:.3f} (shuffled {v['color_shuffled']:.3f}), shape "
                                      f"{v['shape']:.3f} (shuffled {v['shape_shuffled']:.3f})"
                                      for k, v in metrics["scores"].items()))
        if self.cfg.export_parts:
            export_parts(self.model_dir, Path(self.cfg.export_parts), extra=[self.out / "eval.json"], log=_log)
        return metrics

    command = "python tools/train_mini_sd.py"


def parse_args(argv: list[str] | None = None) -> SDTrainConfig:
    ap = common_parser("train_mini_sd", __doc__, out_help="run folder: tokenizer/, eval.json, model/", minutes=6.5,
                       minutes_help="training-loop budget in minutes (default 6.5)",
                       refresh_help="objects re-rendered per step (default 2)")
    ap.add_argument("--deadline-minutes", type=float, default=7.5,
                    help="stop training this many wall-clock minutes after the start and checkpoint; run the same "
                         "command again to resume (default 7.5)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (faster steps after ~1 min)")
    ap.add_argument("--vae-dir", help="VAE folder to copy (default: the shipped Hash3D-mini Zero123 model's vae/)")
    args = ap.parse_args(argv)
    return SDTrainConfig(**common_values(args, TINY_SD, ("vae_dir",), deadline_minutes=args.deadline_minutes,
                                         compile_unet=args.compile))


def main(argv: list[str] | None = None) -> int:
    return run_main(SDTrainer(parse_args(argv)), argv, "tools/train_mini_sd.py", _log,
                    "the model folder, its card and samples.png are written")


if __name__ == "__main__":
    sys.exit(main())
