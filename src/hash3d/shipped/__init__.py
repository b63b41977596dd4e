"""What hash3d ships besides code: the Hash3D-mini Zero123 model, the demo's example input and the front-ends'
configs. The folders here link to the repository's `models/`, `assets/`, `dreamgaussian-hash3d/configs/` and
`threestudio-hash3d/configs/`; a regular install copies them in as package data, so the same paths work from a
checkout and from an installed wheel."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DG_CONFIGS", "EXAMPLE_ELEVATION", "EXAMPLE_ID", "EXAMPLE_INPUT", "MINI_MODEL", "TS_CONFIGS", "require"]

_HERE = Path(__file__).parent
MINI_MODEL = _HERE / "models" / "hash3d-mini-zero123"
DG_CONFIGS = _HERE / "dreamgaussian-configs"
TS_CONFIGS = _HERE / "threestudio-configs"
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
