"""PSNR and SSIM in torch.

Both take images in [0, data_range] as (C, H, W) or (N, C, H, W) tensors and return one value per image.
SSIM is the standard one (Wang et al. 2004): an 11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03,
population (not sample) statistics, averaged over the positions where the window lies wholly inside the image
and over the channels — the same numbers as scikit-image's `structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hash3d.eval.errors import EvalError


def _batched(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise EvalError(f"images to compare differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x[None], y[None]
    if x.dim() != 4:
        raise EvalError(f"expected (C, H, W) or (N, C, H, W) images, got shape {tuple(x.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    return x.to(dtype), y.to(dtype)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, 10·log10(range² / MSE); +inf where the images are equal."""
    x, y = _batched(x, y)
    mse = (x - y).pow(2).flatten(1).mean(1)
    peak = torch.full_like(mse, float(data_range) ** 2)
    out = 10.0 * torch.log10(peak / mse)
    return torch.where(mse == 0, torch.full_like(out, math.inf), out)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian of `size` taps (odd) centred on the middle tap."""
    if size % 2 != 1:
        raise ValueError("the window size must be odd")
    offsets = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def _filter(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of every channel, 'valid' region only (no padding).

    Written as sliding windows times the taps rather than a grouped conv2d, which is very slow in float64 on CPU.
    """
    size = window.numel()
    along_w = images.unfold(-1, size, 1) @ window
    return along_w.unfold(-2, size, 1) @ window


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (1 for equal images)."""
    x, y = _batched(x, y)
    if min(x.shape[-2:]) < window_size:
        raise EvalError(
            f"SSIM needs images of at least {window_size}×{window_size} pixels, got {x.shape[-1]}×{x.shape[-2]}"
        )
    window = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x = _filter(x, window)
    mu_y = _filter(y, window)
    var_x = _filter(x * x, window) - mu_x * mu_x
    var_y = _filter(y * y, window) - mu_y * mu_y
    cov = _filter(x * y, window) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(1)
