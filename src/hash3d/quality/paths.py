"""Where the shipped pieces live in a checkout: the Hash3D-mini model, the front-ends' mini configs, the example."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO", "MINI_MODEL", "DG_CONFIGS", "TS_CONFIGS", "EXAMPLE_INPUT", "EXAMPLE_ID", "require"]

REPO = Path(__file__).resolve().parents[3]
"""The checkout root (the package is installed editable from src/, so the repository's folders sit beside it)."""
MINI_MODEL = REPO / "models" / "hash3d-mini-zero123"
DG_CONFIGS = REPO / "dreamgaussian-hash3d" / "configs"
TS_CONFIGS = REPO / "threestudio-hash3d" / "configs"
EXAMPLE_INPUT = REPO / "assets" / "mini_heldout_rgba.png"
"""64 px RGBA render of held-out object EXAMPLE_ID from elevation 15°, azimuth 0 (threestudio convention)."""
EXAMPLE_ID = 10**12 + 1011
EXAMPLE_ELEVATION = 15.0


def require(path: Path, what: str) -> Path:
    """`path` when it exists, else a FileNotFoundError that says what is missing and why."""
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found at {path}: hash3d must run from a checkout of the repository installed with "
            "`pip install -e .` (the shipped model, configs and example live beside src/)"
        )
    return path
