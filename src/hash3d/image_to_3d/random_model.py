"""A random-weight twin of the shipped mini model: same architecture, configs and on-disk layout, fresh weights.

It sets the quality floor: whatever the pipeline reaches with it comes from the reference-view losses alone (and
SDS noise), not from anything the diffusion model knows.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..shipped import MINI_MODEL, require

__all__ = ["write_random_mini"]


def write_random_mini(path: str | Path, source: str | Path = MINI_MODEL, seed: int = 0) -> Path:
    """Write the architecture of the model folder `source` with random weights (diffusers' own initialisation,
    seeded) to `path`, in the same layout (`load_zero123` loads it). Returns `path`."""
    from hash3d.mini.model import PARTS, save_model
    from hash3d.diffusion.layout import build_component

    source = require(Path(source), "the mini model folder")
    configs = {}
    for name in PARTS:
        data = json.loads((source / name / "config.json").read_text())
        configs[name] = {k: v for k, v in data.items() if not k.startswith("_")}
    for key in ("dtype", "torch_dtype", "transformers_version"):
        configs["image_encoder"].pop(key, None)
    configs["scheduler"] = json.loads((source / "scheduler" / "scheduler_config.json").read_text())
    configs["feature_extractor"] = json.loads((source / "feature_extractor" / "preprocessor_config.json").read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = {name: build_component(name, configs[name]) for name in PARTS}
    return save_model(parts, configs, path, dtype=torch.float32)
