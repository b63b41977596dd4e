"""Reading rendered views from disk as float RGB tensors in [0, 1].

Every image, whatever its file mode (8- or 16-bit, grayscale, palette, with or without alpha), ends up as a
(3, H, W) float64 tensor: grayscale is repeated over the three channels and alpha is composited onto a chosen
background colour (straight, not premultiplied, alpha as PNG stores it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from hash3d.eval.errors import EvalError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_NAMED_BACKGROUNDS = {
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
    "grey": (0.5, 0.5, 0.5),
}


@dataclass(frozen=True)
class ImageInfo:
    """What was found in the file, for notices: its size, bit depth, and whether it had alpha."""

    path: Path
    width: int
    height: int
    channels: int  # 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA, as stored
    bit_depth: int  # 8 or 16 (32 for float files)
    precision_note: str | None = None  # set when the reader could not keep the file's full precision

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)


def natural_key(name: str) -> list:
    """Sort key that puts 'view2' before 'view10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(directory: str | Path, what: str = "image folder") -> list[Path]:
    """The image files directly inside `directory`, in natural order; an EvalError when there are none."""
    directory = Path(directory)
    if not directory.exists():
        raise EvalError(f"{what} {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise EvalError(f"{what} {str(directory)!r} is not a folder")
    files = [p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise EvalError(
            f"{what} {str(directory)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return sorted(files, key=lambda p: natural_key(p.name))


def parse_background(spec: str | tuple[float, float, float]) -> tuple[float, float, float]:
    """A background colour from 'white' / 'black' / 'gray', '#rrggbb', or 'r,g,b' with components in [0, 1]."""
    if isinstance(spec, tuple):
        colour = tuple(float(c) for c in spec)
    else:
        text = spec.strip().lower()
        if text in _NAMED_BACKGROUNDS:
            return _NAMED_BACKGROUNDS[text]
        if re.fullmatch(r"#[0-9a-f]{6}", text):
            return tuple(int(text[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]
        try:
            colour = tuple(float(c) for c in text.split(","))
        except ValueError:
            colour = ()
    if len(colour) != 3 or not all(0.0 <= c <= 1.0 for c in colour):
        raise EvalError(
            f"background {spec!r} is not a colour: use white, black, gray, #rrggbb or r,g,b with values in [0, 1]"
        )
    return colour  # type: ignore[return-value]


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None for other files."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """The file's pixels as float64 (H, W, C) in [0, 1], C in {1, 2, 3, 4}, and what the file held."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                arr = np.asarray(im, dtype=np.float64) / 65535.0
                depth = 16
            elif mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                depth = 32
            else:
                if mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif mode == "1":
                    im = im.convert("L")
                elif mode not in ("L", "LA", "RGB", "RGBA"):
                    im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                arr = np.asarray(im, dtype=np.float64) / 255.0
                depth = 8
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise EvalError(f"cannot read image {str(path)!r}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = np.clip(arr, 0.0, 1.0)
    note = None
    header = _png_header(path)
    if header is not None and header[0] == 16 and header[1] != 0:
        # Pillow has no 16-bit colour mode: it hands back the high byte of each sample.
        depth = 16
        note = "16-bit colour PNG read with 8-bit precision (Pillow keeps the high byte; error under 1/255)"
    info = ImageInfo(path, arr.shape[1], arr.shape[0], arr.shape[2], depth, note)
    return arr, info


def composite(pixels: np.ndarray, background: tuple[float, float, float]) -> np.ndarray:
    """(H, W, C) in [0, 1] → (H, W, 3): gray repeated to RGB, alpha blended over `background`."""
    channels = pixels.shape[2]
    colour = pixels[:, :, :1].repeat(3, axis=2) if channels in (1, 2) else pixels[:, :, :3]
    if channels in (2, 4):
        alpha = pixels[:, :, -1:]
        colour = colour * alpha + np.asarray(background, dtype=np.float64) * (1.0 - alpha)
    return colour


def load_rgb(path: str | Path, background: tuple[float, float, float]) -> tuple[torch.Tensor, ImageInfo]:
    """An image file as a (3, H, W) float64 tensor in [0, 1], composited on `background`."""
    pixels, info = read_image(path)
    rgb = composite(pixels, background)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))), info


def resize(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a (C, H, W) or (N, C, H, W) image to `size` (square, or (H, W)) with antialiased bicubic."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[-2:]) == hw:
        return image
    batched = image if image.dim() == 4 else image[None]
    out = F.interpolate(batched, size=hw, mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
    return out if image.dim() == 4 else out[0]


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] as an 8-bit RGB PIL image (exact for images that were 8-bit RGB)."""
    arr = (image.detach().cpu().double().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr))
