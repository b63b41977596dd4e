"""The reference image of image-to-3D (`single-image-datamodule`): load an RGBA PNG, recentre and rescale the object,
resize per resolution milestone, and put the reference camera at the configured elevation / azimuth / distance / fov.

Resizing works on premultiplied colour (colour x alpha) so the invisible colour of background pixels never bleeds
into the object's edge; downscaling averages areas (OpenCV INTER_AREA), upscaling is bilinear.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..config.registry import register
from .base import DataError, DataModule, check_milestones, milestone_index, per_milestone
from .batches import CameraBatch, ReferenceBatch, SingleImageBatch
from .cameras import camera_position, look_at
from .random_camera import RandomCameraConfig, RandomCameraSampler, eval_batches

REMBG_HINT = (
    "provide an RGBA image whose alpha channel marks the object (transparent background), or remove the background "
    "first, e.g. `pip install rembg` then `rembg i input.png input_rgba.png`"
)


_PLAIN_MODES = ("RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV")
"""Pillow modes of 8-bit images without an alpha channel."""


@dataclass(frozen=True)
class ImageFile:
    """An image file read as 8-bit RGBA (`read_rgba`)."""

    rgba: np.ndarray  # uint8 [H, W, 4]; alpha 255 where the file stores none
    mode: str  # the file's Pillow mode
    stores_alpha: bool  # the file has an alpha channel (or a transparent palette colour)

    @property
    def has_mask(self) -> bool:
        """An alpha channel that masks something (not 255 everywhere)."""
        return self.stores_alpha and int(self.rgba[..., 3].min()) < 255


def read_rgba(path: str | Path) -> ImageFile:
    """The one reader of input images (threestudio's data module, DreamGaussian, process.py). DataError, naming the
    fix, for a missing file, a folder, a file Pillow cannot read, a 16-bit or float image, and an image whose alpha
    is 0 everywhere."""
    path = Path(path)
    if not str(path):
        raise DataError("no image given: set data.image_path=PATH to an RGBA image")
    if not path.exists():
        raise DataError(f"image not found: {path}")
    if path.is_dir():
        raise DataError(f"image path is a folder, not an image: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            stores_alpha = mode in ("RGBA", "LA", "RGBa", "La", "PA") or (mode == "P" and "transparency" in im.info)
            if not stores_alpha and mode not in _PLAIN_MODES:
                raise DataError(
                    f"image {path} has an unsupported pixel mode {mode!r} (e.g. 16-bit or float): save it as an "
                    "8-bit RGBA PNG"
                )
            rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; give a PNG (or WebP/TIFF) with an alpha channel") from exc
    if stores_alpha and rgba[..., 3].max() == 0:
        raise DataError(f"image {path} is fully transparent (alpha is 0 everywhere): nothing to reconstruct")
    return ImageFile(rgba, mode, stores_alpha)


def load_rgba(path: str | Path) -> torch.Tensor:
    """An image file whose alpha channel masks the object -> float tensor [H, W, 4] in [0, 1]; DataError with a fix
    otherwise."""
    image = read_rgba(path)
    if not image.stores_alpha:
        raise DataError(f"image {path} has no alpha channel (mode {image.mode}): {REMBG_HINT}")
    if not image.has_mask:
        raise DataError(f"image {path} is fully opaque (alpha is 1 everywhere), so it shows no object mask: {REMBG_HINT}")
    return torch.from_numpy(image.rgba.astype(np.float32) / 255.0)


def resize(image: torch.Tensor, height: int, width: int, alpha_channel: int | None = 3) -> torch.Tensor:
    """[H, W, C] -> [height, width, C]; area averaging when shrinking, bilinear when growing.

    With `alpha_channel`, the other channels are resized premultiplied by alpha and divided back afterwards
    (0 where the new alpha is 0).
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.clone()
    x = image.permute(2, 0, 1)[None].float()
    if alpha_channel is not None:
        alpha = x[:, alpha_channel : alpha_channel + 1]
        x = torch.cat([x * alpha, alpha], 1)  # the alpha channel is premultiplied too; the extra copy is the alpha
    if height <= h and width <= w:
        y = F.interpolate(x, size=(height, width), mode="area")
    else:
        y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    if alpha_channel is not None:
        alpha = y[:, -1:].clamp(0, 1)
        y = torch.where(alpha > 0, y[:, :-1] / alpha.clamp_min(1e-12), torch.zeros_like(y[:, :-1]))
        y[:, alpha_channel : alpha_channel + 1] = alpha
    return y[0].permute(1, 2, 0).clamp(0, 1) if alpha_channel is not None else y[0].permute(1, 2, 0)


def foreground_box(alpha: torch.Tensor, threshold: float = 0.0) -> tuple[int, int, int, int]:
    """Inclusive (top, bottom, left, right) of the pixels with alpha > threshold."""
    ys, xs = torch.nonzero(alpha > threshold, as_tuple=True)
    if ys.numel() == 0:
        raise DataError("the image has no foreground pixels (alpha is 0 everywhere)")
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def recenter(image: torch.Tensor, border_ratio: float = 0.2, size: int | None = None) -> torch.Tensor:
    """Centre the object of an RGBA(+extra channels) image [H, W, C] on a square canvas [S, S, C].

    The bounding box of alpha > 0 is scaled so that its longer side is round(S * (1 - border_ratio)) pixels and
    placed in the middle (top-left at ((S - h') // 2, (S - w') // 2)); S defaults to max(H, W).
    """
    if not 0 <= border_ratio < 1:
        raise DataError(f"border_ratio must be in [0, 1); got {border_ratio}")
    size = size or max(image.shape[0], image.shape[1])
    top, bottom, left, right = foreground_box(image[..., 3])
    crop = image[top : bottom + 1, left : right + 1]
    ch, cw = crop.shape[:2]
    desired = max(1, round(size * (1 - border_ratio)))
    scale = desired / max(ch, cw)
    nh, nw = max(1, min(size, round(ch * scale))), max(1, min(size, round(cw * scale)))
    out = torch.zeros(size, size, image.shape[2], dtype=image.dtype)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = resize(crop, nh, nw)
    return out


@dataclass
class SingleImageConfig:
    """The reference view of image-to-3D (threestudio `SingleImageDataModuleConfig` names and defaults)."""

    image_path: str = ""
    """RGBA image of the object (alpha marks the object)."""
    height: int | list[int] = 96
    """Reference render height, or one per milestone interval."""
    width: int | list[int] = 96
    resolution_milestones: list[int] = field(default_factory=list)
    default_elevation_deg: float = 0.0
    default_azimuth_deg: float = -180.0
    default_camera_distance: float = 1.2
    default_fovy_deg: float = 60.0
    requires_depth: bool = False
    """Load `<image>_depth.png` (the image path with '_rgba' replaced by '_depth')."""
    requires_normal: bool = False
    """Load `<image>_normal.png` (the image path with '_rgba' replaced by '_normal')."""
    rays_noise_scale: float = 2e-3
    """Std of the jitter added to the reference view's ray directions (batch.ray_jitter)."""
    recenter: bool = True
    """Centre and rescale the object so that it fills (1 - border_ratio) of the longer image side."""
    border_ratio: float = 0.2
    batch_size: int = 1
    """Must be 1 (one reference view)."""
    use_random_camera: bool = True
    """Also draw random cameras each step (for the SDS guidance)."""
    random_camera: RandomCameraConfig = field(default_factory=RandomCameraConfig)
    seed: int | None = None
    """Seed of the camera generator (None: the experiment seed)."""

    def __post_init__(self) -> None:
        check_milestones("resolution_milestones", self.resolution_milestones)
        per_milestone("height", self.height, self.resolution_milestones)
        per_milestone("width", self.width, self.resolution_milestones)
        if not 0 <= self.border_ratio < 1:
            raise DataError(f"border_ratio must be in [0, 1); got {self.border_ratio}")
        if self.batch_size != 1:
            raise DataError(f"single-image data has one reference view: batch_size must be 1, got {self.batch_size}")


def _companion(path: Path, kind: str) -> Path:
    name = path.name.replace("_rgba", f"_{kind}") if "_rgba" in path.name else f"{path.stem}_{kind}{path.suffix}"
    return path.with_name(name)


def _load_plain(path: Path, channels: int, what: str) -> torch.Tensor:
    if not path.exists():
        raise DataError(f"{what} map not found: {path} (needed because data.requires_{what} is true)")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read {what} map {path}: {exc}") from exc
    return torch.from_numpy(arr.copy()).reshape(arr.shape[0], arr.shape[1], channels)


@register("data", "single-image-datamodule", config=SingleImageConfig)
class SingleImageDataModule(DataModule):
    """Image-to-3D data: the reference view each step plus random cameras; orbits for validation and test."""

    cfg: SingleImageConfig

    def __init__(self, cfg: SingleImageConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.sampler = RandomCameraSampler(cfg.random_camera, seed if cfg.seed is None else cfg.seed)
        self.image: torch.Tensor | None = None
        self.views: list[ReferenceBatch] = []

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        path = Path(cfg.image_path)
        try:
            rgba = load_rgba(path)
        except DataError as exc:
            raise DataError(f"data.image_path: {exc}") from exc
        extra = []
        if cfg.requires_depth:
            extra.append(_load_plain(_companion(path, "depth"), 1, "depth"))
        if cfg.requires_normal:
            extra.append(_load_plain(_companion(path, "normal"), 3, "normal"))
        for e in extra:
            if e.shape[:2] != rgba.shape[:2]:
                raise DataError(f"depth/normal maps must have the image's size {tuple(rgba.shape[:2])}; got {tuple(e.shape[:2])}")
        full = torch.cat([rgba, *extra], -1)
        if cfg.recenter:
            full = recenter(full, cfg.border_ratio)
        self.image = full
        heights = per_milestone("height", cfg.height, cfg.resolution_milestones)
        widths = per_milestone("width", cfg.width, cfg.resolution_milestones)
        self.views = [self._view(full, h, w) for h, w in zip(heights, widths)]

    def _view(self, full: torch.Tensor, height: int, width: int) -> ReferenceBatch:
        cfg = self.cfg
        img = resize(full, height, width)
        elevation = torch.tensor([cfg.default_elevation_deg], dtype=torch.float32)
        azimuth = torch.tensor([cfg.default_azimuth_deg], dtype=torch.float32)
        distance = torch.tensor([cfg.default_camera_distance], dtype=torch.float32)
        position = camera_position(elevation, azimuth, distance)
        c = 4
        depth = normal = None
        if cfg.requires_depth:
            depth, c = img[None, ..., c : c + 1], c + 1
        if cfg.requires_normal:
            normal = img[None, ..., c : c + 3] * 2 - 1
        return ReferenceBatch(
            c2w=look_at(position),
            elevation=elevation,
            azimuth=azimuth,
            camera_distances=distance,
            fovy=torch.tensor([cfg.default_fovy_deg], dtype=torch.float32),
            camera_positions=position,
            light_positions=position.clone(),
            height=height,
            width=width,
            ray_jitter=cfg.rays_noise_scale,
            rgb=img[None, ..., :3].contiguous(),
            mask=img[None, ..., 3:4] > 0.5,
            depth=depth,
            normal=normal,
        )

    def _require_setup(self) -> None:
        if not self.views:
            raise RuntimeError("call setup() before asking the single-image data module for batches")

    # ------------------------------------------------------------------ batches
    def reference(self, step: int = 0) -> ReferenceBatch:
        """The reference view at the resolution that applies at `step`."""
        self._require_setup()
        return self.views[milestone_index(step, self.cfg.resolution_milestones)]

    @property
    def reference_image(self) -> torch.Tensor:
        """The (recentred) RGBA image at full size [H, W, 4] in [0, 1]: the guidance's condition image."""
        self._require_setup()
        assert self.image is not None
        return self.image[..., :4]

    def train_batch(self, step: int) -> SingleImageBatch:
        ref = self.reference(step)
        random = self.sampler.sample(step) if self.cfg.use_random_camera else None
        return SingleImageBatch(ref=ref, random=random)

    def val_batches(self) -> Iterator[CameraBatch]:
        return eval_batches(self.cfg.random_camera, "val")

    def test_batches(self) -> Iterator[CameraBatch]:
        return eval_batches(self.cfg.random_camera, "test")

    def num_val_views(self) -> int:
        return self.cfg.random_camera.n_val_views

    def num_test_views(self) -> int:
        return self.cfg.random_camera.n_test_views

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
