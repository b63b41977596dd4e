"""What the two mini trainers share (`train`: Hash3D-mini Zero123, `train_sd`: Hash3D-mini-sd): the common config
fields and CLI flags, device set-up, AdamW + EMA, v-prediction targets with the warm-up/cosine learning rate, the
UNet call through torch.compile with an eager fallback, the timed step loop (pool refresh, loss curve, progress
lines, periodic checkpoints), atomic checkpoints, the exported folder in parts, and `main`'s finish.

Each trainer passes its model-specific pieces (a step, its budget, its log line) in as functions.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["REFRESH_EVERY", "BaseTrainConfig", "CheckedUNet", "EMA", "autocast", "build_seeded", "common_parser",
           "common_values", "cosine_lr", "encode_posterior", "export_parts", "load_checkpoint", "make_adamw",
           "make_logger", "noised_v", "optimize", "run_main", "run_steps", "scheduler_alphas", "setup_device",
           "write_checkpoint", "write_eval_json"]

REFRESH_EVERY = 8
"""Steps between pool refreshes (rendering syncs with the GPU: it is done in batches, for that many steps at once)."""


@dataclass
class BaseTrainConfig:
    """Fields both mini trainers have (each config redeclares the defaults that differ)."""

    out: str
    minutes: float = 15.0
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


def make_logger(name: str) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    return log


# ----------------------------------------------------------------------------------------------- set-up


def setup_device(name: str) -> tuple[torch.device, str]:
    """The device ("auto": CUDA if there is one) and its name for the records; TF32 matmuls on CUDA."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return device, torch.cuda.get_device_name(device)
    return device, "cpu"


def build_seeded(build: Callable[[], dict[str, torch.nn.Module]], seed: int,
                 device: torch.device) -> dict[str, torch.nn.Module]:
    """`build()` on `device` with the global RNG seeded by `seed`, leaving the caller's RNG state as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            return build()


def scheduler_alphas(scheduler_config: dict[str, Any], device: torch.device) -> torch.Tensor:
    """ᾱ_t of the training scheduler (the model folder's DDPM config), float32 on `device`."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")
    sc = DDPMScheduler(**{k: scheduler_config[k] for k in keys if k in scheduler_config})
    return sc.alphas_cumprod.float().to(device)


def make_adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)


class EMA:
    """Float32 exponential moving averages of `params` (exported instead of the raw weights); the decay warms up as
    min(decay, (1 + step) / (10 + step))."""

    def __init__(self, params: Sequence[torch.Tensor], decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in params]

    def update(self, params: Sequence[torch.Tensor], step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], 1 - decay)

    def state(self) -> list[torch.Tensor]:
        return [e.cpu() for e in self.shadow]

    def load(self, saved: Sequence[torch.Tensor]) -> None:
        for e, s in zip(self.shadow, saved):
            e.copy_(s.to(e.device))

    @torch.no_grad()
    def copy_to(self, params: Sequence[torch.Tensor]) -> None:
        for p, e in zip(params, self.shadow):
            p.copy_(e.to(p.dtype))


def optimize(loss: torch.Tensor, opt: torch.optim.Optimizer, params: Sequence[torch.Tensor], ema: EMA | None = None,
             step: int = 0) -> torch.Tensor:
    """Backpropagate `loss` into fresh gradients, clip them to norm 1, step, update the EMA; the loss, detached."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if ema is not None:
        ema.update(params, step)
    return loss.detach()


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def cosine_lr(base: float, step: int, warmup_steps: int, frac: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 10 % at `frac` = share of the budget spent."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    return base * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def noised_v(x0: torch.Tensor, alphas_cumprod: torch.Tensor, g: torch.Generator):
    """t uniform, noise from `g` (in that order); returns (x_t, t, v-prediction target)."""
    t = torch.randint(0, alphas_cumprod.shape[0], (x0.shape[0],), generator=g, device=x0.device)
    noise = torch.randn(x0.shape, generator=g, device=x0.device)
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return x_t, t, ab.sqrt() * noise - (1 - ab).sqrt() * x0


@torch.no_grad()
def encode_posterior(vae, rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> [B, 8, h, w]: the VAE posterior's mean and std stacked. The pool keeps both: targets are
    posterior samples (as the guidance encodes renders), and the Zero123 input view is the mean (the unscaled mode
    latents the guidance concatenates)."""
    posterior = vae.encode(rgb.float() * 2 - 1).latent_dist
    return torch.cat([posterior.mean, posterior.std], 1).float()


