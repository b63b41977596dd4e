"""Score distillation shared by every model family: timesteps, weighting, ε from any prediction type, the loss."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from ...cache.config import CacheConfig
from ..schedule import ScheduleValue, check_schedule, schedule_value
from ...cuda_graphs import GraphedFunction, capturing, cuda_graphs_available
from ...profiling import section, time_backward
from ..unet_cache import UNetCache, apply_hash_cache
from .hit_step import HitStepGraphs
from .losses import loss_scale, sds_loss

Weighting = Literal["sds", "uniform", "fantasia3d"]
VAE_ENCODER_MODES = ("eager", "compiled")


@dataclass
class GuidanceConfig:
    """Options every SDS guidance shares (the family configs add their own)."""

    pretrained_model_name_or_path: str = ""
    """Hub id or local folder in diffusers layout."""
    dtype: Literal["fp16", "fp32", "bf16"] = "fp16"
    local_files_only: bool = False
    guidance_scale: float = 3.0
    min_step_percent: ScheduleValue = 0.02
    max_step_percent: ScheduleValue = 0.98
    timestep_sampling: Literal["random", "random_shared", "annealed"] = "random"
    """random: one t per sample; random_shared: one t per batch; annealed: t = (1 - step / max_steps) * T (DreamGaussian)."""
    weighting: Weighting = "sds"
    """sds: w = 1 - ᾱ_t; uniform: w = 1; fantasia3d: w = sqrt(ᾱ_t) (1 - ᾱ_t)."""
    grad_clip: ScheduleValue | None = None
    """Clamp the SDS gradient element-wise to ±value (a schedule allowed)."""
    loss_reduction: Literal["sum", "batch_mean"] = "sum"
    """sum: d loss / d latents = w (ε̂ - ε) exactly; batch_mean: divided by the batch size (threestudio)."""
    seed: int = 0
    cuda_graphs: bool = True
    """Replay UNet passes and cache lookups as CUDA graphs (CUDA only; ignored on the CPU). At SDS sizes the UNet is
    bound by kernel launches, which graphs remove (docs/benchmarks.md has the measured effect)."""
    hit_graphs: bool = True
    """With CUDA graphs and a cache: answer a tried request through the graphed hit step (`hit_step.py`: two graphs
    around one host read) instead of the host-dispatched path. Off: the eager path, the reference of the graphed one."""
    vae_encoder: Literal["eager", "compiled"] = "eager"
    """How the SDS encode runs the VAE encoder's forward and backward (the gradient's way into the images): eager, or
    compiled through `torch.compile` (fused normalisation and activation; a run pays a compile for each new image
    batch shape, kept in inductor's on-disk cache for later runs). Both agree to rounding. (Channels-last layout was
    measured slower than eager at every SDS shape and is not offered.)"""
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        if isinstance(self.cache, dict):
            self.cache = CacheConfig(**self.cache)
        for name in ("min_step_percent", "max_step_percent"):
            check_schedule(name, getattr(self, name))
        if self.grad_clip is not None:
            check_schedule("grad_clip", self.grad_clip)
        if self.weighting not in ("sds", "uniform", "fantasia3d"):
            raise ValueError(f"weighting must be 'sds', 'uniform' or 'fantasia3d'; got {self.weighting!r}")
        if self.timestep_sampling not in ("random", "random_shared", "annealed"):
            raise ValueError(
                f"timestep_sampling must be 'random', 'random_shared' or 'annealed'; got {self.timestep_sampling!r}"
            )
        if self.dtype not in ("fp16", "fp32", "bf16"):
            raise ValueError(f"dtype must be 'fp16', 'fp32' or 'bf16'; got {self.dtype!r}")
        if self.vae_encoder not in VAE_ENCODER_MODES:
            raise ValueError(f"vae_encoder must be one of {', '.join(map(repr, VAE_ENCODER_MODES))}; got {self.vae_encoder!r}")


TORCH_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class GuidanceOutput:
    loss: torch.Tensor
    """Scalar whose gradient with respect to the latents is the SDS gradient."""
    grad: torch.Tensor
    """The SDS gradient w(t) (ε̂ - ε) on the latents (after clipping), detached."""
    timesteps: torch.Tensor
    noise: torch.Tensor
    noise_pred: torch.Tensor
    """CFG-combined ε̂."""
    cache_tried: bool = False
    cache_hits: torch.Tensor | None = None
    """Per-sample hit mask of this step (on the device; None when the cache was not tried)."""


def epsilon_from_prediction(
    pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Convert a model output to ε given x_t and ᾱ_t (broadcastable to x_t)."""
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * pred + (1 - alpha_bar).sqrt() * x_t
    if prediction_type == "sample":
        return (x_t - alpha_bar.sqrt() * pred) / (1 - alpha_bar).sqrt()
    raise ValueError(f"unsupported scheduler prediction_type {prediction_type!r}")


