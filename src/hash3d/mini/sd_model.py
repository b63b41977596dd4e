"""Hash3D-mini-sd's parts in the Stable Diffusion on-disk layout (`load_stable_diffusion` and so the SD guidance
load the folder unchanged): `tokenizer` (CLIP BPE, every caption word one token), a small `CLIPTextModel`, a
`UNet2DConditionModel` on 32×32×4 latents (cross-attention on the text states, which also pool into the timestep
embedding through ``addition_embed_type="text"``), the `AutoencoderKL` of the shipped Hash3D-mini Zero123 model
(trained on the same renders; copied unchanged, frozen), and a v-prediction DDIM scheduler config (cosine betas).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from hash3d.diffusion.layout import build_component, clip_text_config, model_index

from .model import SCHEDULER_CONFIG, save_parts, unet_config, write_json
from .text_data import WORDS
from .tokenizer import tokenizer_vocab, write_clip_tokenizer

__all__ = [
    "SD_PRESETS",
    "TRAINED_PARTS",
    "build_sd_parts",
    "count_sd_parameters",
    "save_sd_model",
    "sd_configs",
    "write_random_sd_twin",
]

TRAINED_PARTS = ("unet", "text_encoder")

SD_PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(
        unet_channels=[96, 128, 160], unet_heads=[3, 4, 5], unet_layers=1, unet_groups=32, pool_heads=4,
        text_hidden=128, text_layers=3, text_heads=4, max_length=40, latent=32,
    ),
    "tiny": dict(
        unet_channels=[16, 32, 32], unet_heads=[1, 2, 2], unet_layers=1, unet_groups=8, pool_heads=2,
        text_hidden=32, text_layers=1, text_heads=2, max_length=40, latent=32,
    ),
}


def sd_configs(preset: str = "default") -> dict[str, dict[str, Any]]:
    """Config dicts of the unet, text encoder, tokenizer (max length) and scheduler, keyed by subfolder."""
    if preset not in SD_PRESETS:
        raise ValueError(f"preset must be one of {sorted(SD_PRESETS)}, got {preset!r}")
    p = SD_PRESETS[preset]
    vocab, _ = tokenizer_vocab(WORDS)
    eos = len(vocab) - 1  # <|startoftext|> and <|endoftext|> are the last two ids
    unet = unet_config(p, in_channels=4, sample_size=p["latent"], cross_attention_dim=p["text_hidden"])
    text_encoder = clip_text_config(p["text_hidden"], p["text_heads"], p["text_layers"], len(vocab), bos=eos - 1, eos=eos,
                                    pad=eos, max_length=p["max_length"])
    scheduler = dict(SCHEDULER_CONFIG)
    return {"unet": unet, "text_encoder": text_encoder, "scheduler": scheduler,
            "tokenizer": {"model_max_length": p["max_length"]}}


def build_sd_parts(configs: dict[str, dict[str, Any]]) -> dict[str, torch.nn.Module]:
    """The trained parts (unet, text_encoder) on the current default device."""
    return {name: build_component(name, configs[name]) for name in TRAINED_PARTS}


def count_sd_parameters(preset: str = "default") -> dict[str, int]:
    """Parameters per trained part, counted on the meta device."""
    with torch.device("meta"):
        parts = build_sd_parts(sd_configs(preset))
    return {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}


def save_sd_model(parts: dict[str, torch.nn.Module], configs: dict[str, dict[str, Any]], vae_dir: str | Path,
                  path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the folder in the Stable Diffusion layout; the VAE folder `vae_dir` is copied as it is."""
    path, vae_dir = Path(path), Path(vae_dir)
    if not (vae_dir / "config.json").exists():
        raise FileNotFoundError(f"no VAE folder at {vae_dir} (config.json missing): pass the shipped Hash3D-mini "
                                "Zero123 model's vae/ folder")
    path.mkdir(parents=True, exist_ok=True)
    index = model_index("sd")
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    write_json(path / "model_index.json", index)
    write_json(path / "scheduler" / "scheduler_config.json", configs["scheduler"])
    write_clip_tokenizer(path / "tokenizer", configs["tokenizer"]["model_max_length"], WORDS)
    if (path / "vae").exists():
        shutil.rmtree(path / "vae")
    shutil.copytree(vae_dir, path / "vae")
    save_parts(parts, TRAINED_PARTS, path, dtype)
    return path


def write_random_sd_twin(path: str | Path, source: str | Path, seed: int = 1) -> Path:
    """A random-weight twin of the Hash3D-mini-sd folder `source` in `path`: the same tokenizer, scheduler and (trained,
    caption-blind) VAE, with the UNet and text encoder rebuilt from their stored configs with fresh weights
    (diffusers' / transformers' own initialisation, seeded; the default seed is not the training's 0, so the twin is
    not the trained model's starting point either). Whatever a text-to-3D pipeline reaches with it is the
    floor: nothing of it comes from knowing the captions."""
    source = Path(source)
    configs: dict[str, dict[str, Any]] = {}
    for name in TRAINED_PARTS:
        file = source / name / "config.json"
        if not file.exists():
            raise FileNotFoundError(f"{file} is missing: {source} is not a Hash3D-mini-sd folder")
        data = json.loads(file.read_text())
        configs[name] = {k: v for k, v in data.items()
                         if not k.startswith("_") and k not in ("dtype", "torch_dtype", "transformers_version")}
    configs["scheduler"] = json.loads((source / "scheduler" / "scheduler_config.json").read_text())
    tokenizer = json.loads((source / "tokenizer" / "tokenizer_config.json").read_text())
    configs["tokenizer"] = {"model_max_length": tokenizer["model_max_length"]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = build_sd_parts(configs)
    return save_sd_model(parts, configs, source / "vae", path, dtype=torch.float32)
