"""Checkpoints: model, optimizer, step, RNG and data-sampler state, the guidances' state (noise generator, Hash3D
cache: `guidance_state`), plus the config that made them.

A checkpoint is a plain `torch.save` dict that `torch.load(..., weights_only=True, map_location="cpu")` reads
(tensors, numbers, strings, lists, dicts only), so it loads on a CPU machine and never runs pickled code. Keys
follow Lightning's where they mean the same thing (`epoch`, `global_step`, `state_dict`, `optimizer_states`,
`lr_schedulers`).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config.errors import UserInputError
from ..config.typed import to_data

FORMAT = "hash3d-checkpoint-v1"

# keys that only change what is written, never what is trained: ignored when comparing configs
OUTPUT_ONLY = {
    "eval_height",
    "eval_width",
    "eval_batch_size",
    "n_val_views",
    "n_test_views",
    "val_as_video",
    "keep_test_frames",
    "video_fps",
    "cleanup_after_validation_step",
    "cleanup_after_test_step",
    "weights",
    "weights_ignore_modules",
    # whether the Hash3D cache's table goes into checkpoints (a resume may switch it off to drop a saved table)
    "save_in_checkpoint",
    # mesh extraction settings of the geometry: read only by --export
    "isosurface_resolution",
    "isosurface_threshold",
    "isosurface_coarse_to_fine",
    "isosurface_outlier_fraction",
}
# keys that change only how much memory a step takes, not its values: a run that ran out of memory can resume with
# them switched on (and checkpoints written before a key existed still load)
MEMORY_ONLY = {"recompute_mlps"}
# geometries whose isosurface grid is the model itself (DMTet's tetrahedra), not an export setting
MODEL_GRID_GEOMETRIES = ("tetrahedra-sdf-grid",)
# blocks of the system config that do not change the saved model: ignored when a checkpoint is only rendered/exported
EVAL_IGNORED_SYSTEM_BLOCKS = ("guidance", "guidance_3d", "prompt_processor", "loss", "optimizer", "exporter")


class CheckpointError(UserInputError, ValueError):
    """A checkpoint that is missing, unreadable, or made with another config."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (a crash mid-write leaves the previous file intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def make_checkpoint(
    *,
    global_step: int,
    system: Any,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    scaler: Any,
    datamodule: Any,
    config: Any,
) -> dict[str, Any]:
    return {
        "hash3d": FORMAT,
        "epoch": 0,
        "global_step": int(global_step),
        "state_dict": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in system.checkpoint_state_dict().items()},
        "system_state": system.extra_state(),
        "guidance_state": system.guidance_state(),
        "optimizer_states": [optimizer.state_dict()] if optimizer is not None else [],
        "lr_schedulers": [scheduler.state_dict()] if scheduler is not None else [],
        "scaler": scaler.state_dict() if scaler is not None else None,
        "datamodule": datamodule.state_dict() if datamodule is not None else {},
        "rng": rng_state(),
        "config": to_data(config),
    }


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a hash3d checkpoint on the CPU; CheckpointError if it is missing, unreadable or not ours."""
    path = Path(path)
    if not path.is_file():
        hint = " (a folder: name the .ckpt file, e.g. <trial>/ckpts/last.ckpt)" if path.is_dir() else ""
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    fix = "resume from a ckpts/*.ckpt written by this launcher, or load weights only with system.weights=PATH"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means an unusable file
        # torch's own message advises weights_only=False, which a user of the launcher cannot act on
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a Hash3D checkpoint ({_why(exc)}); {fix}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("hash3d") != FORMAT:
        raise CheckpointError(f"{path} is not a Hash3D checkpoint (made by another tool or version); {fix}")
    return ckpt


def _why(exc: Exception) -> str:
    """What torch.load's failure says about the file, in words that do not ask for an unsafe load."""
    text = str(exc)
    if isinstance(exc, EOFError) or "Ran out of input" in text:
        return "the file is empty or cut short"
    if "Unsupported global" in text:
        return "it holds Python objects other than tensors and plain values, as files of other tools do"
    if "Unsupported operand" in text or "invalid load key" in text or "magic number" in text or "zip" in text.lower():
        return "not a file written by torch.save"
    return f"torch cannot read it: {type(exc).__name__}"


def _diff(saved: Any, current: Any, path: str, out: list[str], ignore_leaf: set[str]) -> None:
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current), key=str):
            if key in ignore_leaf:
                continue
            sub = f"{path}.{key}" if path else str(key)
            if key not in saved:
                out.append(f"{sub}: not in the checkpoint's config, {current[key]!r} now")
            elif key not in current:
                out.append(f"{sub}: {saved[key]!r} in the checkpoint's config, absent now")
            else:
                _diff(saved[key], current[key], sub, out, ignore_leaf)
    elif saved != current:
        out.append(f"{path}: {saved!r} in the checkpoint, {current!r} now")


def config_differences(saved: dict[str, Any], current: dict[str, Any], mode: str) -> list[str]:
    """Key paths whose values differ in the parts of the config that define the model (and, for training, the data)."""
    out: list[str] = []
    ignored = OUTPUT_ONLY | MEMORY_ONLY
    if any(isinstance(c.get("system"), dict) and c["system"].get("geometry_type") in MODEL_GRID_GEOMETRIES
           for c in (saved, current)):
        ignored = ignored - {"isosurface_resolution"}
    keys = ["system_type", "system"] + (["data_type", "data"] if mode == "train" else [])
    for key in keys:
        a, b = saved.get(key), current.get(key)
        if key == "system" and mode != "train" and isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if not k.startswith(EVAL_IGNORED_SYSTEM_BLOCKS)}
            b = {k: v for k, v in b.items() if not k.startswith(EVAL_IGNORED_SYSTEM_BLOCKS)}
        if isinstance(a, dict) or isinstance(b, dict):
            _diff(a or {}, b or {}, key, out, ignored)
        elif a != b:
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    return out


def check_config(ckpt: dict[str, Any], path: str | os.PathLike, config: Any, mode: str) -> None:
    """CheckpointError if the checkpoint was made from a config whose model (or, for training, data) differs."""
    diffs = config_differences(ckpt.get("config", {}), to_data(config), mode)
    if not diffs:
        return
    shown = "; ".join(diffs[:6]) + (f"; … and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    parsed = Path(path).resolve().parent.parent / "configs" / "parsed.yaml"
    raise CheckpointError(
        f"checkpoint {path} was made with another config ({shown}). Use the config it was trained with"
        + (f" ({parsed})" if parsed.is_file() else "")
        + ", or pass checkpoint.check_config=false to load it anyway"
    )
