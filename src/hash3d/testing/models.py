"""Diffusion models with random weights, written in the real diffusers on-disk layout.

``write_model("sd", "full", DIR)`` writes a folder shaped like ``stabilityai/stable-diffusion-2-1-base`` and
``write_model("zero123", "full", DIR)`` one shaped like ``ashawkey/stable-zero123-diffusers`` (camera projection in
the ``cc_projection/`` form of the diffusers community pipeline), and ``"mvdream"`` / ``"imagedream"`` ones shaped like
``ashawkey/mvdream-sd2.1-diffusers`` / ``ashawkey/imagedream-ipmv-diffusers`` (`multiview_models`), with the real
architectures and parameter counts.
``size="tiny"`` keeps the families, classes, subfolders and config keys but shrinks every width so that a UNet
forward takes milliseconds on a CPU. Both load through `hash3d.diffusion.loading`, i.e. through the same
``from_pretrained`` calls as real weights.

Weights are seeded: the same (seed, device, dtype) writes the same tensors.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from pathlib import Path
from typing import Any, Literal

import torch

from hash3d.diffusion.layout import (
    DIFFUSERS_VERSION, build_component, clip_image_processor_config, clip_text_config, model_index,
)
from hash3d.testing import multiview_models
from hash3d.testing.tokenizer import CLIP_TOKENIZER_VOCAB_SIZE, write_clip_tokenizer

__all__ = [
    "write_model",
    "model_configs",
    "build_component",
    "FAMILIES",
    "SIZES",
    "PREDICTION_TYPES",
    "TINY_IMAGE_SIZE",
    "TINY_LATENT_SIZE",
]

Family = Literal["sd", "zero123", "mvdream", "imagedream"]
Size = Literal["tiny", "full"]
FAMILIES = ("sd", "zero123") + multiview_models.MULTIVIEW_FAMILIES
SIZES = ("tiny", "full")
PREDICTION_TYPES = ("epsilon", "v_prediction")

# Tiny models: 64 px images <-> 8x8 latents (the VAE keeps the real x8 down-sampling).
TINY_IMAGE_SIZE = 64
TINY_LATENT_SIZE = 8


# ---------------------------------------------------------------------------------------------------------------
# Configs (keys as in the real config.json files)


def _unet_config(family: str, size: str) -> dict[str, Any]:
    down = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    up = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    config: dict[str, Any] = {
        "act_fn": "silu",
        "center_input_sample": False,
        "down_block_types": down,
        "up_block_types": up,
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "upcast_attention": False,
    }
    if size == "full":
        config.update(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, norm_num_groups=32)
        if family == "sd":  # stable-diffusion-2-1-base
            config.update(
                in_channels=4,
                attention_head_dim=[5, 10, 20, 20],
                cross_attention_dim=1024,
                use_linear_projection=True,
                sample_size=64,
            )
        else:  # Zero123 / Stable-Zero123: an SD 1.x UNet with the reference latent concatenated to the input
            config.update(
                in_channels=8,
                attention_head_dim=8,
                cross_attention_dim=768,
                use_linear_projection=False,
                sample_size=32,
            )
    else:
        config.update(
            block_out_channels=[32, 64, 64, 64],
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=TINY_LATENT_SIZE,
            cross_attention_dim=32,
        )
        if family == "sd":
            config.update(in_channels=4, attention_head_dim=[2, 4, 4, 4], use_linear_projection=True)
        else:
            config.update(in_channels=8, attention_head_dim=4, use_linear_projection=False)
    return config


def _vae_config(family: str, size: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "act_fn": "silu",
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "scaling_factor": 0.18215,
        "force_upcast": True,
    }
    if size == "full":
        config.update(
            block_out_channels=[128, 256, 512, 512],
            layers_per_block=2,
            norm_num_groups=32,
            sample_size=512 if family == "sd" else 256,
        )
    else:
        config.update(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8,
                      sample_size=TINY_IMAGE_SIZE)
    return config


def _text_encoder_config(size: str) -> dict[str, Any]:
    if size == "full":  # OpenCLIP ViT-H/14 text tower as stored in stable-diffusion-2-1-base/text_encoder
        return clip_text_config(1024, 16, 23, 49408, bos=0, eos=2, pad=1, projection=512)
    eos = CLIP_TOKENIZER_VOCAB_SIZE - 1  # ids of the written tokenizer: ..., <|startoftext|>, <|endoftext|>
    return clip_text_config(32, 2, 2, CLIP_TOKENIZER_VOCAB_SIZE, bos=eos - 1, eos=eos, pad=eos, intermediate=64)


def _image_encoder_config(size: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["CLIPVisionModelWithProjection"],
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "quick_gelu",
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_channels": 3,
    }
    if size == "full":  # CLIP ViT-L/14 vision tower with its 768-d projection
        config.update(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                      image_size=224, patch_size=14, projection_dim=768)
    else:
        config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                      image_size=32, patch_size=8, projection_dim=32)
    return config


def _feature_extractor_config(size: str) -> dict[str, Any]:
    return clip_image_processor_config(224 if size == "full" else _image_encoder_config(size)["image_size"])


def _cc_projection_config(size: str) -> dict[str, Any]:
    image = _image_encoder_config(size)["projection_dim"]
    return {"in_channel": image + 4, "out_channel": _unet_config("zero123", size)["cross_attention_dim"]}


def _scheduler_config(family: str, prediction_type: str) -> dict[str, Any]:
    common = {
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": prediction_type,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "trained_betas": None,
    }
    if family == "sd" and prediction_type == "epsilon":  # stable-diffusion-2-1-base ships a PNDM config
        return {"_class_name": "PNDMScheduler", "_diffusers_version": DIFFUSERS_VERSION, **common,
                "skip_prk_steps": True}
    # stable-diffusion-2-1 (v_prediction) and the Zero123 conversions ship DDIM configs
    return {"_class_name": "DDIMScheduler", "_diffusers_version": DIFFUSERS_VERSION, **common,
            "clip_sample_range": 1.0, "timestep_spacing": "leading", "rescale_betas_zero_snr": False}


def model_configs(family: Family, size: Size, prediction_type: str = "epsilon") -> dict[str, dict[str, Any]]:
    """Config dicts of every part, keyed by subfolder (plus ``model_index`` for model_index.json)."""
    _check(family, size, prediction_type)
    if family in multiview_models.MULTIVIEW_FAMILIES:
        return _multiview_configs(family, size, prediction_type)
    configs: dict[str, dict[str, Any]] = {
        "model_index": model_index(family),
        "unet": _unet_config(family, size),
        "vae": _vae_config(family, size),
        "scheduler": _scheduler_config(family, prediction_type),
    }
    configs["model_index"]["scheduler"] = ["diffusers", configs["scheduler"]["_class_name"]]
    if family == "sd":
        configs["text_encoder"] = _text_encoder_config(size)
    else:
        configs["image_encoder"] = _image_encoder_config(size)
        configs["feature_extractor"] = _feature_extractor_config(size)
        configs["cc_projection"] = _cc_projection_config(size)
    return configs


def _multiview_configs(family: str, size: str, prediction_type: str) -> dict[str, dict[str, Any]]:
    configs: dict[str, dict[str, Any]] = {
        "model_index": multiview_models.model_index(family, DIFFUSERS_VERSION),
        "unet": multiview_models.unet_config(family, size, TINY_LATENT_SIZE),
        # the conversion builds the VAE for 256 px images (MVDream works at 256)
        "vae": {**_vae_config("sd", size), **({"sample_size": 256} if size == "full" else {})},
        "text_encoder": _text_encoder_config(size),
        "scheduler": {**multiview_models.scheduler_config(DIFFUSERS_VERSION), "prediction_type": prediction_type},
    }
    if family == "imagedream":
        configs["image_encoder"] = multiview_models.image_encoder_config(size)
        configs["feature_extractor"] = clip_image_processor_config(configs["image_encoder"]["image_size"])
    return configs


def _check(family: str, size: str, prediction_type: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


# ---------------------------------------------------------------------------------------------------------------
# Building and writing


@contextlib.contextmanager
def quiet_progress_bars():
    """transformers' progress bars off inside the block (restored after)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_model(
    family: Family,
    size: Size,
    path: str | Path,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    prediction_type: str = "epsilon",
    device: str | torch.device = "cpu",
) -> Path:
    """Write a random-weight ``family`` model (``"sd"``, ``"zero123"``, ``"mvdream"`` or ``"imagedream"``) of ``size`` (``"tiny"``/``"full"``) into
    ``path`` in the diffusers layout, weights as safetensors in ``dtype``. Returns the folder.

    Parts are built directly on ``device`` (use ``"cuda"`` for full size: it is much faster than CPU init), one
    at a time, so peak memory is one part in fp32. Same ``seed`` and ``device`` give the same weights.
    """
    _check(family, size, prediction_type)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    configs = model_configs(family, size, prediction_type)

    _write_json(path / "model_index.json", configs.pop("model_index"))
    _write_json(path / "scheduler" / "scheduler_config.json", configs.pop("scheduler"))
    if "feature_extractor" in configs:
        _write_json(path / "feature_extractor" / "preprocessor_config.json", configs.pop("feature_extractor"))
    if "text_encoder" in configs:
        write_clip_tokenizer(path / "tokenizer")

    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    for name, config in configs.items():
        with torch.random.fork_rng(devices=cuda_devices):
            # one seed per part, so each part does not depend on which parts were built before it
            torch.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
            with torch.device(device):
                model = build_component(name, config)
        torch.nn.Module.to(model, dtype=dtype).eval()  # torch's .to: diffusers' ModelMixin.to warns needlessly
        with quiet_progress_bars():
            model.save_pretrained(path / name, safe_serialization=True)
        del model
        if name == "cc_projection":
            # as in the community pipeline's folders (the class there is called CCProjection)
            cfg_file = path / name / "config.json"
            stored = json.loads(cfg_file.read_text())
            stored["_class_name"] = "CCProjection"
            _write_json(cfg_file, stored)
        if name == "unet" and family in multiview_models.MULTIVIEW_FAMILIES:
            # exactly the keys of the converted folders (MVDream's has no ip_dim)
            cfg_file = path / name / "config.json"
            stored = json.loads(cfg_file.read_text())
            keep = set(multiview_models.UNET_CONFIG_KEYS[family]) | {"_class_name", "_diffusers_version"}
            _write_json(cfg_file, {k: v for k, v in stored.items() if k in keep})
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return path
