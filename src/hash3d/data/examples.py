"""Example RGBA input images drawn procedurally (no third-party pictures): a stylised dog, a mug, a snowman.

    python -m hash3d.data.examples threestudio-hash3d/load/images

Each is drawn at 4x size with simple shapes and two-tone shading, then downsampled (antialiased edges) to 256 px.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
SS = 4  # supersampling factor


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw, Callable[..., list[float]]]:
    img = Image.new("RGBA", (SIZE * SS, SIZE * SS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [v * SS for v in (x0, y0, x1, y1)]

    return img, draw, box


def _finish(img: Image.Image) -> Image.Image:
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _shaded_ellipse(draw, box, xy, base, shade, light) -> None:
    """An ellipse with a darker lower band and a highlight: reads as a rounded solid."""
    x0, y0, x1, y1 = xy
    draw.ellipse(box(x0, y0, x1, y1), fill=shade)
    h = y1 - y0
    draw.ellipse(box(x0, y0, x1, y1 - 0.18 * h), fill=base)
    w = x1 - x0
    draw.ellipse(box(x0 + 0.2 * w, y0 + 0.12 * h, x0 + 0.55 * w, y0 + 0.35 * h), fill=light)


def dog() -> Image.Image:
    """A sitting cartoon dog seen from the front-left: body, head, ears, snout, legs, tail."""
    img, draw, box = _canvas()
    fur, fur_dark, fur_light = (196, 140, 84, 255), (150, 100, 58, 255), (226, 184, 132, 255)
    ear = (110, 72, 44, 255)
    # tail
    draw.line([tuple(v * SS for v in p) for p in [(176, 176), (204, 150), (214, 120)]], fill=fur_dark, width=14 * SS, joint="curve")
    # back legs and body
    _shaded_ellipse(draw, box, (70, 150, 122, 226), fur, fur_dark, fur_light)
    _shaded_ellipse(draw, box, (134, 150, 186, 226), fur, fur_dark, fur_light)
    _shaded_ellipse(draw, box, (80, 112, 180, 214), fur, fur_dark, fur_light)
    # chest patch
    draw.ellipse(box(108, 130, 152, 190), fill=(240, 224, 196, 255))
    # front legs and paws
    for x in (100, 140):
        draw.rounded_rectangle(box(x - 11, 170, x + 11, 230), radius=9 * SS, fill=fur)
        draw.ellipse(box(x - 15, 218, x + 15, 236), fill=(240, 224, 196, 255))
    # ears behind the head
    draw.ellipse(box(66, 52, 100, 120), fill=ear)
    draw.ellipse(box(160, 52, 194, 120), fill=ear)
    # head
    _shaded_ellipse(draw, box, (78, 40, 182, 138), fur, fur_dark, fur_light)
    # snout, nose, mouth
    draw.ellipse(box(104, 92, 156, 134), fill=(240, 224, 196, 255))
    draw.ellipse(box(119, 94, 141, 110), fill=(30, 24, 22, 255))
    draw.arc(box(116, 106, 130, 124), start=10, end=170, fill=(60, 40, 30, 255), width=2 * SS)
    draw.arc(box(130, 106, 144, 124), start=10, end=170, fill=(60, 40, 30, 255), width=2 * SS)
    # eyes
    for x in (108, 152):
        draw.ellipse(box(x - 8, 70, x + 8, 88), fill=(25, 20, 18, 255))
        draw.ellipse(box(x - 3, 73, x + 2, 78), fill=(255, 255, 255, 255))
    # collar and tag
    draw.rounded_rectangle(box(96, 134, 164, 144), radius=4 * SS, fill=(200, 40, 50, 255))
    draw.ellipse(box(124, 140, 136, 152), fill=(240, 200, 60, 255))
    return _finish(img)


def mug() -> Image.Image:
    """A blue mug with a handle, seen slightly from above."""
    img, draw, box = _canvas()
    blue, blue_dark, blue_light = (52, 102, 196, 255), (34, 68, 140, 255), (110, 156, 230, 255)
    draw.ellipse(box(150, 96, 214, 176), outline=blue_dark, width=14 * SS)
    draw.rectangle(box(58, 70, 178, 206), fill=blue)
    draw.rectangle(box(140, 70, 178, 206), fill=blue_dark)
    draw.rectangle(box(70, 80, 86, 196), fill=blue_light)
    draw.ellipse(box(58, 190, 178, 222), fill=blue_dark)
    draw.ellipse(box(58, 52, 178, 88), fill=blue_light)
    draw.ellipse(box(66, 58, 170, 84), fill=(60, 36, 24, 255))
    return _finish(img)


def snowman() -> Image.Image:
    """Three stacked snowballs, a hat, a carrot nose and a scarf."""
    img, draw, box = _canvas()
    snow, snow_dark, snow_light = (236, 240, 246, 255), (190, 200, 214, 255), (255, 255, 255, 255)
    _shaded_ellipse(draw, box, (68, 150, 188, 246), snow, snow_dark, snow_light)
    _shaded_ellipse(draw, box, (84, 92, 172, 168), snow, snow_dark, snow_light)
    _shaded_ellipse(draw, box, (96, 44, 160, 104), snow, snow_dark, snow_light)
    draw.rectangle(box(100, 86, 156, 100), fill=(200, 40, 50, 255))
    draw.rectangle(box(140, 92, 152, 130), fill=(200, 40, 50, 255))
    draw.rectangle(box(92, 38, 164, 48), fill=(30, 30, 34, 255))
    draw.rectangle(box(104, 8, 152, 42), fill=(30, 30, 34, 255))
    draw.polygon([tuple(v * SS for v in p) for p in [(126, 70), (126, 80), (150, 76)]], fill=(240, 130, 30, 255))
    for x in (116, 140):
        draw.ellipse(box(x - 4, 58, x + 4, 66), fill=(20, 20, 20, 255))
    for y in (116, 134, 152):
        draw.ellipse(box(124, y, 132, y + 8), fill=(20, 20, 20, 255))
    return _finish(img)


EXAMPLES: dict[str, Callable[[], Image.Image]] = {
    "dog1_rgba.png": dog,
    "mug_rgba.png": mug,
    "snowman_rgba.png": snowman,
}


def write_examples(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in EXAMPLES.items():
        path = folder / name
        make().save(path, optimize=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_examples(sys.argv[1] if len(sys.argv) > 1 else "load/images"):
        print(p, p.stat().st_size, "bytes")
