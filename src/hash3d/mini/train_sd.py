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

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
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

__all__ = ["SD_ELEVATION_RANGE", "TINY_SD", "SDTrainConfig", "SDTrainer", "main", "parse_args"]

SD_ELEVATION_RANGE = (-10.0, 85.0)
CHECKPOINT = "checkpoint.pt"


@dataclass
class SDTrainConfig:
    out: str
    minutes: float = 6.5
    """Training-loop budget of the one command, in minutes (pool rendering, export and evaluation come on top)."""
    deadline_minutes: float = 7.5
    """Wall-clock limit of training from the command's start: training stops there even if `minutes` is not spent
    (checkpoint; run again to resume), so that export and evaluation still fit a 10-minute command."""
    steps: int | None = None
    """Budget in steps instead of minutes (tests, exact reproduction)."""
    preset: str = "default"
    batch: int = 256
    lr: float = 3e-4
    warmup_steps: int = 300
    weight_decay: float = 0.01
    ema: float = 0.999
    cfg_drop: float = 0.1
    pool_objects: int = 4096
    pool_views: int = 8
    refresh: int = 2
    """Objects re-rendered per step (in batches every 8 steps)."""
    compile_unet: bool = False
    vae_dir: str = str(MINI_MODEL / "vae")
    seed: int = 0
    device: str = "auto"
    eval_objects: int = 256
    eval_steps: int = 50
    eval_cfg: tuple[float, ...] = (1.0, 3.0, 7.5)
    grid_cfg: float = 7.5
    grid_rows: int = 8
    model_dir: str | None = None
    export_parts: str | None = None
    """Also write the model folder as a tar split into <= 15 MiB parts, plus card and picture, into this folder."""
    log_every_s: float = 30.0


TINY_SD = dict(preset="tiny", batch=4, pool_objects=8, pool_views=3, steps=3, warmup_steps=2, eval_objects=4,
               eval_steps=3, eval_cfg=(1.0, 3.0), grid_rows=2, refresh=1, log_every_s=5.0)
REFRESH_EVERY = 8


