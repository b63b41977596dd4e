"""SDS guidance from the multi-view models MVDream (text) and ImageDream (text + image), and their DDIM refine.

A request is a *set* of `num_views` renders of one object at one timestep (DreamGaussian: azimuths a, a+90, a+180,
a+270 at one elevation). The UNet sees every set as one sample of F = num_views frames (ImageDream: plus its
reference frame, camera all zeros, latent replaced by the input image's), and each set's frames attend to each
other. Upstream recipes (DreamGaussian's mvdream_utils / imagedream_utils): grad = ε̂ − ε with no w(t), CFG 100
(MVDream) / 5 (ImageDream), loss 0.5·‖grad‖² / number of views, one t per set.

The Hash3D cache keys a set by its first view's camera and t (the other views sit at fixed offsets from it), the set
rolled first so that it starts at its view of smallest azimuth (`canonical_order`): a hit returns the stored
prediction of the whole set, every view and both CFG halves together. Rows go to the UNet in
view-major order (`multiview_blocks.ViewLayout`), so that row i of every (view, CFG half) group belongs to set i,
as the cache requires. Only noise mode applies (the multi-view UNet has no diffusers block structure for feature
reuse), and the calls run eagerly: CUDA graphs of split batches would pad across sets.

Cameras come in threestudio's convention (degrees; positive elevation = above; z up). The model's camera is the
camera-to-world matrix in that frame (which is MVDream's Blender frame: threestudio azimuth −90° is the front view)
with the translation normalised, flattened to 16 numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from ...data.cameras import orbit_c2w
from ...profiling import section
from ..loading import load_multiview
from .clip_input import clip_pixels
from .losses import sds_loss
from .refine import REFINE_STEPS, ddim_refine, ddim_scheduler, decode_latents
from .sds import TORCH_DTYPES, GuidanceConfig, GuidanceOutput, SDSGuidance, Weighting, epsilon_from_prediction

__all__ = ["MultiViewGuidance", "MultiViewGuidanceConfig", "canonical_order", "multiview_camera", "MVDREAM_MODEL", "IMAGEDREAM_MODEL"]

MVDREAM_MODEL = "ashawkey/mvdream-sd2.1-diffusers"
IMAGEDREAM_MODEL = "ashawkey/imagedream-ipmv-diffusers"


@dataclass
class MultiViewGuidanceConfig(GuidanceConfig):
    pretrained_model_name_or_path: str = MVDREAM_MODEL
    family: Literal["mvdream", "imagedream"] = "mvdream"
    guidance_scale: float = 100.0
    """DreamGaussian: 100 for MVDream, 5 for ImageDream."""
    weighting: Weighting = "uniform"
    loss_reduction: Literal["sum", "batch_mean"] = "batch_mean"
    num_views: int = 4
    """Rendered views per set (the models were trained on 4)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.family not in ("mvdream", "imagedream"):
            raise ValueError(f"family must be 'mvdream' or 'imagedream'; got {self.family!r}")
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1; got {self.num_views}")
        if self.cache.enabled and self.cache.mode != "noise":
            raise ValueError(
                f"the multi-view guidance caches whole noise predictions: set cache.mode to noise "
                f"(got {self.cache.mode!r}; feature reuse needs a diffusers UNet2DConditionModel)"
            )


def canonical_order(azimuth: torch.Tensor) -> torch.Tensor:
    """azimuth [S, V] -> view order [S, V]: each set rolled to start at its view of smallest azimuth (mod 360°).

    The multi-view UNet treats the views of a set alike in any order (no frame index anywhere; ImageDream's reference
    frame stays last), so a rolled set gives the same predictions, rolled. Keying a set by that first view makes a
    ring of views (DreamGaussian: a, a+90, a+180, a+270) one cache entry whichever of its views was drawn first:
    the key's azimuth then spans 90°, not 360°."""
    views = azimuth.shape[1]
    shift = torch.remainder(azimuth.float(), 360.0).argmin(dim=1)
    return (shift[:, None] + torch.arange(views, device=azimuth.device)) % views


def multiview_camera(elevation: torch.Tensor, azimuth: torch.Tensor) -> torch.Tensor:
    """threestudio (elevation °, azimuth °) [B] -> the multi-view UNet's camera [B, 16]: the camera-to-world matrix
    at unit distance, flattened row by row."""
    return orbit_c2w(elevation.float(), azimuth.float(), torch.ones_like(elevation, dtype=torch.float32)).flatten(1)


