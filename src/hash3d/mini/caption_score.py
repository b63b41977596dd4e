"""How well generated images follow a caption: colour and shape agreement of each sample with a render of the
described object from the same camera (RGB on white, as `hash3d.mini.render` + `on_white` make them).

- colour: 1 − half the L1 distance between the two images' histograms of named colours (`hash3d.mini.colors`) over
  their foreground pixels: 1 for the same mix of colours, 0 for disjoint ones (or when either image is empty).
- shape: IoU of the two silhouettes (pixels with a channel below 0.9, as the Zero123 mini evaluation).

A caption describes many objects (sizes and poses are not in it), so absolute scores are bounded well below 1;
`caption_following` therefore also scores every sample against another caption's renders (the batch rolled by
one): a model that follows captions scores clearly higher on its own captions than on the shuffled ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .colors import COLOR_NAMES, color_index
from .evaluate import iou, silhouette

__all__ = ["caption_following", "caption_scores", "color_histogram", "foreground_color_error", "shape_and_color"]


def color_histogram(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each named colour among the masked pixels: rgb [B, 3, H, W], mask [B, H, W] -> [B, len(COLOR_NAMES)]
    (all zeros for an empty mask)."""
    index = color_index(rgb.movedim(-3, -1))  # [B, H, W]
    counts = F.one_hot(index, len(COLOR_NAMES)).float() * mask[..., None].float()
    counts = counts.flatten(1, 2).sum(1)
    return counts / counts.sum(-1, keepdim=True).clamp(min=1.0)


def caption_scores(samples: torch.Tensor, references: torch.Tensor) -> dict[str, torch.Tensor]:
    """samples, references [B, 3, H, W] RGB on white in [0, 1] (references resized to the samples' size) ->
    {"color": [B], "shape": [B]} in [0, 1]."""
    if samples.dim() != 4 or samples.shape[1] != 3 or references.shape[:2] != samples.shape[:2]:
        raise ValueError(f"samples and references must both be [B, 3, H, W]; got {tuple(samples.shape)} and "
                         f"{tuple(references.shape)}")
    if references.shape[-2:] != samples.shape[-2:]:
        references = F.interpolate(references.float(), samples.shape[-2:], mode="bilinear", antialias=True,
                                   align_corners=False)
    ms, mr = silhouette(samples.float()), silhouette(references.float())
    hs, hr = color_histogram(samples, ms), color_histogram(references, mr)
    empty = (ms.flatten(1).sum(1) == 0) | (mr.flatten(1).sum(1) == 0)
    color = torch.where(empty, torch.zeros(len(hs), device=hs.device), 1 - 0.5 * (hs - hr).abs().sum(-1))
    return {"color": color, "shape": iou(ms, mr)}


def caption_following(samples: torch.Tensor, references: torch.Tensor) -> dict[str, float]:
    """Mean scores against the samples' own captions' renders and against the next caption's (batch rolled by one):
    {"color", "shape", "color_shuffled", "shape_shuffled"}."""
    if samples.shape[0] < 2:
        raise ValueError("caption_following needs at least 2 samples (it compares against another caption's renders)")
    own = caption_scores(samples, references)
    other = caption_scores(samples, references.roll(1, dims=0))
    return {"color": own["color"].mean().item(), "shape": own["shape"].mean().item(),
            "color_shuffled": other["color"].mean().item(), "shape_shuffled": other["shape"].mean().item()}


def _mean_foreground(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask[:, None].float()
    return (rgb.float() * weight).flatten(2).sum(-1) / weight.flatten(2).sum(-1).clamp(min=1.0)


def foreground_color_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per view, the distance between the mean colours of the two images' silhouettes (RGB in [0, 1], so 0 … √3):
    pred, gt [V, 3, H, W] on white -> [V]. An empty silhouette counts as white, so an empty prediction of a
    coloured object scores the full distance of that colour from white."""
    mp, mg = silhouette(pred.float()), silhouette(gt.float())
    white = torch.ones(3, device=pred.device)
    cp = torch.where(mp.flatten(1).any(1)[:, None], _mean_foreground(pred, mp), white)
    cg = torch.where(mg.flatten(1).any(1)[:, None], _mean_foreground(gt, mg), white)
    return (cp - cg).norm(dim=-1)


def shape_and_color(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Mean silhouette IoU and foreground colour error over views of the same size: {"iou", "color_error"}."""
    if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"pred and gt must both be [V, 3, H, W]; got {tuple(pred.shape)} and {tuple(gt.shape)}")
    return {"iou": iou(silhouette(pred.float()), silhouette(gt.float())).mean().item(),
            "color_error": foreground_color_error(pred, gt).mean().item()}