def _log(msg: str) -> None:
    print(f"[mini-sd {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class SDTrainer:
    def __init__(self, cfg: SDTrainConfig):
        from diffusers import AutoencoderKL, DDPMScheduler
        from transformers import CLIPTokenizer

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.model_dir = Path(cfg.model_dir) if cfg.model_dir else self.out / "model"
        path = self.out / CHECKPOINT
        self._checkpoint = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
        if self._checkpoint is not None and self._checkpoint["preset"] != cfg.preset:
            raise ValueError(f"{path} is a {self._checkpoint['preset']!r} run, not {cfg.preset!r}: use the same options "
                             "as the first command, or another --out")
        name = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.device_name = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        self.configs = sd_model.sd_configs(cfg.preset)
        with torch.random.fork_rng(devices=[self.device] if self.cuda else []):
            torch.manual_seed(cfg.seed)
            with torch.device(self.device):
                self.parts = sd_model.build_sd_parts(self.configs)
        if self.cuda:
            self.parts["unet"].to(memory_format=torch.channels_last)
        self.vae = AutoencoderKL.from_pretrained(cfg.vae_dir).to(self.device).eval().requires_grad_(False)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        max_length = self.configs["tokenizer"]["model_max_length"]
        self.tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(self.out / "tokenizer", max_length, WORDS))
        self.uncond_tokens = self._tokenize([""])[0]
        sc = self.configs["scheduler"]
        self.alphas_cumprod = DDPMScheduler(num_train_timesteps=sc["num_train_timesteps"],
                                            beta_schedule=sc["beta_schedule"]).alphas_cumprod.float().to(self.device)
        self.params = [p for m in self.parts.values() for p in m.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        self.ema = [p.detach().clone().float() for p in self.params]
        self.unet_fn = torch.compile(self.parts["unet"]) if cfg.compile_unet else self.parts["unet"]
        self._compile_checked = not cfg.compile_unet
        self.pool = ViewPool(cfg.pool_objects, cfg.pool_views, self.device, elevation_range=SD_ELEVATION_RANGE)
        # token ids of every pool object's caption with each view suffix: [P, directions, max_length]
        self.tokens = torch.zeros(cfg.pool_objects, 4, max_length, dtype=torch.long, device=self.device)
        self.t_start = time.time()
        self.sessions: list[dict[str, Any]] = []
        self.step = 0
        self.seconds = 0.0
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

    @torch.no_grad()
    def _encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> posterior mean and std stacked [B, 8, h, w] (targets are posterior samples)."""
        posterior = self.vae.encode(rgb.float() * 2 - 1).latent_dist
        return torch.cat([posterior.mean, posterior.std], 1).float()

    def _refresh(self) -> None:
        start = self.pool.next_id
        self.pool.refresh(self.cfg.refresh * REFRESH_EVERY)
        self._caption_ids(start, self.pool.next_id)

    # ------------------------------------------------------------------------------------------- training
    def _lr(self) -> float:
        warm = min(1.0, (self.step + 1) / max(1, self.cfg.warmup_steps))
        if self.cfg.steps is not None:
            frac = self.step / max(1, self.cfg.steps)
        else:
            frac = self.seconds / max(1e-9, 60 * self.cfg.minutes)
        return self.cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    def budget_spent(self) -> bool:
        if self.cfg.steps is not None:
            return self.step >= self.cfg.steps
        return self.seconds >= 60 * self.cfg.minutes

    def _done(self) -> bool:
        return time.time() - self.t_start >= 60 * self.cfg.deadline_minutes or self.budget_spent()

    def _train_step(self) -> torch.Tensor:
        cfg, pool = self.cfg, self.pool
        g = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + self.step)
        p, v = pool.sample_views(cfg.batch, g)
        direction = views_direction(pool.elevation[p, v], pool.azimuth[p, v])
        tokens = self.tokens[p, direction]
        drop = torch.rand(cfg.batch, generator=g, device=self.device) < cfg.cfg_drop
        tokens = torch.where(drop[:, None], self.uncond_tokens[None], tokens)
        mean, std = pool.latents[p, v].chunk(2, dim=1)
        x0 = (mean + std * torch.randn(mean.shape, generator=g, device=self.device)) * self.scaling_factor
        t = torch.randint(0, self.alphas_cumprod.shape[0], (cfg.batch,), generator=g, device=self.device)
        noise = torch.randn(x0.shape, generator=g, device=self.device)
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        target = ab.sqrt() * noise - (1 - ab).sqrt() * x0  # v
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            states = self.parts["text_encoder"](tokens)[0]
            if self.cuda:
                x_t = x_t.contiguous(memory_format=torch.channels_last)
            pred = self.unet_fn(x_t, t, encoder_hidden_states=states).sample
        loss = F.mse_loss(pred.float(), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        decay = min(cfg.ema, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.ema, [q.detach().float() for q in self.params], 1 - decay)
        return loss.detach()

    def _checked_step(self) -> torch.Tensor:
        """A training step; the first one with a compiled UNet falls back to eager if compiling fails (compiling
        happens there, before the optimiser step, so the step is simply redone)."""
        if self._compile_checked:
            return self._train_step()
        self._compile_checked = True
        try:
            return self._train_step()
        except Exception as err:  # noqa: BLE001 - any compiler failure
            _log(f"torch.compile of the UNet failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                 "training eagerly")
            self.unet_fn = self.parts["unet"]
            return self._train_step()

    def save_checkpoint(self) -> None:
        ckpt = {"version": 1, "preset": self.cfg.preset, "parts": {k: m.state_dict() for k, m in self.parts.items()},
                "opt": self.opt.state_dict(), "ema": [e.cpu() for e in self.ema], "step": self.step,
                "seconds": self.seconds, "loss_log": self.loss_log, "next_id": self.pool.next_id,
                "sessions": self.sessions}
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(ckpt, tmp)
        tmp.replace(self.out / CHECKPOINT)

    def _resume(self) -> int:
        """Load OUT/checkpoint.pt if there is one; returns the pool's next object id (0 for a fresh run)."""
        ckpt = self._checkpoint
        if ckpt is None:
            return 0
        for name, module in self.parts.items():
            module.load_state_dict(ckpt["parts"][name])
        self.opt.load_state_dict(ckpt["opt"])
        for e, saved in zip(self.ema, ckpt["ema"]):
            e.copy_(saved.to(self.device))
        self.step, self.seconds, self.loss_log = ckpt["step"], ckpt["seconds"], ckpt["loss_log"]
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
        self.pool.set_encoder(self._encode)
        _log(f"pool: {self.pool.P} objects × {self.pool.V} views rendered, encoded and captioned in "
             f"{time.perf_counter() - t0:.1f} s")
        for m in self.parts.values():
            m.train()
        loss_sum, n_sum, last_log = torch.zeros((), device=self.device), 0, time.time()
        t_prev = time.time()
        while not self._done():
            if self.step % REFRESH_EVERY == 0:
                self._refresh()
            loss_sum += self._checked_step()
            n_sum += 1
            self.step += 1
            now = time.time()
            self.seconds += now - t_prev
            t_prev = now
            if now - last_log >= self.cfg.log_every_s or self._done():
                loss = (loss_sum / max(1, n_sum)).item()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss} at step {self.step}")
                self.loss_log.append([self.step, round(self.seconds / 60, 2), round(loss, 4)])
                _log(f"step {self.step} | loss {loss:.4f} | lr {self._lr():.2e} | {n_sum / max(1e-9, now - last_log):.1f} "
                     f"it/s | {self.seconds / 60:.2f}/{self.cfg.minutes:g} min")
                loss_sum.zero_()
                n_sum, last_log = 0, now
        self.sessions.append({"device": self.device_name, "command": self.command, "start_step": start_step,
                              "end_step": self.step, "wall_minutes": round((time.time() - self.t_start) / 60, 2),
                              "compiled": self.unet_fn is not self.parts["unet"]})
        self.save_checkpoint()
        _log(f"checkpoint saved: step {self.step}, {self.seconds / 60:.2f}/{self.cfg.minutes:g} min trained")
        return self.budget_spent()

    def ema_parts(self) -> dict[str, torch.nn.Module]:
        parts = {k: copy.deepcopy(m).eval() for k, m in self.parts.items()}
        params = [p for m in parts.values() for p in m.parameters()]
        with torch.no_grad():
            for p, e in zip(params, self.ema):
                p.copy_(e.to(p.dtype))
        return parts

    def finalize(self) -> dict[str, Any]:
        from .evaluate_sd import evaluate_sd, write_sd_card
        from .model import folder_bytes
        from .train import export_parts

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
        (self.out / "eval.json").write_text(json.dumps({"metrics": metrics, "run": run}, indent=2) + "\n")
        write_sd_card(self.model_dir / "README.md", run, metrics)
        _log("held-out: " + ", ".join(f"CFG {k}: colour {v['color']:.3f} (shuffled {v['color_shuffled']:.3f}), shape "
                                      f"{v['shape']:.3f} (shuffled {v['shape_shuffled']:.3f})"
                                      for k, v in metrics["scores"].items()))
        if self.cfg.export_parts:
            export_parts(self.model_dir, Path(self.cfg.export_parts), extra=[self.out / "eval.json"])
        return metrics

    command = "python tools/train_mini_sd.py"


