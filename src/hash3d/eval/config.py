"""Typed options of the evaluation tools, checked when built (the command lines fill these in)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hash3d.eval.errors import EvalError
from hash3d.eval.images import parse_background
from hash3d.eval.perceptual import LPIPS_NETS

DEFAULT_CLIP_MODEL = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
# Short names for the three CLIP models the paper reports (CLIP-G/14, CLIP-L/14, CLIP-B/32).
CLIP_MODEL_ALIASES = {
    "bigG-14": DEFAULT_CLIP_MODEL,
    "L-14": "openai/clip-vit-large-patch14",
    "B-32": "openai/clip-vit-base-patch32",
}
CLIP_MODES = ("text", "image")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EvalError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {name}: this torch has no usable CUDA device (use --device cpu)")
    return device


@dataclass
class NVSConfig:
    """Options of the novel-view metrics (eval_nvs.py)."""

    gt_dir: Path
    pred_dir: Path
    size: int = 256  # side every pair whose two images differ in size is resized to
    background: str = "white"  # colour that alpha is composited on
    lpips_net: str | None = "vgg"  # None: do not compute LPIPS
    allow_missing: bool = False  # score the views both folders hold instead of failing
    device: str = "auto"
    out: Path | None = None  # results file, .json or .csv
    name: str | None = None  # label of this run in the table and output file

    def __post_init__(self) -> None:
        self.gt_dir, self.pred_dir = Path(self.gt_dir), Path(self.pred_dir)
        self.out = Path(self.out) if self.out is not None else None
        if self.size < 11:
            raise EvalError(f"--size {self.size}: must be at least 11 (the SSIM window)")
        if self.lpips_net is not None and self.lpips_net not in LPIPS_NETS:
            raise EvalError(f"--lpips-net {self.lpips_net!r}: choose from {', '.join(LPIPS_NETS)} or none")
        parse_background(self.background)

    @property
    def background_rgb(self) -> tuple[float, float, float]:
        return parse_background(self.background)


@dataclass
class ClipSimConfig:
    """Options of the CLIP similarity (eval_clip_sim.py)."""

    target: str  # the prompt (text mode) or a reference image path (image mode)
    pred_dir: Path
    mode: str | None = None  # text | image; None: image when target is an existing image file, else text
    model: str = DEFAULT_CLIP_MODEL  # hub id, local folder, or one of CLIP_MODEL_ALIASES
    views: int = 8  # views sampled evenly from the folder; 0 = all
    batch_size: int = 16
    background: str = "white"
    device: str = "auto"
    dtype: str = "float32"
    out: Path | None = None

    def __post_init__(self) -> None:
        self.pred_dir = Path(self.pred_dir)
        self.out = Path(self.out) if self.out is not None else None
        self.model = CLIP_MODEL_ALIASES.get(self.model, self.model)
        if self.mode is not None and self.mode not in CLIP_MODES:
            raise EvalError(f"--mode {self.mode!r}: choose text or image")
        if self.views < 0:
            raise EvalError(f"--views {self.views}: must be 0 (all) or more")
        if self.batch_size < 1:
            raise EvalError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.dtype not in DTYPES:
            raise EvalError(f"--dtype {self.dtype!r}: choose from {', '.join(DTYPES)}")
        if not self.target.strip():
            raise EvalError("TARGET is empty: give a prompt (text mode) or an image path (image mode)")
        parse_background(self.background)

    @property
    def background_rgb(self) -> tuple[float, float, float]:
        return parse_background(self.background)
