"""SDS guidance from Stable Diffusion 1.x / 2.x with view-dependent prompts (text-to-3D)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...config.errors import ConfigError
from ..loading import load_stable_diffusion
from .refine import REFINE_STEPS, ddim_refine, ddim_scheduler, decode_latents
from .sds import TORCH_DTYPES, GuidanceConfig, GuidanceOutput, SDSGuidance

DIRECTIONS = ("side", "front", "back", "overhead")


@dataclass
class StableDiffusionGuidanceConfig(GuidanceConfig):
    pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
    guidance_scale: float = 100.0
    view_dependent_prompting: bool = True
    front_threshold: float = 45.0
    """|azimuth| below this (degrees) is the front view."""
    back_threshold: float = 45.0
    """|azimuth| above 180 minus this is the back view."""
    overhead_threshold: float = 60.0
    """Elevation above this (degrees) is the overhead view, whatever the azimuth."""


def view_direction(elevation: torch.Tensor, azimuth: torch.Tensor, cfg: StableDiffusionGuidanceConfig) -> torch.Tensor:
    """Index into DIRECTIONS per sample (tensor code, no host reads)."""
    az = torch.remainder(azimuth.float() + 180.0, 360.0) - 180.0
    direction = torch.zeros_like(az, dtype=torch.long)  # side
    direction = torch.where(az.abs() < cfg.front_threshold, torch.ones_like(direction), direction)
    direction = torch.where(az.abs() > 180.0 - cfg.back_threshold, torch.full_like(direction, 2), direction)
    return torch.where(elevation.float() > cfg.overhead_threshold, torch.full_like(direction, 3), direction)


def view_prompts(prompt: str, view_dependent: bool) -> list[str]:
    return [f"{prompt}, {d} view" if view_dependent else prompt for d in DIRECTIONS]


class StableDiffusionGuidance(SDSGuidance):
    """`guidance(rgb, elevation, azimuth, camera_distances)` -> GuidanceOutput; call `set_prompt` first."""

    def __init__(self, config: StableDiffusionGuidanceConfig, device: str | torch.device = "cpu"):
        device = torch.device(device)
        parts = load_stable_diffusion(
            config.pretrained_model_name_or_path, TORCH_DTYPES[config.dtype], device, config.local_files_only
        )
        super().__init__(config, parts.unet, parts.vae, parts.scheduler, device)
        self.text_encoder = parts.text_encoder
        self.tokenizer = parts.tokenizer
        self.ddim = ddim_scheduler(parts.scheduler)
        self.prompt: str | None = None

    @torch.no_grad()
    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    def set_prompt(self, prompt: str, negative_prompt: str = "") -> None:
        """Embed the prompt for every view direction; starts a new run (the cache is cleared)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError("the prompt is empty: give a text description, e.g. prompt=\"a fox playing a violin\"")
        cfg = self.config
        self.prompt = prompt
        self.cond_embeddings = self._encode_text(view_prompts(prompt, cfg.view_dependent_prompting))
        self.uncond_embeddings = self._encode_text([negative_prompt] * len(DIRECTIONS))
        self.reset()

    def forward(
        self,
        rgb: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        rgb_as_latents: bool = False,
    ) -> GuidanceOutput:
        """rgb [B, 3, H, W] in [0, 1]; cameras [B] in degrees / scene units.

        With rgb_as_latents the input is [B, 4, H, W] already in the scaled latent space (Latent-NeRF renders them): it
        is resized (bilinear) to the UNet's latent size and used as it is; the VAE encoder never runs."""
        if self.prompt is None:
            raise RuntimeError("call set_prompt(prompt) before using the Stable Diffusion guidance")
        latents = self.resize_latents(rgb) if rgb_as_latents else self.encode_images(rgb)
        return self.sds_from_latents(latents, elevation, azimuth, camera_distances)

    @torch.no_grad()
    def refine(
        self,
        rgb: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        strength: float,
        steps: int = REFINE_STEPS,
    ) -> torch.Tensor:
        """DreamGaussian's stage-2 target: renders [B, 3, H, W] denoised by DDIM from step int(steps·strength)
        (`refine.ddim_refine`; UNet calls go through the cache, keyed by camera and DDIM step) -> images
        [B, 3, image_size, image_size] in [0, 1]."""
        if self.prompt is None:
            raise RuntimeError("call set_prompt(prompt) before using the Stable Diffusion guidance")
        cameras = tuple(c.to(self.device).float() for c in (elevation, azimuth, camera_distances))
        context = self.conditioning(*cameras)

        def guided_epsilon(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._predict_noise(x_t, t, context, self.cache_keys(*cameras, t))

        latents = ddim_refine(guided_epsilon, self.encode_images(rgb.detach()), self.ddim, strength, self.generator, steps)
        return decode_latents(self.vae, latents)

    def conditioning(self, elevation: torch.Tensor, azimuth: torch.Tensor, camera_distances: torch.Tensor) -> torch.Tensor:
        direction = view_direction(elevation, azimuth, self.config)
        return torch.cat([self.cond_embeddings[direction], self.uncond_embeddings[direction]])

    def resize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 4, H, W] -> [B, 4, h, w] at the UNet's sample size (float32, differentiable)."""
        channels = int(self.unet.config.in_channels)
        if latents.dim() != 4 or latents.shape[1] != channels:
            raise ValueError(f"rgb_as_latents needs renders of {channels} channels [B, {channels}, H, W]; got "
                             f"{tuple(latents.shape)} (set the geometry and material to {channels} output channels)")
        size = int(self.unet.config.sample_size)
        latents = latents.float()
        if latents.shape[-2:] == (size, size):
            return latents
        return F.interpolate(latents, (size, size), mode="bilinear", align_corners=False)
