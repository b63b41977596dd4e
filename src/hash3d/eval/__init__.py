"""Evaluation of generated 3D objects: novel-view metrics (PSNR, SSIM, LPIPS) and CLIP similarity.

Importing this package loads neither transformers nor torchvision: CLIP models load in `clip_sim` when used,
and LPIPS (which needs torchvision) in `perceptual.load_lpips` only when asked for.
"""

from hash3d.eval.clip_sim import ClipEmbedder, evaluate_clip
from hash3d.eval.config import CLIP_MODEL_ALIASES, DEFAULT_CLIP_MODEL, ClipSimConfig, NVSConfig
from hash3d.eval.errors import EvalError
from hash3d.eval.metrics import psnr, ssim
from hash3d.eval.nvs import evaluate_nvs
from hash3d.eval.perceptual import LPIPSDistance, LPIPSStatus, load_lpips
from hash3d.eval.report import MetricTable

__all__ = [
    "CLIP_MODEL_ALIASES",
    "DEFAULT_CLIP_MODEL",
    "ClipEmbedder",
    "ClipSimConfig",
    "EvalError",
    "LPIPSDistance",
    "LPIPSStatus",
    "MetricTable",
    "NVSConfig",
    "evaluate_clip",
    "evaluate_nvs",
    "load_lpips",
    "psnr",
    "ssim",
]