class CheckedUNet:
    """The UNet's training call, through torch.compile when asked. Compiling happens on the first call, so the first
    training step runs through `first_step`: if it fails there the UNet falls back to eager and the step is redone
    (before the optimiser step nothing has changed; steps draw from their own generators), unless `fallback` is off
    (compiling asked for explicitly)."""

    def __init__(self, unet: torch.nn.Module, compile: bool, fallback: bool, log: Callable[[str], None]):
        self.eager = unet
        self.fn = torch.compile(unet) if compile else unet
        self.fallback = fallback
        self.checked = not compile
        self.log = log

    @property
    def compiled(self) -> bool:
        """Whether the UNet trains through torch.compile (False after a fallback to eager)."""
        return self.fn is not self.eager

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def first_step(self, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.checked:
            return step()
        try:
            loss = step()
        except Exception as err:  # noqa: BLE001 - any compiler failure
            if not self.fallback:
                raise
            self.log(f"torch.compile of the UNet failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                     "training eagerly")
            self.fn = self.eager
            loss = step()
        self.checked = True
        return loss


# ----------------------------------------------------------------------------------------------- the loop


def run_steps(progress: MutableMapping[str, Any], keys: tuple[str, str], *, step: Callable[[int], torch.Tensor],
              refresh: Callable[[], None], stop: Callable[[], bool], log_due: Callable[[], bool],
              report: Callable[[float, float, int], None], log_every_s: float, device: torch.device, name: str = "",
              checkpoint: Callable[[], None] | None = None, checkpoint_every_s: float = math.inf) -> None:
    """Train until `stop()`: refresh the pool every REFRESH_EVERY steps, count steps and loop seconds into
    `progress[keys[0]]` / `progress[keys[1]]` (checkpoint time not counted), and every `log_every_s` (or when
    `log_due()`) pass the interval's mean loss, the steps per second and the step count to `report`. A non-finite
    loss stops training with an error."""
    step_key, seconds_key = keys
    loss_sum = torch.zeros((), device=device)
    n_sum, last_log = 0, time.time()
    last_ckpt = t_prev = last_log
    while not stop():
        index = progress[step_key]
        if index % REFRESH_EVERY == 0:
            refresh()
        loss_sum += step(index)
        n_sum += 1
        now = time.time()
        progress[seconds_key] += now - t_prev
        t_prev = now
        progress[step_key] = index + 1
        if now - last_log >= log_every_s or log_due():
            mean = (loss_sum / max(1, n_sum)).item()
            if not math.isfinite(mean):
                raise FloatingPointError(f"{name + ' ' if name else ''}loss is {mean} at step {index + 1}")
            report(mean, n_sum / max(1e-9, now - last_log), index + 1)
            loss_sum.zero_()
            n_sum, last_log = 0, now
        if checkpoint is not None and now - last_ckpt >= checkpoint_every_s:
            checkpoint()
            last_ckpt = now
            t_prev = time.time()  # saving is not training time


# ----------------------------------------------------------------------------------------------- files


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def write_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """Written to a temporary file first, so that an interrupted save leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def export_parts(model_dir: Path, dest: Path, extra: Sequence[Path] = (), part_bytes: int = 15 * 2**20,
                 log: Callable[[str], None] = make_logger("mini")) -> list[Path]:
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
    log(f"exported {len(written)} files to {dest} (rebuild: cat {model_dir.name}.tar.part* | tar xf -)")
    return written


def write_eval_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------- command line


def common_parser(prog: str, doc: str, *, out_help: str, minutes: float, minutes_help: str,
                  refresh_help: str) -> argparse.ArgumentParser:
    """A parser with the flags both `tools/train_mini*.py` take (with their per-trainer defaults and help)."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help=out_help)
    ap.add_argument("--minutes", type=float, default=minutes, help=minutes_help)
    ap.add_argument("--tiny", action="store_true", help="tiny model and data, a few steps: a CPU smoke test")
    ap.add_argument("--steps", type=int, help="budget in steps instead of minutes")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--pool-objects", type=int)
    ap.add_argument("--refresh", type=int, help=refresh_help)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--eval-objects", type=int)
    ap.add_argument("--model-dir", help="where to write the model folder (default OUT/model)")
    ap.add_argument("--export-parts", help="also write the folder as <=15 MiB tar parts + card + picture here")
    return ap


def common_values(args: argparse.Namespace, tiny_preset: dict[str, Any], optional: Sequence[str],
                  **fixed: Any) -> dict[str, Any]:
    """Config values: `tiny_preset` if --tiny, then `fixed`, then each common or `optional` flag that was given."""
    values: dict[str, Any] = dict(tiny_preset) if args.tiny else {}
    values.update(out=args.out, minutes=args.minutes, device=args.device, **fixed)
    for key in ("steps", "batch", "lr", "pool_objects", "refresh", "seed", "eval_objects", "model_dir",
                "export_parts", *optional):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    return values


def run_main(trainer, argv: list[str] | None, tool: str, log: Callable[[str], None], done: str) -> int:
    """Train one command's share; write the model folder when the budget is spent."""
    trainer.command = f"python {tool} " + " ".join(sys.argv[1:] if argv is None else argv)
    if trainer.train():
        trainer.finalize()
        log(f"done: {done}")
    else:
        log("not finished: run the same command again to resume")
    return 0
