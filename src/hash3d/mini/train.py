"""Train Hash3D-mini: a small Zero123-style novel-view model on procedural objects, on one GPU in minutes.

    python tools/train_mini.py --out outputs/mini --minutes 15          # or: python -m hash3d.mini.train ...

Two phases inside one time budget (`--minutes`, counted over all commands of the run):
1. VAE (default 10 % of the budget, at most 2 min): a 2-block AutoencoderKL (64 px <-> 32×32×4) on pool views plus
   a few random smooth images, L1 + L2 + tiny KL. Then it is frozen and `scaling_factor` = 1 / std of the latents.
2. Diffusion: UNet + CLIP image encoder + camera projection, jointly, v-prediction on the cosine schedule, 10 % of
   the conditions dropped (zeros for both the projected embedding and the input-view latents) for CFG, EMA.

Each command trains at most `--session-minutes` (default 8, so a command stays under 10 minutes), saves
`OUT/checkpoint.pt`, and exits; the same command again resumes. When the budget is spent it writes the model
folder (`OUT/model`, loadable by `hash3d.diffusion.loading.load_zero123`, fp16 safetensors), evaluates held-out
objects through that folder (DDIM 50, CFG) and writes the model card `README.md` and `samples.png` into it.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import shutil
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import model as mini_model
from .data import ViewPool

__all__ = ["TrainConfig", "Trainer", "main", "parse_args"]

CHECKPOINT = "checkpoint.pt"
_VERSION = 1


@dataclass
class TrainConfig:
    out: str
    minutes: float = 15.0
    """Training budget over all commands (VAE + diffusion), in minutes of training-loop time."""
    vae_minutes: float | None = None
    """VAE phase budget (default: 10 % of --minutes, at most 2)."""
    steps: int | None = None
    """Diffusion-phase budget in steps instead of minutes (tests, exact reproduction)."""
    vae_steps: int | None = None
    session_minutes: float = 8.0
    """Wall-clock limit of one command (from start, finalisation not counted); then checkpoint and exit."""
    preset: str = "default"
    batch: int = 256
    vae_batch: int = 128
    lr: float = 3e-4
    vae_lr: float = 1e-3
    warmup_steps: int = 300
    weight_decay: float = 0.01
    ema: float = 0.999
    cfg_drop: float = 0.1
    xl_fraction: float = 0.1
    """Share of pairs trained with the "xl" camera embedding (4th number Δradius = 0) instead of "stable"."""
    same_view: float = 0.05
    pool_objects: int = 4096
    pool_views: int = 8
    refresh: int | None = None
    """Objects re-rendered per step (in batches every 8 steps); default: automatic, so that rendering takes about
    `render_share` of the time."""
    render_share: float = 0.3
    compile_unet: str = "auto"
    """torch.compile the UNet's training forward/backward: "auto" (on a GPU, falling back to eager if compiling
    fails), "on" or "off". On a GPU the UNet also runs channels-last."""
    compile_render: str = "off"
    """torch.compile the sphere tracer's march step ("on"/"off"): faster rendering for ~1 min of compiling per
    command; off by default because the pool refresh adapts to the eager renderer's speed anyway."""
    seed: int = 0
    device: str = "auto"
    eval_objects: int = 64
    eval_steps: int = 50
    eval_cfg: tuple[float, ...] = (1.0, 2.0, 3.0)
    grid_cfg: float = 3.0
    grid_rows: int = 8
    model_dir: str | None = None
    export_parts: str | None = None
    """Also write the model folder as a tar split into <= 15 MiB parts, plus the card and picture, into this folder."""
    log_every_s: float = 30.0
    checkpoint_every_s: float = 180.0
    tiny: bool = False

    def resolved(self) -> "TrainConfig":
        cfg = copy.deepcopy(self)
        if cfg.vae_minutes is None:
            cfg.vae_minutes = min(2.0, 0.1 * cfg.minutes)
        if cfg.model_dir is None:
            cfg.model_dir = str(Path(cfg.out) / "model")
        return cfg


