"""What a CLIP image processor does to a square image, in torch (differentiable, on the model's device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_pixels(rgb: torch.Tensor, feature_extractor) -> torch.Tensor:
    """rgb [B, 3, H, W] in [0, 1] (square) -> the processor's resize to its crop size and normalisation."""
    size = feature_extractor.crop_size  # a dict, or transformers 5's SizeDict
    crop = int(getattr(size, "height", None) or (size["height"] if isinstance(size, dict) else size))
    pixels = F.interpolate(rgb, (crop, crop), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(feature_extractor.image_mean, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(feature_extractor.image_std, device=rgb.device).view(1, 3, 1, 1)
    return (pixels - mean) / std
