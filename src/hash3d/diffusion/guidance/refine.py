"""DreamGaussian's stage-2 target: an SDEdit-style DDIM denoise of the renders' latents (`refine`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler

REFINE_STEPS = 50


def ddim_scheduler(scheduler) -> DDIMScheduler:
    """DDIM with the model's noise schedule and SD 2.1-base's DDIM settings (DreamGaussian loads that scheduler)."""
    config = {**dict(scheduler.config), "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}
    return DDIMScheduler.from_config(config)


def check_strength(strength: float) -> None:
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"refine strength must be in [0, 1); got {strength}")


@torch.no_grad()
def ddim_refine(
    guided_epsilon: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    scheduler: DDIMScheduler,
    strength: float,
    generator: torch.Generator,
    steps: int = REFINE_STEPS,
) -> torch.Tensor:
    """Noise `latents` to DDIM step int(steps·strength) of `steps` and denoise the remaining steps with
    `guided_epsilon(x_t, t [B]) -> ε̂`. DreamGaussian's sense of strength: a higher one starts later, at less noise
    (0.8 runs the last 10 of 50 steps)."""
    check_strength(strength)
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps = scheduler.timesteps[int(steps * strength) :]
    latents = latents.float()
    if strength > 0:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        latents = scheduler.add_noise(latents, noise, timesteps[:1])
    for t in timesteps:
        eps = guided_epsilon(latents, t.expand(latents.shape[0]))
        latents = scheduler.step(eps.float(), int(t), latents).prev_sample  # a host int: its tables stay on the CPU
    return latents


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents -> images [B, 3, H, W] in [0, 1]."""
    dtype = next(vae.parameters()).dtype
    images = vae.decode((latents / vae.config.scaling_factor).to(dtype)).sample
    return ((images.float() + 1) / 2).clamp(0, 1)
