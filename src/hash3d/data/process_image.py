"""Prepare an input photo for image-to-3D (DreamGaussian's `process.py`): object mask, recentring, rescaling.

    python process.py data/name.png                # writes data/name_rgba.png
    python process.py data/                        # every image in the folder

For each image: an existing alpha channel is kept as the object mask; an image without one (or whose alpha is
opaque everywhere) gets its background removed by `rembg` when that package is installed (its first use downloads
the segmentation model's weights, about 170 MB for u2net, into ~/.u2net; the message says so). Without rembg such
an image is refused with an error that names the fixes. With recentring (the default) the object's bounding box
(alpha > 0) is scaled so that its longer side is (1 − border_ratio) of a `size`×`size` canvas, 80% by default, and
centred; without it the image keeps its size. The result is written as `<name>_rgba.png` next to the input.

Differences from DreamGaussian's script: it always ran rembg, even on images that already had an alpha channel;
`--recenter` was declared `type=bool`, so `--recenter False` meant True (here false/0/no turn it off); in a folder
it also processed its own `_rgba.png` outputs again (skipped here).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cli import run_cli
from .base import DataError
from .image import read_rgba, recenter

logger = logging.getLogger(__name__)

__all__ = ["ProcessOptions", "has_rembg", "remove_background", "process_image", "process_path", "main"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
OUTPUT_SUFFIX = "_rgba.png"
NO_ALPHA_FIX = (
    "either `pip install rembg` (its first use downloads a segmentation model, about 170 MB) and run "
    "`python process.py IMAGE` again, or give an RGBA image whose alpha channel marks the object"
)


def has_rembg() -> bool:
    return importlib.util.find_spec("rembg") is not None


def remove_background(rgb: np.ndarray, model: str = "u2net", source: str = "") -> np.ndarray:
    """uint8 RGB(A) [H, W, 3|4] -> uint8 RGBA with the background cut out by rembg."""
    if not has_rembg():
        raise DataError(f"{source or 'the image'} has no alpha channel and rembg is not installed: {NO_ALPHA_FIX}")
    import rembg  # noqa: PLC0415

    print(
        f"removing the background with rembg ({model}); on first use rembg downloads the model's weights "
        "(about 170 MB for u2net, into ~/.u2net)",
        file=sys.stderr,
    )
    session = rembg.new_session(model_name=model)
    out = rembg.remove(Image.fromarray(rgb[..., :3]), session=session)
    return np.asarray(Image.fromarray(np.asarray(out)).convert("RGBA"), dtype=np.uint8).copy()


class ProcessOptions:
    """Options of `process_image` (DreamGaussian's process.py flags)."""

    def __init__(self, size: int = 256, border_ratio: float = 0.2, recenter: bool = True, model: str = "u2net"):
        if size < 8:
            raise DataError(f"--size must be at least 8 pixels; got {size}")
        if not 0 <= border_ratio < 1:
            raise DataError(f"--border_ratio must be in [0, 1); got {border_ratio}")
        self.size = size
        self.border_ratio = border_ratio
        self.recenter = recenter
        self.model = model


def output_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + OUTPUT_SUFFIX)


def process_image(path: str | Path, options: ProcessOptions | None = None, out: str | Path | None = None) -> Path:
    """Process one image (see the module docstring) and write it; returns the path written."""
    options = options or ProcessOptions()
    path = Path(path)
    image = read_rgba(path)
    rgba = image.rgba
    if not image.has_mask:
        rgba = remove_background(rgba, options.model, source=str(path))
        if rgba[..., 3].max() == 0:
            raise DataError(f"rembg found no object in {path}: crop the photo closer to the object, or mask it yourself")
    image = torch.from_numpy(rgba.astype(np.float32) / 255.0)
    if options.recenter:
        image = recenter(image, options.border_ratio, options.size)
    out = Path(out) if out is not None else output_path(path)
    array = (image.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(array, "RGBA").save(out)
    return out


def process_path(target: str | Path, options: ProcessOptions | None = None) -> list[Path]:
    """A file, or every image in a folder (not its `_rgba.png` outputs) -> the paths written."""
    target = Path(target)
    if not target.exists():
        raise DataError(f"input not found: {target} (give an image file or a folder of images)")
    if target.is_file():
        return [process_image(target, options)]
    files = sorted(
        p for p in target.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(OUTPUT_SUFFIX)
    )  # fmt: skip
    if not files:
        raise DataError(f"no images in {target} (looked for {', '.join(IMAGE_SUFFIXES)}, skipping *{OUTPUT_SUFFIX})")
    return [process_image(p, options) for p in files]


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on", "y", "t"):
        return True
    if value in ("0", "false", "no", "off", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: Sequence[str] | None = None, prog: str = "process.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Make NAME_rgba.png inputs for image-to-3D.")
    parser.add_argument("path", type=str, help="an image file, or a folder whose images are all processed")
    parser.add_argument("--model", default="u2net", type=str, help="rembg model (used only for images without alpha)")
    parser.add_argument("--size", default=256, type=int, help="output resolution (with recentring)")
    parser.add_argument("--border_ratio", default=0.2, type=float, help="empty border around the object")
    parser.add_argument("--recenter", type=_bool, default=True, help="recentre and rescale the object (true/false)")
    args = parser.parse_args(argv)

    def body() -> None:
        options = ProcessOptions(args.size, args.border_ratio, args.recenter, args.model)
        for out in process_path(args.path, options):
            print(f"wrote {out}")

    return run_cli(body, prog)


if __name__ == "__main__":
    sys.exit(main())