def parse_args(argv: list[str] | None = None) -> SDTrainConfig:
    ap = argparse.ArgumentParser(prog="train_mini_sd", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder: tokenizer/, eval.json, model/")
    ap.add_argument("--minutes", type=float, default=6.5, help="training-loop budget in minutes (default 6.5)")
    ap.add_argument("--deadline-minutes", type=float, default=7.5,
                    help="stop training this many wall-clock minutes after the start and checkpoint; run the same "
                         "command again to resume (default 7.5)")
    ap.add_argument("--steps", type=int, help="budget in steps instead of minutes")
    ap.add_argument("--tiny", action="store_true", help="tiny model and data, a few steps: a CPU smoke test")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--pool-objects", type=int)
    ap.add_argument("--refresh", type=int, help="objects re-rendered per step (default 2)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (faster steps after ~1 min)")
    ap.add_argument("--vae-dir", help="VAE folder to copy (default: the shipped Hash3D-mini Zero123 model's vae/)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--eval-objects", type=int)
    ap.add_argument("--model-dir", help="where to write the model folder (default OUT/model)")
    ap.add_argument("--export-parts", help="also write the folder as <=15 MiB tar parts + card + picture here")
    args = ap.parse_args(argv)
    values: dict[str, Any] = dict(TINY_SD) if args.tiny else {}
    values.update(out=args.out, minutes=args.minutes, deadline_minutes=args.deadline_minutes, device=args.device,
                  compile_unet=args.compile)
    for key in ("steps", "batch", "lr", "pool_objects", "refresh", "vae_dir", "seed", "eval_objects", "model_dir",
                "export_parts"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    return SDTrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    trainer = SDTrainer(cfg)
    trainer.command = "python tools/train_mini_sd.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if trainer.train():
        trainer.finalize()
        _log("done: the model folder, its card and samples.png are written")
    else:
        _log("not finished: run the same command again to resume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
