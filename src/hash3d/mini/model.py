"""Hash3D-mini's parts in the diffusers Zero123 layout, and the conditioning exactly as `Zero123Guidance` builds it.

The folder written by `save_model` loads with `hash3d.diffusion.loading.load_zero123` (and so with the Zero123
guidance) unchanged: stock `UNet2DConditionModel` (8 input channels: noisy latent + unscaled latent of the input
view), `AutoencoderKL` (two blocks: 64 px images <-> 32×32×4 latents), `CLIPVisionModelWithProjection`,
`CLIPImageProcessor` config, `cc_projection` (`CameraProjection`) and a v-prediction DDIM scheduler config with
the cosine (`squaredcos_cap_v2`) schedule.

The UNet takes the conditioning vector (CLIP image embedding + relative camera, projected) two ways, both stock
diffusers: cross-attention on it as a single token (as Zero123), and ``addition_embed_type="text"``, which pools
the same encoder states into the timestep embedding so that camera and input view also modulate every ResNet
block (scale/shift), as the class embedding did in the pixel-space probe.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hash3d.diffusion.layout import DIFFUSERS_VERSION, build_component, clip_image_processor_config, model_index

__all__ = [
    "PRESETS",
    "model_configs",
    "build_parts",
    "count_parameters",
    "relative_camera",
    "clip_pixels",
    "condition",
    "save_model",
    "folder_bytes",
    "whiten_latents",
]

PARTS = ("unet", "vae", "image_encoder", "cc_projection")

# Widths per preset. "default" is the shipped model (≈ 11.9M parameters, ≈ 23.8 MB in fp16); "tiny" is for CPU tests.
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(
        unet_channels=[96, 128, 160], unet_heads=[3, 4, 5], unet_layers=1, unet_groups=32, context_dim=256,
        pool_heads=4, vae_channels=[32, 64], vae_groups=32, clip_hidden=128, clip_layers=3, clip_heads=4,
        clip_patch=8, clip_projection=128,
    ),
    "tiny": dict(
        unet_channels=[16, 32, 32], unet_heads=[1, 2, 2], unet_layers=1, unet_groups=8, context_dim=32,
        pool_heads=2, vae_channels=[8, 16], vae_groups=8, clip_hidden=32, clip_layers=1, clip_heads=2,
        clip_patch=16, clip_projection=32,
    ),
}
IMAGE_SIZE = 64


SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.0001,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": False,
    "set_alpha_to_one": False,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}
"""The DDIM scheduler of the mini models: v-prediction on a cosine schedule, trailing timesteps."""


def unet_config(p: dict[str, Any], in_channels: int, sample_size: int, cross_attention_dim: int) -> dict[str, Any]:
    """The mini UNet2DConditionModel's config.json for a preset `p` (widths, heads, layers, groups)."""
    levels = len(p["unet_channels"])
    return {
        "act_fn": "silu",
        "addition_embed_type": "text",
        "addition_embed_type_num_heads": p["pool_heads"],
        "attention_head_dim": list(p["unet_heads"]),  # diffusers reads this as the number of heads per block
        "block_out_channels": list(p["unet_channels"]),
        "center_input_sample": False,
        "cross_attention_dim": cross_attention_dim,
        "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (levels - 1),
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": in_channels,
        "layers_per_block": p["unet_layers"],
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": p["unet_groups"],
        "only_cross_attention": False,
        "out_channels": 4,
        "resnet_time_scale_shift": "scale_shift",
        "sample_size": sample_size,
        "up_block_types": ["CrossAttnUpBlock2D"] * (levels - 1) + ["UpBlock2D"],
        "upcast_attention": False,
        "use_linear_projection": True,
    }

