"""Configs of the multi-view families for `write_model`: MVDream (`ashawkey/mvdream-sd2.1-diffusers`) and ImageDream
(`ashawkey/imagedream-ipmv-diffusers`), key for key as in those converted folders.

Both are SD 2.1-base parts (VAE, OpenCLIP ViT-H text tower, tokenizer, DDIM scheduler) around
`hash3d.diffusion.multiview_unet.MultiViewUNetModel`; ImageDream adds a CLIP ViT-H/14 vision tower
(`CLIPVisionModel`, its penultimate hidden states feed the UNet's resampler) and its image processor.
"""

from __future__ import annotations

from typing import Any

from hash3d.diffusion.multiview_unet import IMAGE_FEATURE_DIM

MULTIVIEW_FAMILIES = ("mvdream", "imagedream")

UNET_CONFIG_KEYS = {
    "mvdream": ("image_size", "in_channels", "out_channels", "model_channels", "attention_resolutions",
                "num_res_blocks", "channel_mult", "num_head_channels", "transformer_depth", "context_dim",
                "use_checkpoint", "camera_dim"),
}  # fmt: skip
UNET_CONFIG_KEYS["imagedream"] = UNET_CONFIG_KEYS["mvdream"] + ("ip_dim",)
"""The keys of the converted `unet/config.json` besides `_class_name` and `_diffusers_version` (the conversion
stores the original `unet_config.params` minus legacy, use_linear_in_transformer, use_spatial_transformer, ip_mode
and with_ip)."""


def unet_config(family: str, size: str, tiny_latent: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "in_channels": 4,
        "out_channels": 4,
        "attention_resolutions": [4, 2, 1],
        "transformer_depth": 1,
        "use_checkpoint": False,
        "camera_dim": 16,
    }
    if size == "full":
        config.update(image_size=32, model_channels=320, num_res_blocks=2, channel_mult=[1, 2, 4, 4],
                      num_head_channels=64, context_dim=1024)
    else:  # GroupNorm(32) everywhere: widths stay multiples of 32
        config.update(image_size=tiny_latent, model_channels=32, num_res_blocks=1, channel_mult=[1, 2, 2, 2],
                      num_head_channels=16, context_dim=32)
    if family == "imagedream":
        config["ip_dim"] = 16
    return config


def image_encoder_config(size: str) -> dict[str, Any]:
    """CLIP ViT-H/14 vision tower (laion/CLIP-ViT-H-14-laion2B-s32B-b79K). The tiny one keeps the hidden width
    (1280), which ImageDream's resampler fixes, with one layer."""
    config: dict[str, Any] = {
        "architectures": ["CLIPVisionModel"],
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": IMAGE_FEATURE_DIM,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_channels": 3,
    }
    if size == "full":
        config.update(intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32, image_size=224,
                      patch_size=14, projection_dim=1024)
    else:
        config.update(intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, image_size=32,
                      patch_size=16, projection_dim=32)
    return config


def scheduler_config(diffusers_version: str) -> dict[str, Any]:
    """The DDIM scheduler the conversion saves (SD 2.1-base's noise schedule)."""
    return {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": diffusers_version,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "rescale_betas_zero_snr": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
    }


def model_index(family: str, diffusers_version: str) -> dict[str, Any]:
    image = family == "imagedream"
    return {
        "_class_name": "MVDreamPipeline",
        "_diffusers_version": diffusers_version,
        "feature_extractor": ["transformers", "CLIPImageProcessor"] if image else [None, None],
        "image_encoder": ["transformers", "CLIPVisionModel"] if image else [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["mv_unet", "MultiViewUNetModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
