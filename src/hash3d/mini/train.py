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

import copy
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import model as mini_model
from .data import ViewPool
from .train_loop import (REFRESH_EVERY, EMA, BaseTrainConfig, CheckedUNet, autocast, build_seeded, common_parser,
                         common_values, cosine_lr, encode_posterior, export_parts, load_checkpoint, make_adamw,
                         make_logger, noised_v, optimize, run_main, run_steps, scheduler_alphas, setup_device,
                         write_checkpoint, write_eval_json)

__all__ = ["TrainConfig", "Trainer", "export_parts", "main", "parse_args"]

CHECKPOINT = "checkpoint.pt"
_VERSION = 1


@dataclass
class TrainConfig(BaseTrainConfig):
    minutes: float = 15.0
    """Training budget over all commands (VAE + diffusion), in minutes of training-loop time."""
    steps: int | None = None
    """Diffusion-phase budget in steps instead of minutes (tests, exact reproduction)."""
    vae_minutes: float | None = None
    """VAE phase budget (default: 10 % of --minutes, at most 2)."""
    vae_steps: int | None = None
    session_minutes: float = 8.0
    """Wall-clock limit of one command (from start, finalisation not counted); then checkpoint and exit."""
    vae_batch: int = 128
    vae_lr: float = 1e-3
    xl_fraction: float = 0.1
    """Share of pairs trained with the "xl" camera embedding (4th number Δradius = 0) instead of "stable"."""
    same_view: float = 0.05
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