def model_configs(preset: str = "default", scaling_factor: float = 1.0) -> dict[str, dict[str, Any]]:
    """Config dicts of every part (keys as in the real config.json files), keyed by subfolder."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    p = PRESETS[preset]
    vae_scale = 2 ** (len(p["vae_channels"]) - 1)
    latent = IMAGE_SIZE // vae_scale
    unet = unet_config(p, in_channels=8, sample_size=latent, cross_attention_dim=p["context_dim"])
    vae = {
        "act_fn": "silu",
        "block_out_channels": list(p["vae_channels"]),
        "down_block_types": ["DownEncoderBlock2D"] * len(p["vae_channels"]),
        "force_upcast": False,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": p["vae_groups"],
        "out_channels": 3,
        "sample_size": IMAGE_SIZE,
        "scaling_factor": float(scaling_factor),
        "up_block_types": ["UpDecoderBlock2D"] * len(p["vae_channels"]),
    }
    image_encoder = {
        "architectures": ["CLIPVisionModelWithProjection"],
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": p["clip_hidden"],
        "image_size": IMAGE_SIZE,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4 * p["clip_hidden"],
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": p["clip_heads"],
        "num_channels": 3,
        "num_hidden_layers": p["clip_layers"],
        "patch_size": p["clip_patch"],
        "projection_dim": p["clip_projection"],
    }
    feature_extractor = clip_image_processor_config(IMAGE_SIZE)
    scheduler = dict(SCHEDULER_CONFIG)
    return {
        "unet": unet,
        "vae": vae,
        "image_encoder": image_encoder,
        "feature_extractor": feature_extractor,
        "cc_projection": {"in_channel": p["clip_projection"] + 4, "out_channel": p["context_dim"]},
        "scheduler": scheduler,
    }


def build_parts(configs: dict[str, dict[str, Any]]) -> dict[str, torch.nn.Module]:
    """The trainable parts (unet, vae, image_encoder, cc_projection) on the current default device."""
    return {name: build_component(name, configs[name]) for name in PARTS}


def count_parameters(preset: str = "default") -> dict[str, int]:
    """Parameters per part, counted on the meta device (nothing is allocated)."""
    configs = model_configs(preset)
    with torch.device("meta"):
        parts = build_parts(configs)
    return {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}


# ---------------------------------------------------------------------------------------------------------------
# Conditioning, exactly as hash3d.diffusion.guidance.zero123 builds it at SDS time


def relative_camera(cond_elevation: torch.Tensor, cond_azimuth: torch.Tensor, elevation: torch.Tensor,
                    azimuth: torch.Tensor, stable: torch.Tensor | bool = True) -> torch.Tensor:
    """Zero123's camera vector per pair, all angles in degrees -> [B, 4].

    [rad(cond_elev − elev), sin Δaz, cos Δaz, last] with Δaz = az − cond_az; last = rad(90 − cond_elev) for the
    "stable" embedding, 0 for the "xl" embedding (Δradius, zero at the fixed training distance). `stable` may be a
    per-sample bool tensor.
    """
    d_polar = torch.deg2rad(cond_elevation.float() - elevation.float())
    d_az = torch.deg2rad(azimuth.float() - cond_azimuth.float())
    last = torch.deg2rad(90.0 - cond_elevation.float())
    last = torch.where(torch.as_tensor(stable, device=last.device), last, torch.zeros_like(last))
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), last], dim=-1)


def clip_pixels(rgb: torch.Tensor, crop: int, mean, std) -> torch.Tensor:
    """The CLIP image processor's resize + normalisation in torch, as `Zero123Guidance._clip_pixels`."""
    pixels = F.interpolate(rgb, (crop, crop), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(mean, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def condition(image_encoder, cc_projection, cond_rgb: torch.Tensor, camera: torch.Tensor,
              feature_extractor: dict[str, Any]) -> torch.Tensor:
    """Encoder states [B, 1, D] = cc_projection(cat[CLIP image embedding of the input view, camera])."""
    crop = int(feature_extractor["crop_size"]["height"])
    pixels = clip_pixels(cond_rgb, crop, feature_extractor["image_mean"], feature_extractor["image_std"])
    embeds = image_encoder(pixels).image_embeds
    return cc_projection(torch.cat([embeds, camera.to(embeds.dtype)], dim=-1))[:, None]


@torch.no_grad()
def whiten_latents(vae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Re-parametrise an AutoencoderKL's latent space in place so that latents z become (z − mean) / std per
    channel, with decode(encode(x)) unchanged: folded into the 1×1 `quant_conv` (posterior mean rows; the
    log-variance rows shift by −2·log std) and `post_quant_conv` (its input columns scaled back, the mean moved into
    its bias). The stock diffusers class loads the result; only the latent statistics change."""
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ValueError("whiten_latents needs a VAE with quant_conv and post_quant_conv (use_quant_conv=True)")
    c = vae.config.latent_channels
    mean = mean.to(vae.quant_conv.weight).reshape(c)
    std = std.to(vae.quant_conv.weight).reshape(c)
    if not bool((std > 0).all()):
        raise ValueError("whiten_latents needs a positive std per latent channel")
    q, pq = vae.quant_conv, vae.post_quant_conv
    q.weight[:c] /= std.view(c, 1, 1, 1)
    q.bias[:c] = (q.bias[:c] - mean) / std
    q.bias[c:] -= 2.0 * torch.log(std)
    w = pq.weight.clone()  # [out, in, 1, 1]
    pq.bias += (w[:, :, 0, 0] @ mean)
    pq.weight *= std.view(1, c, 1, 1)


# ---------------------------------------------------------------------------------------------------------------
# Writing the folder


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_parts(parts: dict[str, torch.nn.Module], names: Sequence[str], path: Path, dtype: torch.dtype,
               configure: Callable[[str, torch.nn.Module], None] | None = None) -> None:
    """`save_pretrained` of CPU copies of `parts[name]` for each name into `path / name`, weights as contiguous `dtype`
    safetensors (training may keep convolutions channels-last), `configure(name, copy)` first; transformers' progress
    bars stay off meanwhile."""
    from transformers.utils import logging as hf_logging

    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        for name in names:
            module = copy.deepcopy(parts[name]).to("cpu")
            torch.nn.Module.to(module, dtype=dtype, memory_format=torch.contiguous_format).eval()
            if configure is not None:
                configure(name, module)
            module.save_pretrained(path / name, safe_serialization=True)
    finally:
        if progress:
            hf_logging.enable_progress_bar()


def save_model(parts: dict[str, torch.nn.Module], configs: dict[str, dict[str, Any]], path: str | Path,
               dtype: torch.dtype = torch.float16) -> Path:
    """Write the model folder in the layout `load_zero123` reads, weights as `dtype` safetensors."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "model_index.json", model_index("zero123"))
    write_json(path / "scheduler" / "scheduler_config.json", configs["scheduler"])
    write_json(path / "feature_extractor" / "preprocessor_config.json", configs["feature_extractor"])

    def scaled_vae(name: str, module: torch.nn.Module) -> None:
        if name == "vae":
            module.register_to_config(scaling_factor=float(configs["vae"]["scaling_factor"]))

    save_parts(parts, PARTS, path, dtype, scaled_vae)
    cfg_file = path / "cc_projection" / "config.json"
    stored = json.loads(cfg_file.read_text())
    stored["_class_name"] = "CCProjection"  # as in the community pipeline's folders
    write_json(cfg_file, stored)
    return path


def folder_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


