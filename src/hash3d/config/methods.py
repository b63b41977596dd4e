"""The front-ends' config folders as a method table: every `configs/*.yaml` is a method, every `X_hash3d.yaml` has a
no-cache twin `X.yaml`, and one shrink function turns any of them into a two-step CPU smoke run.

    for path in discover("threestudio-hash3d/configs").values():
        main(["--config", str(path), "--train", *smoke_overrides(load_config(path)[0])])

    for plain, hashed in twins("threestudio-hash3d/configs"):
        assert twin_differences(plain, hashed) == []   # identical except name/tag and the cache blocks
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .diff import config_diff
from .loader import load_config
from .typed import to_data

HASH3D_SUFFIX = "_hash3d"
ORIGINAL_SUFFIX = "-hash3d"
"""The original project's spelling (`latentnerf-hash3d.yaml`), accepted next to ours."""


def discover(folder: str | Path) -> dict[str, Path]:
    """{method name (file stem): path} for every YAML in the folder, sorted by name."""
    return {p.stem: p for p in sorted(Path(folder).glob("*.yaml"))}


def twins(folder: str | Path) -> list[tuple[Path, Path]]:
    """(X.yaml, X_hash3d.yaml) pairs (or X-hash3d.yaml, the original spelling); a cache file without its twin raises
    ValueError."""
    methods = discover(folder)
    pairs = []
    for name, path in methods.items():
        suffix = next((s for s in (HASH3D_SUFFIX, ORIGINAL_SUFFIX) if name.endswith(s)), None)
        if suffix:
            plain = name[: -len(suffix)]
            if plain not in methods:
                raise ValueError(f"{path} has no no-cache twin {plain}.yaml in {folder}")
            pairs.append((methods[plain], path))
    return pairs


def twin_differences(
    plain: str | Path, hashed: str | Path, allowed: Sequence[str] = ("name", "tag", "description"), overrides: Sequence[str] = ()
) -> list[str]:
    """Key paths whose values differ between a config and its `_hash3d` twin, leaving out `allowed` top-level keys and
    anything inside a `cache` block. An empty list means the twins do equal work apart from the cache."""
    a, _ = load_config(plain, overrides)
    b, _ = load_config(hashed, overrides)
    return config_diff(to_data(a), to_data(b), lambda key: key.split(".")[0] in allowed or "cache" in key.split("."))


def smoke_overrides(cfg: Any, steps: int = 2, size: int = 32, test_views: int = 2) -> list[str]:
    """Overrides that shrink any config to a few small CPU steps: sizes, batch sizes, milestones, views, step count,
    and a hash grid of 2^12 entries a level (at threestudio's 2^19 every checkpoint is ~200 MB with its Adam state).

    Systems with their own expensive knobs (samples per ray, Gaussian counts) add theirs on top. The data block is
    told apart by its fields (this layer knows no data classes): an image dataset holds its `random_camera` views,
    a random-camera dataset has evaluation sizes.
    """
    out = [
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=0",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        f"checkpoint.every_n_train_steps={steps}",
    ]

    def cameras(prefix: str) -> list[str]:
        return [
            f"{prefix}.height={size}",
            f"{prefix}.width={size}",
            f"{prefix}.batch_size=1",
            f"{prefix}.resolution_milestones=[]",
            f"{prefix}.eval_height={size}",
            f"{prefix}.eval_width={size}",
            f"{prefix}.n_val_views=1",
            f"{prefix}.n_test_views={test_views}",
        ]

    geometry = getattr(getattr(cfg, "system", None), "geometry", None)
    if getattr(geometry, "pos_encoding_config", None) is not None:
        out.append("system.geometry.pos_encoding_config.log2_hashmap_size=12")
    data = getattr(cfg, "data", None)
    if hasattr(data, "random_camera"):
        out += [f"data.height={size}", f"data.width={size}", "data.resolution_milestones=[]"]
        out += cameras("data.random_camera")
    elif hasattr(data, "eval_height"):
        out += cameras("data")
    return out