_log = make_logger("mini")


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
        self.device, device_name = setup_device(self.cfg.device)
        self.cuda = self.device.type == "cuda"
        self.compile_render = self.cfg.compile_render == "on"
        self.t_start = time.time()
        self.state: dict[str, Any] = {
            "phase": "vae", "vae_step": 0, "step": 0, "vae_seconds": 0.0, "diffusion_seconds": 0.0,
            "next_id": 0, "scaling_factor": 1.0, "latent_mean": 0.0, "vae_log": [], "loss_log": [],
            "sessions": [], "device_name": device_name,
        }
        ckpt = self.out / CHECKPOINT
        resume = load_checkpoint(ckpt)
        preset = resume["preset"] if resume else self.cfg.preset
        if resume and resume["preset"] != self.cfg.preset:
            _log(f"checkpoint is of preset {resume['preset']!r}; continuing with it (not {self.cfg.preset!r})")
        self.preset = preset
        self.configs = resume["configs"] if resume else mini_model.model_configs(preset)
        self.parts = build_seeded(lambda: mini_model.build_parts(self.configs), self.cfg.seed, self.device)
        self.vae = self.parts["vae"]
        if self.cuda:  # cuDNN's bf16 convolutions are fastest channels-last
            self.parts["unet"].to(memory_format=torch.channels_last)
        self.trainable = [self.parts["unet"], self.parts["image_encoder"], self.parts["cc_projection"]]
        self.params = [p for m in self.trainable for p in m.parameters()]
        self.opt = make_adamw(self.params, self.cfg.lr, self.cfg.weight_decay)
        self.vae_opt = make_adamw(self.vae.parameters(), self.cfg.vae_lr, 0.0)
        self.ema = EMA(self.params, self.cfg.ema)
        self.alphas_cumprod = scheduler_alphas(self.configs["scheduler"], self.device)
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
        want_compile = self.cfg.compile_unet == "on" or (self.cfg.compile_unet == "auto" and self.cuda)
        self.unet = CheckedUNet(self.parts["unet"], want_compile, fallback=self.cfg.compile_unet != "on", log=_log)
        self.timing: dict[str, float | None] = {"render_per_object": None, "step": None, "last_refresh_end": None}

    # ------------------------------------------------------------------------------------------- state
    def _load(self, ckpt: dict[str, Any]) -> None:
        for name, module in self.parts.items():
            module.load_state_dict(ckpt["parts"][name])
        self.opt.load_state_dict(ckpt["opt"])
        self.vae_opt.load_state_dict(ckpt["vae_opt"])
        self.ema.load(ckpt["ema"])
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
            "ema": self.ema.state(),
            "state": self.state,
        }
        write_checkpoint(ckpt, self.out / CHECKPOINT)


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
    def _refresh(self) -> None:
        """Render new objects into the pool (every REFRESH_EVERY steps, for that many steps at once), timing both
        rendering and training so that the count adapts to rendering about `render_share` of the time."""
        k = REFRESH_EVERY
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
        with autocast(self.device):
            posterior = self.vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g, device=self.device)
            rec = self.vae.decode(z).sample.float()
        kl = posterior.kl().float().mean() / x[0].numel()
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-4 * kl
        return optimize(loss, self.vae_opt, list(self.vae.parameters()))

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

    # ------------------------------------------------------------------------------------------- diffusion phase
    def _lr(self, step: int) -> float:
        done, total = self._diffusion_budget()
        return cosine_lr(self.cfg.lr, step, self.cfg.warmup_steps, done / total if total > 0 else 1.0)

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
        x_t, t, target = noised_v(x0, self.alphas_cumprod, g)
        keep = (torch.rand(B, generator=g, device=self.device) >= cfg.cfg_drop).float()
        for group in self.opt.param_groups:
            group["lr"] = self._lr(step)
        with autocast(self.device):
            context = mini_model.condition(self.parts["image_encoder"], self.parts["cc_projection"], cond_rgb, camera,
                                           self.configs["feature_extractor"])
            context = context * keep.view(-1, 1, 1).to(context.dtype)
            c_concat = cond_lat * keep.view(-1, 1, 1, 1)
            x_in = torch.cat([x_t, c_concat], 1)
            if self.cuda:
                x_in = x_in.contiguous(memory_format=torch.channels_last)
            pred = self.unet(x_in, t, encoder_hidden_states=context).sample
        return optimize(F.mse_loss(pred.float(), target), self.opt, self.params, self.ema, step)

    @property
    def unet_compiled(self) -> bool:
        """Whether the UNet trains through torch.compile (False after a fallback to eager)."""
        return self.unet.compiled

    # ------------------------------------------------------------------------------------------- loop
    def _run_phase(self, phase: str) -> None:
        is_vae = phase == "vae"
        done = self._vae_done if is_vae else self._diffusion_done
        keys = ("vae_step", "vae_seconds") if is_vae else ("step", "diffusion_seconds")
        log = self.state["vae_log" if is_vae else "loss_log"]

        def step(index: int) -> torch.Tensor:
            if is_vae:
                return self._vae_step(index)
            return self.unet.first_step(lambda: self._diffusion_step(index))

        def report(loss: float, rate: float, steps: int) -> None:
            log.append([steps, round(self.state[keys[1]], 1), loss])
            render, step_s = self.timing["render_per_object"], self.timing["step"]
            share = (render * self.refresh_count) / (render * self.refresh_count + step_s) if render and step_s else 0
            extra = "" if is_vae else f" | lr {self._lr(steps - 1):.2e}"
            _log(f"{phase} step {steps} | loss {loss:.4f}{extra} | {rate:.1f} it/s | "
                 f"refresh {self.refresh_count} obj/step ({100 * share:.0f}% of time rendering) | "
                 f"trained {self._trained_minutes():.2f}/{self.cfg.minutes:g} min | "
                 f"session {(time.time() - self.t_start) / 60:.2f}/{self.cfg.session_minutes:g} min")

        self.timing["last_refresh_end"] = None
        run_steps(self.state, keys, step=step, refresh=self._refresh, stop=lambda: done() or self._session_over(),
                  log_due=done, report=report, log_every_s=self.cfg.log_every_s, device=self.device, name=phase,
                  checkpoint=self.save_checkpoint, checkpoint_every_s=self.cfg.checkpoint_every_s)

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
            self.pool.set_encoder(partial(encode_posterior, self.vae))
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
        self.ema.copy_to([p for name in ("unet", "image_encoder", "cc_projection") for p in parts[name].parameters()])
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
        write_eval_json(self.out / "eval.json", result["metrics"])
        write_card(model_dir / "README.md", self, result["metrics"])
        _log("held-out: " + ", ".join(
            f"{k} PSNR {v['psnr']:.2f} dB / IoU {v['iou']:.3f}" for k, v in result["metrics"]["scores"].items()))
        _log(f"model card and samples.png written; folder {mini_model.folder_bytes(model_dir) / 1e6:.2f} MB")
        if self.cfg.export_parts:
            export_parts(model_dir, Path(self.cfg.export_parts), extra=[self.out / "eval.json"], log=_log)
        return result["metrics"]


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    ap = common_parser("train_mini", __doc__,
                       out_help="run folder: checkpoint.pt, eval.json, model/ (resumes if present)",
                       minutes=15.0, minutes_help="total training budget over all commands (default 15)",
                       refresh_help="objects re-rendered per step (default: automatic)")
    ap.add_argument("--session-minutes", type=float, default=8.0,
                    help="stop this command after this many minutes (checkpoint; run again to resume). Default 8")
    ap.add_argument("--vae-steps", type=int, help="VAE budget in steps instead of minutes")
    ap.add_argument("--vae-minutes", type=float, help="VAE budget (default 10%% of --minutes, at most 2)")
    ap.add_argument("--pool-views", type=int)
    ap.add_argument("--compile-render", choices=["on", "off"], help="torch.compile the renderer (default off)")
    ap.add_argument("--compile-unet", choices=["auto", "on", "off"],
                    help="torch.compile the UNet (default auto: on a GPU, eager if compiling fails)")
    args = ap.parse_args(argv)
    return TrainConfig(**common_values(args, TINY, ("vae_steps", "vae_minutes", "pool_views", "compile_render",
                                                    "compile_unet"),
                                       session_minutes=args.session_minutes, tiny=args.tiny))


def main(argv: list[str] | None = None) -> int:
    return run_main(Trainer(parse_args(argv)), argv, "tools/train_mini.py", _log,
                    "the budget is spent and the model folder is written")


if __name__ == "__main__":
    sys.exit(main())