TINY = dict(preset="tiny", batch=4, vae_batch=4, pool_objects=8, pool_views=3, steps=3, vae_steps=2,
            eval_objects=2, eval_steps=4, grid_rows=2, warmup_steps=2, compile_render="off", compile_unet="off",
            log_every_s=5.0,
            eval_cfg=(1.0, 3.0))


def _log(msg: str) -> None:
    print(f"[mini {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_smooth_images(n: int, size: int, generator: torch.Generator, device) -> torch.Tensor:
    """Smooth random colour fields [n, 3, size, size] in [0, 1] (keeps the VAE general beyond clean renders)."""
    out = []
    for res in (2, 4, 8, 16):
        k = max(1, n // 4) if res != 16 else n - 3 * max(1, n // 4)
        if k <= 0:
            continue
        low = torch.rand(k, 3, res, res, generator=generator, device=device)
        out.append(F.interpolate(low, (size, size), mode="bicubic", align_corners=False).clamp(0, 1))
    return torch.cat(out)[:n]


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg.resolved()
        self.command = "python tools/train_mini.py " + " ".join(sys.argv[1:])  # main() replaces it with its argv
        self.out = Path(self.cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = _device(self.cfg.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.compile_render = self.cfg.compile_render == "on"
        self.t_start = time.time()
        self.state: dict[str, Any] = {
            "phase": "vae", "vae_step": 0, "step": 0, "vae_seconds": 0.0, "diffusion_seconds": 0.0,
            "next_id": 0, "scaling_factor": 1.0, "latent_mean": 0.0, "vae_log": [], "loss_log": [],
            "sessions": [], "device_name": torch.cuda.get_device_name(self.device) if self.cuda else "cpu",
        }
        ckpt = self.out / CHECKPOINT
        resume = torch.load(ckpt, map_location="cpu", weights_only=False) if ckpt.exists() else None
        preset = resume["preset"] if resume else self.cfg.preset
        if resume and resume["preset"] != self.cfg.preset:
            _log(f"checkpoint is of preset {resume['preset']!r}; continuing with it (not {self.cfg.preset!r})")
        self.preset = preset
        self.configs = resume["configs"] if resume else mini_model.model_configs(preset)
        with torch.random.fork_rng(devices=[self.device] if self.cuda else []):
            torch.manual_seed(self.cfg.seed)
            with torch.device(self.device):
                self.parts = mini_model.build_parts(self.configs)
        self.vae = self.parts["vae"]
        if self.cuda:  # cuDNN's bf16 convolutions are fastest channels-last
            self.parts["unet"].to(memory_format=torch.channels_last)
        self.trainable = [self.parts["unet"], self.parts["image_encoder"], self.parts["cc_projection"]]
        self.params = [p for m in self.trainable for p in m.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, betas=(0.9, 0.99), weight_decay=self.cfg.weight_decay)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=self.cfg.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.ema = [p.detach().clone().float() for p in self.params]
        self.alphas_cumprod = self._alphas_cumprod().to(self.device)
        if resume:
            self._load(resume)
            _log(f"resumed from {ckpt}: phase {self.state['phase']}, VAE step {self.state['vae_step']}, "
                 f"diffusion step {self.state['step']}, {self._trained_minutes():.2f} min trained")
        n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in self.parts.items()}
        self.n_params = n_params
        _log(f"device {self.state['device_name']}, preset {preset}, parameters "
             + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in n_params.items())
             + f" (fp16 folder ≈ {2 * sum(n_params.values()) / 1e6:.1f} MB)")
        self.pool = ViewPool(self.cfg.pool_objects, self.cfg.pool_views, self.device, self.compile_render)
        self.refresh_count = self.cfg.refresh if self.cfg.refresh is not None else 4
        unet = self.parts["unet"]
        want_compile = self.cfg.compile_unet == "on" or (self.cfg.compile_unet == "auto" and self.cuda)
        self.unet_fn = torch.compile(unet) if want_compile else unet
        self._compile_checked = False
        self.timing: dict[str, float | None] = {"render_per_object": None, "step": None, "last_refresh_end": None}

    # ------------------------------------------------------------------------------------------- state
    def _alphas_cumprod(self) -> torch.Tensor:
        from diffusers import DDPMScheduler

        sc = self.configs["scheduler"]
        return DDPMScheduler(num_train_timesteps=sc["num_train_timesteps"], beta_schedule=sc["beta_schedule"],
                             beta_start=sc["beta_start"], beta_end=sc["beta_end"]).alphas_cumprod.float()

    def _load(self, ckpt: dict[str, Any]) -> None:
        for name, module in self.parts.items():
            module.load_state_dict(ckpt["parts"][name])
        self.opt.load_state_dict(ckpt["opt"])
        self.vae_opt.load_state_dict(ckpt["vae_opt"])
        for e, saved in zip(self.ema, ckpt["ema"]):
            e.copy_(saved.to(self.device))
        device_name = self.state["device_name"]
        self.state.update(ckpt["state"])
        self.state["device_name"] = device_name  # this command's device (each session records its own)

    def save_checkpoint(self) -> None:
        self.state["next_id"] = self.pool.next_id
        ckpt = {
            "version": _VERSION,
            "preset": self.preset,
            "configs": self.configs,
            "train_config": asdict(self.cfg),
            "parts": {k: m.state_dict() for k, m in self.parts.items()},
            "opt": self.opt.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "ema": [e.cpu() for e in self.ema],
            "state": self.state,
        }
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, self.out / CHECKPOINT)

    # ------------------------------------------------------------------------------------------- budgets
    def _trained_minutes(self) -> float:
        return (self.state["vae_seconds"] + self.state["diffusion_seconds"]) / 60

    def _vae_done(self) -> bool:
        if self.cfg.vae_steps is not None:
            return self.state["vae_step"] >= self.cfg.vae_steps
        return self.state["vae_seconds"] >= 60 * self.cfg.vae_minutes

    def _diffusion_budget(self) -> tuple[float, float]:
        """(done, total) in steps or seconds."""
        if self.cfg.steps is not None:
            return float(self.state["step"]), float(self.cfg.steps)
        total = max(0.0, 60 * self.cfg.minutes - self.state["vae_seconds"])
        return self.state["diffusion_seconds"], total

    def _diffusion_done(self) -> bool:
        done, total = self._diffusion_budget()
        return done >= total

    def _session_over(self) -> bool:
        return time.time() - self.t_start >= 60 * self.cfg.session_minutes

    def finished(self) -> bool:
        return self._vae_done() and self._diffusion_done()

    # ------------------------------------------------------------------------------------------- data
    REFRESH_EVERY = 8  # steps between pool refreshes (rendering syncs with the GPU: do it in batches)

    def _refresh(self) -> None:
        """Render new objects into the pool (every REFRESH_EVERY steps, for that many steps at once), timing both
        rendering and training so that the count adapts to rendering about `render_share` of the time."""
        k = self.REFRESH_EVERY
        _sync(self.device)
        t0 = time.perf_counter()
        timing = self.timing
        if timing["last_refresh_end"] is not None:
            per_step = (t0 - timing["last_refresh_end"]) / k
            timing["step"] = per_step if timing["step"] is None else 0.7 * timing["step"] + 0.3 * per_step
        if self.cfg.refresh is None and timing["render_per_object"] and timing["step"]:
            share = self.cfg.render_share
            want = share / (1 - share) * timing["step"] / timing["render_per_object"]
            self.refresh_count = int(max(1, min(self.pool.P // (4 * k), round(want))))
        count = self.refresh_count * k
        self.pool.refresh(count)
        _sync(self.device)
        t1 = time.perf_counter()
        if count:
            per_obj = (t1 - t0) / count
            old = timing["render_per_object"]
            timing["render_per_object"] = per_obj if old is None else 0.7 * old + 0.3 * per_obj
        timing["last_refresh_end"] = t1

    def _generator(self, phase: int, step: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed((self.cfg.seed * 1_000_003 + phase * 7_919 + step) % 2**62)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    # ------------------------------------------------------------------------------------------- VAE phase
    def _vae_step(self, step: int) -> torch.Tensor:
        g = self._generator(1, step)
        B = self.cfg.vae_batch
        n_noise = max(1, B // 10) if B >= 10 else 0
        p, v = self.pool.sample_views(B - n_noise, g)
        x = self.pool.rgb[p, v].float()
        if n_noise:
            x = torch.cat([x, random_smooth_images(n_noise, x.shape[-1], g, self.device)])
        x = x * 2 - 1
        with self._autocast():
            posterior = self.vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g, device=self.device)
            rec = self.vae.decode(z).sample.float()
        kl = posterior.kl().float().mean() / x[0].numel()
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-4 * kl
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.vae_opt.step()
        return loss.detach()

    @torch.no_grad()
    def _freeze_vae(self) -> None:
        self.vae.eval().requires_grad_(False)
        flat = self.pool.rgb.flatten(0, 1)
        idx = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(self.cfg.seed))[:2048]
        images = flat[idx.to(self.device)].float() * 2 - 1

        def posterior_samples():
            posterior = self.vae.encode(images).latent_dist
            gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
            return posterior, posterior.sample(generator=gen).float()

        _, lat = posterior_samples()
        # Per-channel whitening, folded into the VAE's 1x1 convs: the raw channels' spreads differed by up to 8x,
        # so one global scaling_factor left the narrow channels almost drowned at every noise level.
        ch_mean, ch_std = lat.mean((0, 2, 3)), lat.std((0, 2, 3))
        mini_model.whiten_latents(self.vae, ch_mean, ch_std)
        posterior, lat = posterior_samples()
        std = lat.std().item()  # of posterior samples: what the guidance scales (encode_images samples)
        self.state["raw_channel_mean"] = [round(v, 4) for v in ch_mean.tolist()]
        self.state["raw_channel_std"] = [round(v, 4) for v in ch_std.tolist()]
        self.state["scaling_factor"] = 1.0 / std
        self.state["latent_mean"] = lat.mean().item()
        # the guidance samples the posterior of renders; its spread must be small next to the latents' own
        self.state["posterior_std_ratio"] = posterior.std.float().mean().item() / std
        self.configs["vae"]["scaling_factor"] = 1.0 / std
        self.vae.register_to_config(scaling_factor=1.0 / std)
        _log(f"VAE frozen: raw latent channels mean {self.state['raw_channel_mean']}, std "
             f"{self.state['raw_channel_std']} (whitened); latent std {std:.4f} (scaling_factor {1 / std:.4f}), "
             f"mean {lat.mean().item():+.4f}, posterior std / latent std {self.state['posterior_std_ratio']:.3f}")

    @torch.no_grad()
    def _encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> [B, 8, h, w]: the posterior's mean (the unscaled mode latents the guidance concatenates
        for its input view) and its std (targets are posterior samples, as the guidance encodes renders)."""
        posterior = self.vae.encode(rgb.float() * 2 - 1).latent_dist
        return torch.cat([posterior.mean, posterior.std], 1).float()

    # ------------------------------------------------------------------------------------------- diffusion phase
    def _lr(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, self.cfg.warmup_steps))
        done, total = self._diffusion_budget()
        frac = min(1.0, done / total) if total > 0 else 1.0
        return self.cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def _diffusion_step(self, step: int) -> torch.Tensor:
        cfg = self.cfg
        g = self._generator(2, step)
        B = cfg.batch
        pool = self.pool
        p, i, j = pool.sample_pairs(B, g, cfg.same_view)
        cond_rgb = pool.rgb[p, i].float()
        cond_lat = pool.latents[p, i, :4]
        mean, std = pool.latents[p, j].chunk(2, dim=1)
        x0 = (mean + std * torch.randn(mean.shape, generator=g, device=self.device)) * self.state["scaling_factor"]
        stable = torch.rand(B, generator=g, device=self.device) >= cfg.xl_fraction
        camera = mini_model.relative_camera(pool.elevation[p, i], pool.azimuth[p, i], pool.elevation[p, j],
                                            pool.azimuth[p, j], stable)
        t = torch.randint(0, self.alphas_cumprod.shape[0], (B,), generator=g, device=self.device)
        noise = torch.randn(x0.shape, generator=g, device=self.device)
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        target = ab.sqrt() * noise - (1 - ab).sqrt() * x0  # v
        keep = (torch.rand(B, generator=g, device=self.device) >= cfg.cfg_drop).float()
        for group in self.opt.param_groups:
            group["lr"] = self._lr(step)
        with self._autocast():
            context = mini_model.condition(self.parts["image_encoder"], self.parts["cc_projection"], cond_rgb, camera,
                                           self.configs["feature_extractor"])
            context = context * keep.view(-1, 1, 1).to(context.dtype)
            c_concat = cond_lat * keep.view(-1, 1, 1, 1)
            x_in = torch.cat([x_t, c_concat], 1)
            if self.cuda:
                x_in = x_in.contiguous(memory_format=torch.channels_last)
        self.opt.zero_grad(set_to_none=True)
        loss = self._unet_loss(x_in, t, context, target)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        decay = min(self.cfg.ema, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.params], 1 - decay)
        return loss.detach()

    @property
    def unet_compiled(self) -> bool:
        """Whether the UNet trains through torch.compile (False after a fallback to eager)."""
        return self.unet_fn is not self.parts["unet"]

    def _unet_loss(self, x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor, target: torch.Tensor):
        """v-prediction MSE, backpropagated. A compiled UNet that fails on its first call (compiling happens there)
        falls back to eager, unless compiling was asked for explicitly."""
        eager = self.parts["unet"]
        first_compiled = self.unet_compiled and not self._compile_checked

        def run(fn, retain: bool):
            with self._autocast():
                pred = fn(x_in, t, encoder_hidden_states=context).sample
            loss = F.mse_loss(pred.float(), target)
            loss.backward(retain_graph=retain)  # retained once, so that a failed compiled backward can be redone
            return loss

        if not first_compiled:
            return run(self.unet_fn, False)
        try:
            loss = run(self.unet_fn, True)
        except Exception as err:  # noqa: BLE001 - any compiler failure
            if self.cfg.compile_unet == "on":
                raise
            _log(f"torch.compile of the UNet failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                 "training eagerly")
            self.unet_fn = eager
            for p in self.params:
                p.grad = None
            loss = run(eager, False)
        self._compile_checked = True
        return loss

    # ------------------------------------------------------------------------------------------- loop
    def _run_phase(self, phase: str) -> None:
        is_vae = phase == "vae"
        done = self._vae_done if is_vae else self._diffusion_done
        step_fn = self._vae_step if is_vae else self._diffusion_step
        step_key, sec_key = ("vae_step", "vae_seconds") if is_vae else ("step", "diffusion_seconds")
        log = self.state["vae_log" if is_vae else "loss_log"]
        loss_sum = torch.zeros((), device=self.device)
        n_sum, last_log, last_ckpt = 0, time.time(), time.time()
        self.timing["last_refresh_end"] = None
        t_prev = time.time()
        while not done() and not self._session_over():
            step = self.state[step_key]
            if step % self.REFRESH_EVERY == 0:
                self._refresh()
            loss_sum += step_fn(step)
            n_sum += 1
            now = time.time()
            self.state[sec_key] += now - t_prev
            t_prev = now
            self.state[step_key] = step + 1
            if now - last_log >= self.cfg.log_every_s or done():
                loss = (loss_sum / max(1, n_sum)).item()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"{phase} loss is {loss} at step {step}")
                log.append([self.state[step_key], round(self.state[sec_key], 1), loss])
                rate = n_sum / max(1e-9, now - last_log)
                render, step_s = self.timing["render_per_object"], self.timing["step"]
                share = (render * self.refresh_count) / (render * self.refresh_count + step_s) if render and step_s else 0
                extra = "" if is_vae else f" | lr {self._lr(step):.2e}"
                _log(f"{phase} step {self.state[step_key]} | loss {loss:.4f}{extra} | {rate:.1f} it/s | "
                     f"refresh {self.refresh_count} obj/step ({100 * share:.0f}% of time rendering) | "
                     f"trained {self._trained_minutes():.2f}/{self.cfg.minutes:g} min | "
                     f"session {(now - self.t_start) / 60:.2f}/{self.cfg.session_minutes:g} min")
                loss_sum.zero_()
                n_sum, last_log = 0, now
            if now - last_ckpt >= self.cfg.checkpoint_every_s:
                self.save_checkpoint()
                last_ckpt = now
                t_prev = time.time()  # saving is not training time

    def train(self) -> bool:
        """Train until the budget or the session limit; returns True when the whole budget is spent."""
        session = {"device": self.state["device_name"], "command": self.command, "start_phase": self.state["phase"],
                   "start_step": self.state["step"], "start_vae_step": self.state["vae_step"]}
        t0 = time.perf_counter()
        self.pool.fill(self.state["next_id"] or self.pool.P)
        _sync(self.device)
        _log(f"pool: {self.pool.P} objects × {self.pool.V} views rendered in {time.perf_counter() - t0:.1f} s "
             f"(ids {self.pool.next_id - self.pool.P}..{self.pool.next_id - 1}; render compiled: {self.compile_render})")
        if self.state["phase"] == "vae":
            self.vae.train().requires_grad_(True)
            self._run_phase("vae")
            if self._vae_done():
                self._freeze_vae()
                self.state["phase"] = "diffusion"
        if self.state["phase"] == "diffusion":
            self.vae.eval().requires_grad_(False)
            if "scaling_factor" in self.state:
                self.vae.register_to_config(scaling_factor=self.state["scaling_factor"])
                self.configs["vae"]["scaling_factor"] = self.state["scaling_factor"]
            self.pool.set_encoder(self._encode)
            for m in self.trainable:
                m.train()
            self._run_phase("diffusion")
        session.update(end_step=self.state["step"], end_vae_step=self.state["vae_step"],
                       seconds=round(time.time() - self.t_start, 1))
        self.state["sessions"].append(session)
        self.save_checkpoint()
        _log(f"checkpoint saved: VAE step {self.state['vae_step']}, diffusion step {self.state['step']}, "
             f"{self._trained_minutes():.2f}/{self.cfg.minutes:g} min trained")
        return self.finished()

    # ------------------------------------------------------------------------------------------- output
    def ema_parts(self) -> dict[str, torch.nn.Module]:
        parts = {k: copy.deepcopy(m) for k, m in self.parts.items()}
        params = [p for name in ("unet", "image_encoder", "cc_projection") for p in parts[name].parameters()]
        with torch.no_grad():
            for p, e in zip(params, self.ema):
                p.copy_(e.to(p.dtype))
        return parts

    def finalize(self) -> dict[str, Any]:
        from .evaluate import evaluate, write_grid
        from .card import write_card

        model_dir = Path(self.cfg.model_dir)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        configs = copy.deepcopy(self.configs)
        configs["vae"]["scaling_factor"] = self.state["scaling_factor"]
        mini_model.save_model(self.ema_parts(), configs, model_dir)
        _log(f"model written to {model_dir} ({mini_model.folder_bytes(model_dir) / 1e6:.2f} MB)")
        t0 = time.perf_counter()
        result = evaluate(model_dir, self.device, n_objects=self.cfg.eval_objects, ddim_steps=self.cfg.eval_steps,
                          cfg_scales=self.cfg.eval_cfg, grid_cfg=self.cfg.grid_cfg)
        write_grid(result, model_dir / "samples.png", rows=self.cfg.grid_rows)
        result["metrics"]["eval_seconds"] = round(time.perf_counter() - t0, 1)
        (self.out / "eval.json").write_text(json.dumps(result["metrics"], indent=2) + "\n")
        write_card(model_dir / "README.md", self, result["metrics"])
        _log("held-out: " + ", ".join(
            f"{k} PSNR {v['psnr']:.2f} dB / IoU {v['iou']:.3f}" for k, v in result["metrics"]["scores"].items()))
        _log(f"model card and samples.png written; folder {mini_model.folder_bytes(model_dir) / 1e6:.2f} MB")
        if self.cfg.export_parts:
            export_parts(model_dir, Path(self.cfg.export_parts), extra=[self.out / "eval.json"])
        return result["metrics"]


def export_parts(model_dir: Path, dest: Path, extra: list[Path] = (), part_bytes: int = 15 * 2**20) -> list[Path]:
    """The model folder as `<name>.tar.partNN` files of at most `part_bytes`, plus README.md and samples.png, in
    `dest` (flat, few files). Rebuild with `cat <name>.tar.part* | tar xf -`."""
    dest.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(model_dir, arcname=model_dir.name)
    data = buf.getvalue()
    written = []
    for k in range(0, max(1, math.ceil(len(data) / part_bytes))):
        path = dest / f"{model_dir.name}.tar.part{k:02d}"
        path.write_bytes(data[k * part_bytes:(k + 1) * part_bytes])
        written.append(path)
    for f in [model_dir / "README.md", model_dir / "samples.png", *extra]:
        if Path(f).exists():
            shutil.copy(f, dest / Path(f).name)
            written.append(dest / Path(f).name)
    _log(f"exported {len(written)} files to {dest} (rebuild: cat {model_dir.name}.tar.part* | tar xf -)")
    return written


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    ap = argparse.ArgumentParser(prog="train_mini", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder: checkpoint.pt, eval.json, model/ (resumes if present)")
    ap.add_argument("--minutes", type=float, default=15.0, help="total training budget over all commands (default 15)")
    ap.add_argument("--session-minutes", type=float, default=8.0,
                    help="stop this command after this many minutes (checkpoint; run again to resume). Default 8")
    ap.add_argument("--tiny", action="store_true", help="tiny model and data, a few steps: a CPU smoke test")
    ap.add_argument("--steps", type=int, help="diffusion budget in steps instead of minutes")
    ap.add_argument("--vae-steps", type=int, help="VAE budget in steps instead of minutes")
    ap.add_argument("--vae-minutes", type=float, help="VAE budget (default 10%% of --minutes, at most 2)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--pool-objects", type=int)
    ap.add_argument("--pool-views", type=int)
    ap.add_argument("--refresh", type=int, help="objects re-rendered per step (default: automatic)")
    ap.add_argument("--compile-render", choices=["on", "off"], help="torch.compile the renderer (default off)")
    ap.add_argument("--compile-unet", choices=["auto", "on", "off"],
                    help="torch.compile the UNet (default auto: on a GPU, eager if compiling fails)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--eval-objects", type=int)
    ap.add_argument("--model-dir", help="where to write the model folder (default OUT/model)")
    ap.add_argument("--export-parts", help="also write the folder as <=15 MiB tar parts + card + picture here")
    args = ap.parse_args(argv)
    values: dict[str, Any] = dict(TINY) if args.tiny else {}
    values.update(out=args.out, minutes=args.minutes, session_minutes=args.session_minutes, tiny=args.tiny,
                  device=args.device)
    for key in ("steps", "vae_steps", "vae_minutes", "batch", "lr", "pool_objects", "pool_views", "refresh",
                "compile_render", "compile_unet", "seed", "eval_objects", "model_dir", "export_parts"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    trainer = Trainer(cfg)
    if argv is not None:
        trainer.command = "python tools/train_mini.py " + " ".join(argv)
    if trainer.train():
        trainer.finalize()
        _log("done: the budget is spent and the model folder is written")
    else:
        _log("not finished: run the same command again to resume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
