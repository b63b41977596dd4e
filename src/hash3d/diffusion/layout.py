"""The diffusers on-disk layout that both the shipped Hash3D-mini model (`hash3d.mini`) and the random-weight test
models (`hash3d.testing`) are written in: `model_index.json`, a CLIP image processor's config, and a model part
built from its config dict."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DIFFUSERS_VERSION", "build_component", "clip_image_processor_config", "model_index"]

DIFFUSERS_VERSION = "0.42.1"
"""The `_diffusers_version` written into configs."""
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_text_config(hidden: int, heads: int, layers: int, vocab_size: int, bos: int, eos: int, pad: int,
                     intermediate: int | None = None, projection: int | None = None,
                     max_length: int = 77) -> dict[str, Any]:
    """`text_encoder/config.json` of a `CLIPTextModel` (GELU, 1e-5 layer norm); intermediate 4x hidden and the
    projection as wide as the hidden state unless given."""
    return {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "dropout": 0.0,
        "eos_token_id": eos,
        "hidden_act": "gelu",
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4 * hidden if intermediate is None else intermediate,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": max_length,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": pad,
        "projection_dim": hidden if projection is None else projection,
        "vocab_size": vocab_size,
    }


def clip_image_processor_config(side: int) -> dict[str, Any]:
    """`feature_extractor/preprocessor_config.json` of a CLIP image encoder that takes side x side images."""
    return {
        "crop_size": {"height": side, "width": side},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": _CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": _CLIP_STD,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": side},
    }


def model_index(family: str) -> dict[str, Any]:
    """`model_index.json` of a pipeline of `family` in the diffusers layout."""
    if family == "sd":
        return {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
    return {
        "_class_name": "Zero1to3StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "cc_projection": ["pipeline_zero1to3", "CCProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def build_component(name: str, config: dict[str, Any]) -> torch.nn.Module:
    """Instantiate one model part from its config dict on the current default device (e.g. inside
    ``with torch.device("meta"):`` to count parameters without allocating them)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    from hash3d.diffusion.camera_projection import CameraProjection
    from hash3d.diffusion.multiview_unet import MultiViewUNetModel

    if name == "unet":
        if "model_channels" in config:  # the latent-diffusion layout of the multi-view UNets
            return MultiViewUNetModel(**config)
        return UNet2DConditionModel(**config)
    if name == "vae":
        return AutoencoderKL(**config)
    if name == "cc_projection":
        return CameraProjection(**config)
    hf_config = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    if name == "text_encoder":
        return CLIPTextModel(CLIPTextConfig(**hf_config))
    if name == "image_encoder":
        if config.get("architectures") == ["CLIPVisionModel"]:
            return CLIPVisionModel(CLIPVisionConfig(**hf_config))
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**hf_config))
    raise ValueError(f"no model for part {name!r}")