class MultiViewGuidance(SDSGuidance):
    """`guidance(rgb, elevation, azimuth, camera_distances)` -> GuidanceOutput for sets of `num_views` renders
    (rows set by set); call `set_prompt` first, and for ImageDream `set_image` too."""

    def __init__(self, config: MultiViewGuidanceConfig, device: str | torch.device = "cpu"):
        device = torch.device(device)
        config = replace(config, cuda_graphs=False)
        parts = load_multiview(
            config.pretrained_model_name_or_path, config.family, TORCH_DTYPES[config.dtype], device,
            config.local_files_only,
        )  # fmt: skip
        super().__init__(config, parts.unet, parts.vae, parts.scheduler, device)
        self.text_encoder = parts.text_encoder
        self.tokenizer = parts.tokenizer
        self.image_encoder = parts.image_encoder
        self.feature_extractor = parts.feature_extractor
        self.extra_frames = parts.unet.num_views_extra
        self.ddim = ddim_scheduler(parts.scheduler)
        self.prompt: str | None = None
        self.image_features: torch.Tensor | None = None
        self.image_latent: torch.Tensor | None = None

    # ---------------------------------------------------------------- conditions
    @torch.no_grad()
    def set_prompt(self, prompt: str, negative_prompt: str = "") -> None:
        """Embed the prompt (and the negative prompt for the unconditional half); starts a new run."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError('the prompt is empty: give a text description, e.g. prompt="a plush toy of a corgi nurse"')
        tokens = self.tokenizer(
            [prompt, negative_prompt or ""], padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )  # fmt: skip
        self.text_embeddings = self.text_encoder(tokens.input_ids.to(self.device))[0]  # [2 (cond, uncond), 77, D]
        self.prompt = prompt
        self.reset()

    @torch.no_grad()
    def set_image(self, image: torch.Tensor) -> None:
        """ImageDream's input view: image [4, H, W] RGBA in [0, 1] (put on white); starts a new run."""
        if self.config.family != "imagedream":
            raise ValueError("set_image is for ImageDream; MVDream is conditioned on text only")
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] not in (3, 4):
            raise ValueError(f"image must be a [4, H, W] RGBA (or [3, H, W] RGB) tensor in [0, 1]; got {getattr(image, 'shape', image)}")
        image = image.float().to(self.device)
        if image.shape[0] == 4:
            image = image[:3] * image[3:] + (1 - image[3:])
        rgb = self.resize(image[None].clamp(0, 1))
        pixels = clip_pixels(rgb, self.feature_extractor).to(self.image_encoder.dtype)
        hidden = self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]  # OpenCLIP penultimate
        self.image_features = hidden.float()  # [1, T, 1280]
        moments = self.vae.encode((rgb * 2 - 1).to(self.vae_dtype)).latent_dist.mode()
        self.image_latent = moments.float() * self.vae.config.scaling_factor  # [1, 4, h, w]
        self.reset()

    def _check_ready(self) -> None:
        if self.prompt is None:
            raise RuntimeError("call set_prompt(prompt) before using the multi-view guidance")
        if self.config.family == "imagedream" and self.image_latent is None:
            raise RuntimeError("call set_image(image) before using the ImageDream guidance")

    def _sets(self, n: int) -> int:
        views = self.config.num_views
        if n % views:
            raise ValueError(f"{n} renders are not whole sets of {views} views (render every set's {views} views)")
        return n // views

    # ---------------------------------------------------------------- the UNet call
    def _predict_sets(
        self, x_t: torch.Tensor, t_sets: torch.Tensor, elevation: torch.Tensor, azimuth: torch.Tensor,
        distance: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """CFG-combined ε̂ [N, C, h, w] for noisy latents x_t [N, C, h, w] in sets of num_views, one t per set."""
        V, S = self.config.num_views, t_sets.shape[0]
        frames = V + self.extra_frames
        rest = x_t.shape[1:]
        order = canonical_order(azimuth.view(S, V))
        sets = torch.arange(S, device=order.device)[:, None]
        latents = x_t.reshape(S, V, *rest)[sets, order]
        cameras = multiview_camera(elevation, azimuth).to(self.device).view(S, V, 16)[sets, order]
        if self.extra_frames:
            latents = torch.cat([latents, latents.new_zeros(S, self.extra_frames, *rest)], dim=1)
            cameras = torch.cat([cameras, cameras.new_zeros(S, self.extra_frames, 16)], dim=1)

        def rows(per_view: torch.Tensor) -> torch.Tensor:
            """[S, F, ...] per set and view -> [F·2·S, ...]: view-major rows, CFG halves (cond, uncond) per view."""
            per_view = per_view.transpose(0, 1).unsqueeze(1)
            return per_view.expand(frames, 2, *per_view.shape[2:]).reshape(-1, *per_view.shape[3:])

        def halves(cond_uncond: torch.Tensor) -> torch.Tensor:
            """[2, ...] (cond, uncond), the same for every set and view -> [F·2·S, ...]."""
            return cond_uncond[None, :, None].expand(frames, 2, S, *cond_uncond.shape[1:]).reshape(-1, *cond_uncond.shape[1:])

        dtype = self.unet_dtype
        x_in = rows(latents).to(dtype)
        t_in = t_sets[None, None].expand(frames, 2, S).reshape(-1)
        kwargs = dict(camera=rows(cameras).to(dtype), num_frames=frames, view_major=True)
        if self.config.family == "imagedream":
            kwargs["ip"] = halves(torch.cat([self.image_features, torch.zeros_like(self.image_features)])).to(dtype)
            kwargs["ip_img"] = halves(torch.cat([self.image_latent, torch.zeros_like(self.image_latent)])).to(dtype)
        context = halves(self.text_embeddings).to(dtype)
        with section("unet"):
            if self.cache is not None:
                first = sets[:, 0] * V + order[:, 0]
                keys = self.cache_keys(elevation[first], azimuth[first], distance[first], t_sets.to(elevation.device))
                with self.cache.request(keys, latents[:, :V].reshape(S, V * rest[0], *rest[1:])):
                    pred = self.unet(x_in, t_in, context, **kwargs).sample
            else:
                pred = self.unet(x_in, t_in, context, **kwargs).sample
        pred = pred.float()
        if self.prediction_type != "epsilon":
            alpha_bar = self.alphas_cumprod[t_in].view(-1, *([1] * len(rest)))
            pred = epsilon_from_prediction(pred, x_in.float(), alpha_bar, self.prediction_type)
        pred = pred.view(frames, 2, S, *rest)[:V]
        guided = pred[:, 1] + self.config.guidance_scale * (pred[:, 0] - pred[:, 1])  # [V, S, ...]
        out = torch.empty((S, V, *rest), device=guided.device, dtype=guided.dtype)
        out[sets, order] = guided.transpose(0, 1)  # back to the caller's order of views
        return out.reshape(S * V, *rest)

    # ---------------------------------------------------------------- SDS and refine
    def forward(
        self,
        rgb: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        rgb_as_latents: bool = False,
    ) -> GuidanceOutput:
        """rgb [S·V, 3, H, W] in [0, 1], set by set (or latents with rgb_as_latents); cameras [S·V]. The hit mask
        of the output is per set."""
        self._check_ready()
        S = self._sets(rgb.shape[0])
        latents = rgb.float() if rgb_as_latents else self.encode_images(rgb)
        t_sets = self.sample_timesteps(S)
        t = t_sets.repeat_interleave(self.config.num_views)
        cameras = tuple(c.to(self.device).float() for c in (elevation, azimuth, camera_distances))
        with torch.no_grad():
            noise = torch.randn(latents.shape, generator=self.generator, device=self.device, dtype=torch.float32)
            x_t = self.diffuse(latents.detach(), t, noise)
            noise_pred = self._predict_sets(x_t, t_sets, *cameras)
            grad = self.sds_gradient(noise_pred, noise, t, self.grad_clip_value)
        loss = sds_loss(latents, grad.to(latents.dtype), self.config.loss_reduction)
        tried = self.cache is not None and self.cache.last_hits is not None
        return GuidanceOutput(
            loss=loss, grad=grad, timesteps=t, noise=noise, noise_pred=noise_pred, cache_tried=tried,
            cache_hits=self.cache.last_hits if tried else None,
        )  # fmt: skip

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
        """DreamGaussian's stage-2 target: the renders [S·V, 3, H, W] denoised by DDIM from step
        int(steps·strength) (`refine.ddim_refine`) -> images [S·V, 3, image_size, image_size] in [0, 1]."""
        self._check_ready()
        S = self._sets(rgb.shape[0])
        cameras = tuple(c.to(self.device).float() for c in (elevation, azimuth, camera_distances))
        latents = self.encode_images(rgb.detach())
        refined = ddim_refine(
            lambda x, t: self._predict_sets(x, t[::self.config.num_views], *cameras),
            latents, self.ddim, strength, self.generator, steps,
        )  # fmt: skip
        return decode_latents(self.vae, refined)

    def cache_stats(self) -> dict[str, float]:
        """The cache's statistics counted per set (`full_sets`, `cached_sets`) and per view (`full_samples`,
        `cached_samples`, `unet_calls_saved`: sets times num_views)."""
        stats = super().cache_stats()
        if not stats:
            return stats
        views = self.config.num_views
        stats.update(
            views_per_set=views,
            full_sets=stats["full_samples"],
            cached_sets=stats["cached_samples"],
            full_samples=stats["full_samples"] * views,
            cached_samples=stats["cached_samples"] * views,
            unet_calls_saved=stats["cached_samples"] * views,
        )
        return stats
