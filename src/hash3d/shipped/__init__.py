"""What hash3d ships besides code: the Hash3D-mini models (Zero123 image-to-3D, `MINI_MODEL`; text-to-image,
`MINI_SD_MODEL`), the demo's example input and the front-ends' configs. The folders here link to the repository's
`models/`, `assets/`, `dreamgaussian-hash3d/configs/`, `threestudio-hash3d/configs/` and
`gaussian-dreamer-hash3d/configs/`; a regular install copies them in as package data, so the same paths work from a
checkout and from an installed wheel."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DG_CONFIGS", "EXAMPLE_ELEVATION", "EXAMPLE_ID", "EXAMPLE_INPUT", "GD_CONFIGS", "MINI_MODEL", "MINI_SD_MODEL",
           "MODELS", "TS_CONFIGS", "require"]

_HERE = Path(__file__).parent
MODELS = _HERE / "models"
MINI_MODEL = MODELS / "hash3d-mini-zero123"
MINI_SD_MODEL = MODELS / "hash3d-mini-sd"
DG_CONFIGS = _HERE / "dreamgaussian-configs"
TS_CONFIGS = _HERE / "threestudio-configs"
GD_CONFIGS = _HERE / "gaussian-dreamer-configs"
EXAMPLE_INPUT = _HERE / "assets" / "mini_heldout_rgba.png"
"""64 px RGBA render of held-out object EXAMPLE_ID from elevation 15°, azimuth 0 (threestudio convention)."""
EXAMPLE_ID = 10**12 + 1011
EXAMPLE_ELEVATION = 15.0


def require(path: Path, what: str, fix: str | None = None) -> Path:
    """`path` when it exists, else a `MissingFileError` (bad input, exit status 2) naming what is missing and the fix."""
    from hash3d.config.errors import MissingFileError

    path = Path(path)
    if path.exists():
        return path
    hints = []
    if path.absolute().is_relative_to(_HERE):
        hints.append("this installation of hash3d carries no shipped data (install it from a wheel or a checkout that "
                     "has models/, assets/ and the front-end configs)")  # fmt: skip
    hints.append(fix or "check the path")
    raise MissingFileError(f"{what} not found at {path}: {'; or '.join(hints)}")
