"""SDS guidance from Zero123-family novel-view models (Zero123-XL, Stable-Zero123; image-to-3D)."""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Literal

import torch

from ..loading import load_zero123
from .clip_input import clip_pixels
from .sds import TORCH_DTYPES, GuidanceConfig, GuidanceOutput, SDSGuidance


@dataclass
class Zero123GuidanceConfig(GuidanceConfig):
    pretrained_model_name_or_path: str = "ashawkey/stable-zero123-diffusers"
    guidance_scale: float = 3.0
    camera_embedding: Literal["auto", "stable", "xl"] = "auto"
    """stable: [Δpolar, sin Δaz, cos Δaz, polar of the input view]; xl: [Δpolar, sin Δaz, cos Δaz, Δradius];
    auto: stable when the model name contains 'stable', else xl."""
    cond_elevation_deg: float = 0.0
    cond_azimuth_deg: float = 0.0
    cond_camera_distance: float = 1.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.camera_embedding not in ("auto", "stable", "xl"):
            raise ValueError(f"camera_embedding must be 'auto', 'stable' or 'xl'; got {self.camera_embedding!r}")


def camera_embedding(
    elevation: torch.Tensor,
    azimuth: torch.Tensor,
    camera_distances: torch.Tensor,
    cond_elevation: float,
    cond_azimuth: float,
    cond_distance: float,
    kind: Literal["stable", "xl"],
) -> torch.Tensor:
    """Relative camera of each target view to the input view -> [B, 4]."""
    d_polar = torch.deg2rad(cond_elevation - elevation.float())  # polar = 90° - elevation
    d_az = torch.deg2rad(azimuth.float() - cond_azimuth)
    if kind == "stable":
        last = torch.full_like(d_polar, math.radians(90.0 - cond_elevation))
    else:
        last = camera_distances.float() - cond_distance
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), last], dim=-1)


class Zero123Guidance(SDSGuidance):
    """`guidance(rgb, elevation, azimuth, camera_distances)` -> GuidanceOutput; call `set_image` first."""

    def __init__(self, config: Zero123GuidanceConfig, device: str | torch.device = "cpu"):
        device = torch.device(device)
        parts = load_zero123(
            config.pretrained_model_name_or_path, TORCH_DTYPES[config.dtype], device, config.local_files_only
        )
        super().__init__(config, parts.unet, parts.vae, parts.scheduler, device)
        self.image_encoder = parts.image_encoder
        self.feature_extractor = parts.feature_extractor
        self.cc_projection = parts.cc_projection
        self.cc_dtype = next(self.cc_projection.parameters()).dtype
        kind = config.camera_embedding
        if kind == "auto":
            kind = "stable" if "stable" in config.pretrained_model_name_or_path.lower() else "xl"
        self.camera_kind = kind
        self.image_set = False

    @torch.no_grad()
    def set_image(
        self,
        image: torch.Tensor,
        elevation_deg: float | None = None,
        azimuth_deg: float | None = None,
        camera_distance: float | None = None,
    ) -> None:
        """The input view: image [3 or 4, H, W] or [H, W, 3 or 4] in [0, 1] (RGBA is put on white).

        Starts a new run (the cache is cleared). The input camera defaults to the config's cond_* values.
        """
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            raise ValueError("image must be a [C, H, W] or [H, W, C] tensor with C = 3 or 4, values in [0, 1]")
        if image.shape[0] not in (3, 4) and image.shape[-1] in (3, 4):
            image = image.permute(2, 0, 1)
        if image.shape[0] not in (3, 4):
            raise ValueError(f"image must have 3 (RGB) or 4 (RGBA) channels; got shape {list(image.shape)}")
        image = image.float().to(self.device)
        if image.shape[0] == 4:
            image = image[:3] * image[3:] + (1 - image[3:])
        cfg = self.config
        self.cond_camera = (
            cfg.cond_elevation_deg if elevation_deg is None else float(elevation_deg),
            cfg.cond_azimuth_deg if azimuth_deg is None else float(azimuth_deg),
            cfg.cond_camera_distance if camera_distance is None else float(camera_distance),
        )
        rgb = self.resize(image[None].clamp(0, 1))
        self.clip_embedding = self.image_encoder(self._clip_pixels(rgb).to(self.image_encoder.dtype)).image_embeds[:, None]
        self.cond_latents = self.vae.encode((rgb * 2 - 1).to(self.vae.dtype)).latent_dist.mode().float()
        self.image_set = True
        self.reset()

    def _clip_pixels(self, rgb: torch.Tensor) -> torch.Tensor:
        """The CLIP image processor's resize + normalisation, in torch (square input: a plain resize)."""
        return clip_pixels(rgb, self.feature_extractor)

    def conditioning(self, elevation, azimuth, camera_distances) -> torch.Tensor:
        camera = camera_embedding(
            elevation.to(self.device), azimuth.to(self.device), camera_distances.to(self.device),
            *self.cond_camera, self.camera_kind,
        )
        B = camera.shape[0]
        clip = self.clip_embedding.float().expand(B, -1, -1)
        cond = self.cc_projection(torch.cat([clip, camera[:, None]], dim=-1).to(self.cc_dtype))
        return torch.cat([cond, torch.zeros_like(cond)])

    def _unet_input(self, x_t: torch.Tensor) -> torch.Tensor:
        half = x_t.shape[0] // 2
        c_concat = self.cond_latents.expand(half, -1, -1, -1)
        return torch.cat([x_t, torch.cat([c_concat, torch.zeros_like(c_concat)]).to(x_t.dtype)], dim=1)

    def forward(
        self,
        rgb: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        rgb_as_latents: bool = False,
    ) -> GuidanceOutput:
        """rgb [B, 3, H, W] in [0, 1] (or latents with rgb_as_latents); cameras [B] in degrees / scene units."""
        if not self.image_set:
            raise RuntimeError("call set_image(image) before using the Zero123 guidance")
        latents = rgb.float() if rgb_as_latents else self.encode_images(rgb)
        return self.sds_from_latents(latents, elevation, azimuth, camera_distances)