def sds_weight(alpha_bar: torch.Tensor, weighting: Weighting) -> torch.Tensor:
    if weighting == "sds":
        return 1 - alpha_bar
    if weighting == "uniform":
        return torch.ones_like(alpha_bar)
    if weighting == "fantasia3d":
        return alpha_bar.sqrt() * (1 - alpha_bar)
    raise ValueError(f"unknown weighting {weighting!r}")


def classifier_free_guidance(noise_pred: torch.Tensor, scale: float) -> torch.Tensor:
    """noise_pred [2B, ...] stacked [cond; uncond] -> uncond + scale (cond - uncond)."""
    cond, uncond = noise_pred.chunk(2)
    return uncond + scale * (cond - uncond)


class SDSGuidance(torch.nn.Module):
    """Base of the family guidances: owns the UNet, its scheduler constants and the cache."""

    def __init__(self, config: GuidanceConfig, unet: torch.nn.Module, vae: torch.nn.Module, scheduler, device: torch.device):
        super().__init__()
        self.config = config
        self.device = device
        self.unet = unet
        self.vae = vae
        # diffusers' ModelMixin.dtype walks every submodule on each read: read the dtypes once
        self.unet_dtype = next(unet.parameters()).dtype
        self.vae_dtype = next(vae.parameters()).dtype
        # latent side: diffusers' sample_size, or image_size in the latent-diffusion configs of the multi-view UNets
        latent_side = unet.config["sample_size"] if "sample_size" in unet.config else unet.config["image_size"]
        self.image_size = int(latent_side) * 2 ** (len(vae.config.block_out_channels) - 1)
        """Side of the square images the model works at; renders are resized to it."""
        self.scheduler = scheduler
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = scheduler.config.prediction_type
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.to(device=device, dtype=torch.float32), persistent=False)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.cache: UNetCache | None = None
        graphs = config.cuda_graphs and cuda_graphs_available(device)
        self._graphed_unet = (
            GraphedFunction(lambda x, t, c: self.unet(x, t, encoder_hidden_states=c, return_dict=False)[0])
            if graphs
            else None
        )
        self._vae_graphs: dict[tuple, object] | None = {} if graphs else None
        self._moments = torch.compile(self._plain_moments) if config.vae_encoder == "compiled" else self._plain_moments
        self._graphs_on = graphs
        self._hit_step: HitStepGraphs | None = None
        self.set_cache(config.cache)
        self.global_step = 0
        self.max_steps = 1
        self.update_step(0)

    # ---------------------------------------------------------------- schedules
    def update_step(self, global_step: int, max_steps: int | None = None) -> None:
        """Set the step-dependent timestep range and gradient clip (call once per training step)."""
        self.global_step = global_step
        if max_steps is not None:
            self.max_steps = max(1, max_steps)
        T = self.num_train_timesteps
        self.min_step = int(T * schedule_value(self.config.min_step_percent, global_step))
        self.max_step = int(T * schedule_value(self.config.max_step_percent, global_step))
        if not 0 <= self.min_step <= self.max_step < T:
            raise ValueError(
                f"timestep range [{self.min_step}, {self.max_step}] at step {global_step} is outside [0, {T - 1}]; "
                "check min_step_percent <= max_step_percent < 1"
            )
        clip = self.config.grad_clip
        self.grad_clip_value = None if clip is None else schedule_value(clip, global_step)

    def sample_timesteps(self, batch: int) -> torch.Tensor:
        mode = self.config.timestep_sampling
        if mode == "annealed":
            t = round((1 - self.global_step / self.max_steps) * self.num_train_timesteps)
            t = min(max(t, self.min_step), self.max_step)
            return torch.full((batch,), t, dtype=torch.long, device=self.device)
        n = batch if mode == "random" else 1
        t = torch.randint(self.min_step, self.max_step + 1, (n,), generator=self.generator, device=self.device)
        return t.expand(batch).contiguous()

    def set_cache(self, config: CacheConfig) -> None:
        """Replace the cache (or take it off with `enabled=False`) without reloading the model."""
        if self.cache is not None:
            self.cache.remove()
            self.cache = None
        self.config.cache = config
        self._hit_step = None
        if config.enabled:
            self.cache = apply_hash_cache(self.unet, config, self.device, cuda_graphs=self.config.cuda_graphs)
            if self._graphs_on and self.config.hit_graphs:
                self._hit_step = HitStepGraphs(self, self.cache)

    def reset(self) -> None:
        """Start a new run: forget cached entries and restart the noise stream."""
        self.generator.manual_seed(self.config.seed)
        if self.cache is not None:
            self.cache.reset()

    # Not `state_dict`: that name belongs to nn.Module (the weights), which this must not change.
    def resume_state(self) -> dict[str, Any]:
        """What a resumed run needs besides the weights: the noise generator's state and the cache's
        (`UNetCache.state_dict`; None without a cache)."""
        return {
            "generator": self.generator.get_state(),
            "cache": self.cache.state_dict() if self.cache is not None else None,
        }

    def load_resume_state(self, state: Mapping[str, Any]) -> None:
        """Continue from `resume_state()`. A cache saved by a run without one (or the reverse) is left as it is."""
        self.generator.set_state(state["generator"])
        if self.cache is not None and state.get("cache") is not None:
            self.cache.load_state_dict(state["cache"])

    # ---------------------------------------------------------------- the step
    def __call__(self, *args, **kwargs) -> GuidanceOutput:
        with section("guidance"):
            return super().__call__(*args, **kwargs)

    def resize(self, rgb: torch.Tensor) -> torch.Tensor:
        return F.interpolate(rgb, (self.image_size, self.image_size), mode="bilinear", align_corners=False)

    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb [B, 3, H, W] in [0, 1] -> scaled VAE latents [B, 4, h, w] (differentiable)."""
        with section("vae_encode"):
            x = (self.resize(rgb) * 2 - 1).to(self.vae_dtype)
            posterior = DiagonalGaussianDistribution(self._encoder_moments(x))
            latents = (posterior.sample(generator=self.generator) * self.vae.config.scaling_factor).float()
        time_backward("vae_backward", latents, x)
        return latents

    def _encoder_moments(self, x: torch.Tensor) -> torch.Tensor:
        """VAE encoder output (mean and log-variance stacked), as `AutoencoderKL.encode` computes it.

        With CUDA graphs on, a differentiable call replays the encoder's forward and backward as CUDA graphs (one pair
        per input shape, `torch.cuda.make_graphed_callables`): at SDS sizes the encoder is launch-bound too.
        """
        if self._vae_graphs is None or not x.requires_grad:
            return self._moments(x)
        key = (tuple(x.shape), x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            graphed = self._vae_graphs.get(key)
            if graphed is None:
                sample = x.detach().clone().requires_grad_(True)
                with capturing():
                    graphed = torch.cuda.make_graphed_callables(self._moments, (sample,))
                self._vae_graphs[key] = graphed
            return graphed(x)

    def _plain_moments(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        if getattr(vae, "use_tiling", False) or getattr(vae, "use_slicing", False):
            return vae.encode(x).latent_dist.parameters
        h = vae.encoder(x)
        return vae.quant_conv(h) if getattr(vae, "quant_conv", None) is not None else h

    def _unet_input(self, x_t: torch.Tensor) -> torch.Tensor:
        """What the UNet sees besides x_t (Zero123 concatenates the condition latents)."""
        return x_t

    def diffuse(self, latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward diffusion: x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε (float32)."""
        alpha_bar = self.alphas_cumprod[t].view(-1, *([1] * (latents.ndim - 1)))
        return alpha_bar.sqrt() * latents.float() + (1 - alpha_bar).sqrt() * noise

    def unet_batch(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The classifier-free-guidance UNet batch: (sample [2B, ...], timesteps [2B], context [2B, L, D])."""
        x_in = self._unet_input(torch.cat([x_t, x_t])).to(self.unet_dtype)
        return x_in, torch.cat([t, t]), context.to(self.unet_dtype)

    def guided_noise(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """UNet output [2B, ...] -> CFG-combined ε̂ [B, ...] (float32)."""
        if self.prediction_type == "epsilon":  # the common case needs neither x_t nor ᾱ_t
            eps = pred.float()
        else:
            alpha_bar = self.alphas_cumprod[torch.cat([t, t])].view(-1, *([1] * (x_t.ndim - 1)))
            eps = epsilon_from_prediction(pred.float(), torch.cat([x_t, x_t]).float(), alpha_bar, self.prediction_type)
        return classifier_free_guidance(eps, self.config.guidance_scale)

    def sds_gradient(
        self, noise_pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, clip: float | torch.Tensor | None
    ) -> torch.Tensor:
        """w(t) (ε̂ - ε), clamped to ±clip, NaN-free."""
        alpha_bar = self.alphas_cumprod[t].view(-1, *([1] * (noise.ndim - 1)))
        grad = sds_weight(alpha_bar, self.config.weighting) * (noise_pred - noise)
        if clip is not None:
            grad = torch.clamp(grad, -clip, clip)
        return torch.nan_to_num(grad)

    def _predict_noise(
        self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, keys: torch.Tensor,
        tried: bool | None = None, query: tuple | None = None,
    ) -> torch.Tensor:
        """ε̂ with classifier-free guidance; `context` is [cond; uncond] encoder states for the 2B batch."""
        x_in, t_in, context = self.unet_batch(x_t, t, context)
        with section("unet"):
            if self.cache is not None:
                with self.cache.request(keys, x_t, tried=tried, query=query):
                    pred = self.unet(x_in, t_in, encoder_hidden_states=context).sample
            elif self._graphed_unet is not None:
                pred = self._graphed_unet(x_in, t_in, context)
            else:
                pred = self.unet(x_in, t_in, encoder_hidden_states=context).sample
        return self.guided_noise(pred, x_t, t)

    def conditioning(self, elevation: torch.Tensor, azimuth: torch.Tensor, camera_distances: torch.Tensor) -> torch.Tensor:
        """The UNet's encoder states for a batch of cameras, stacked [cond (B); uncond (B)] (capturable)."""
        raise NotImplementedError

    def cache_keys(self, elevation, azimuth, camera_distances, t) -> torch.Tensor:
        """Cache keys [B, 4]: (elevation °, azimuth °, camera distance, timestep)."""
        return torch.stack([elevation.float(), azimuth.float(), camera_distances.float(), t.float()], dim=-1)

    def sds_from_latents(
        self,
        latents: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
    ) -> GuidanceOutput:
        """One SDS step on latents [B, C, h, w] (differentiable) seen from the given cameras [B]."""
        B = latents.shape[0]
        t = self.sample_timesteps(B)
        cameras = tuple(c.to(self.device) for c in (elevation, azimuth, camera_distances))
        with torch.no_grad():
            noise = torch.randn(latents.shape, generator=self.generator, device=self.device, dtype=torch.float32)
            tried = query = x_t = grad = context = keys = loss_value = None
            if self._hit_step is not None and self.cache is not None and self.cache.ready_to_query(latents):
                tried = self.cache.try_now(latents)
                if tried:  # graphed prepare + (if every sample hit) answer; else hand x_t and the query over
                    with section("unet"):
                        answer = self._hit_step(latents.detach(), t, noise, cameras, self.grad_clip_value,
                                                loss_scale(B, self.config.loss_reduction))
                    if answer.all_hit:
                        self.cache.record_hits(answer.hit, latents)
                        grad, noise_pred, loss_value = answer.grad, answer.noise_pred, answer.loss
                    x_t, context, keys, query = answer.x_t, answer.context, answer.keys, answer.query
            if grad is None:
                if x_t is None:
                    keys = self.cache_keys(*cameras, t)
                    x_t = self.diffuse(latents.detach(), t, noise)
                if context is None:
                    context = self.conditioning(*cameras)
                noise_pred = self._predict_noise(x_t, t, context, keys, tried, query)
                grad = self.sds_gradient(noise_pred, noise, t, self.grad_clip_value)
        loss = sds_loss(latents, grad.to(latents.dtype), self.config.loss_reduction, loss_value)
        tried = self.cache is not None and self.cache.last_hits is not None
        return GuidanceOutput(
            loss=loss,
            grad=grad,
            timesteps=t,
            noise=noise,
            noise_pred=noise_pred,
            cache_tried=tried,
            cache_hits=self.cache.last_hits if tried else None,
        )

    def cache_stats(self) -> dict[str, float]:
        """Cumulative cache statistics (reads device counters: call when logging, not every step)."""
        return self.cache.stats if self.cache is not None else {}
