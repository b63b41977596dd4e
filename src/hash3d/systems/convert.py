"""Starting a refine stage from a coarse run: `system.geometry_convert_from=CKPT` (threestudio's mechanism).

The coarse run's own parsed config (`<trial>/configs/parsed.yaml`, beside `<trial>/ckpts/`) rebuilds its geometry,
the checkpoint's `geometry.*` weights are loaded into it, and the refine geometry (DMTet) takes its isosurface and,
optionally, its texture network. `LAST` in the path stands for the newest trial folder whose name starts with what
precedes it, e.g. `outputs/magic3d-coarse-sd/a_hamburger@LAST/ckpts/last.ckpt`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..config import ConfigError, build, load_config
from ..training.checkpoint import load_checkpoint

log = logging.getLogger("hash3d")

OVERRIDE_KEY = "system.geometry_convert_override.isosurface_threshold"


@dataclass
class GeometryConvertOverride:
    """Settings of the coarse geometry changed for the conversion only (threestudio's geometry_convert_override)."""

    isosurface_threshold: float | Literal["auto"] | None = None
    """Density of the surface taken from the coarse stage (None: the coarse config's own value). Lower it when the
    refined surface has holes, raise it when it is bloated."""


@dataclass
class GeometryConvertConfig:
    """Refine-stage options of a system (mixed into its config)."""

    refinement: bool = False
    """A refine stage: needs geometry_convert_from (or weights, or a resume)."""
    geometry_convert_from: str | None = None
    """Coarse checkpoint (`<trial>/ckpts/last.ckpt`; `LAST` allowed) whose geometry starts this stage."""
    geometry_convert_inherit_texture: bool = False
    """Copy the coarse stage's hash-grid encoding and feature network (their configs must match)."""
    geometry_convert_override: GeometryConvertOverride = field(default_factory=GeometryConvertOverride)


def resolve_last(path: str | Path) -> Path:
    """`…/<prefix>LAST<rest>` -> the newest (by name: trial names end in a timestamp) `<prefix>*` folder + rest that
    exists; other paths unchanged."""
    text = str(path)
    if "LAST" not in text:
        return Path(text)
    head, rest = text.split("LAST", 1)
    parent, prefix = Path(os.path.dirname(head) or "."), os.path.basename(head)
    if not parent.is_dir():
        raise ConfigError(f"geometry_convert_from={text}: folder {parent} does not exist")
    found = sorted((d for d in parent.iterdir() if d.is_dir() and d.name.startswith(prefix)), key=lambda d: d.name)
    found = [d for d in found if Path(str(d) + rest).exists()]
    if not found:
        raise ConfigError(f"geometry_convert_from={text}: no folder {parent}/{prefix}* holds {rest.lstrip('/')}")
    return Path(str(found[-1]) + rest)


def load_coarse_geometry(path: str | Path, device: torch.device | str):
    """(geometry with the checkpoint's weights, its config) of a coarse run's checkpoint."""
    ckpt_path = resolve_last(path)
    parsed = ckpt_path.resolve().parent.parent / "configs" / "parsed.yaml"
    if not ckpt_path.is_file():
        raise ConfigError(f"system.geometry_convert_from: checkpoint not found: {ckpt_path}")
    if not parsed.is_file():
        raise ConfigError(
            f"system.geometry_convert_from={ckpt_path}: the coarse run's config {parsed} is missing (the checkpoint must "
            "stay in its trial folder, <trial>/ckpts/, next to <trial>/configs/parsed.yaml)"
        )
    cfg, _ = load_config(parsed, [])
    system = cfg.system
    geometry = build("geometry", system.geometry_type, system.geometry, device=device)
    ckpt = load_checkpoint(ckpt_path)
    state = {k[len("geometry."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("geometry.")}
    geometry.load_state_dict(state)
    geometry.update_step(int(ckpt["global_step"]))
    log.info("coarse geometry from %s (step %d)", ckpt_path, int(ckpt["global_step"]))
    return geometry, system.geometry


def convert_geometry(target, cfg: GeometryConvertConfig, device: torch.device | str) -> float:
    """Initialise `target` (a DMTet geometry) from `cfg.geometry_convert_from`; returns the threshold used."""
    coarse, coarse_cfg = load_coarse_geometry(cfg.geometry_convert_from, device)
    threshold = cfg.geometry_convert_override.isosurface_threshold
    if threshold is None:
        threshold = getattr(coarse_cfg, "isosurface_threshold", "auto")
    value = target.initialize_from_density(
        coarse, threshold, cfg.geometry_convert_inherit_texture, override_key=OVERRIDE_KEY
    )
    del coarse
    return value


def check_refine_config(cfg: GeometryConvertConfig, geometry_type: str) -> None:
    """ConfigError for a refine stage with nothing to start from, or a conversion into a geometry that cannot take it."""
    if cfg.refinement and not cfg.geometry_convert_from and not getattr(cfg, "weights", None):
        raise ConfigError(
            "this is a refine stage (system.refinement=true): pass the coarse run's checkpoint, "
            "system.geometry_convert_from=outputs/<coarse name>/<trial>/ckpts/last.ckpt"
        )
    if cfg.geometry_convert_from and geometry_type != "tetrahedra-sdf-grid":
        raise ConfigError(
            f"system.geometry_convert_from converts into a DMTet geometry; system.geometry_type is {geometry_type!r}: "
            "set it to 'tetrahedra-sdf-grid' (or drop geometry_convert_from)"
        )


def start_from_coarse(geometry, cfg: GeometryConvertConfig, device: torch.device | str, resuming: bool) -> None:
    """On fit start: convert from the coarse checkpoint unless the model's state comes from elsewhere (a resume's
    checkpoint, or `system.weights`), as threestudio does."""
    if cfg.geometry_convert_from and not getattr(cfg, "weights", None) and not resuming:
        convert_geometry(geometry, cfg, device)
