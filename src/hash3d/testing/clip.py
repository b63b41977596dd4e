"""A tiny CLIP with random weights, written in the on-disk layout of the real hub models.

The folder holds config.json + model.safetensors (CLIPModel), the tokenizer files of
`hash3d.testing.tokenizer.write_clip_tokenizer`, and a preprocessor_config.json for CLIPImageProcessor, so
`CLIPModel.from_pretrained(path)` and the tokenizer / image processor load from it exactly as from a download.
Scores it gives mean nothing; it exists to test the loading and scoring code offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hash3d.testing.tokenizer import CLIP_TOKENIZER_VOCAB_SIZE, write_clip_tokenizer

# The image statistics every OpenAI / LAION CLIP preprocessor config uses.
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def write_clip(
    path: str | Path,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    projection_dim: int = 16,
    layers: int = 2,
    heads: int = 4,
) -> Path:
    """Write a tiny random CLIPModel with tokenizer and image-processor config into `path`; returns the path."""
    from transformers import CLIPConfig, CLIPModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bos, eos = CLIP_TOKENIZER_VOCAB_SIZE - 2, CLIP_TOKENIZER_VOCAB_SIZE - 1
    shared = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        projection_dim=projection_dim,
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=CLIP_TOKENIZER_VOCAB_SIZE,
            max_position_embeddings=77,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
            **shared,
        ),
        vision_config=dict(image_size=image_size, patch_size=patch_size, num_channels=3, **shared),
        projection_dim=projection_dim,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = CLIPModel(config)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(path, safe_serialization=True)
    write_clip_tokenizer(path, model_max_length=77)
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,  # bicubic
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_IMAGE_MEAN,
        "image_std": CLIP_IMAGE_STD,
        "do_convert_rgb": True,
    }
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return path
