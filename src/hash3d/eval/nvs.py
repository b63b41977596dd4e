"""Novel-view metrics over two folders of views: PSNR, SSIM and (when it can be had) LPIPS per pair."""

from __future__ import annotations

from typing import Callable

import torch

from hash3d.eval.config import NVSConfig, resolve_device
from hash3d.eval.errors import list_names
from hash3d.eval.images import ImageInfo, load_rgb, resize
from hash3d.eval.metrics import psnr, ssim
from hash3d.eval.pairing import pair_images
from hash3d.eval.perceptual import LPIPSFn, LPIPSStatus, load_lpips
from hash3d.eval.report import MetricTable


def _size_text(info: ImageInfo) -> str:
    return f"{info.width}×{info.height}"


def evaluate_nvs(
    config: NVSConfig,
    lpips: LPIPSFn | None = None,
    lpips_loader: Callable[[str, torch.device], LPIPSStatus] = load_lpips,
) -> MetricTable:
    """Score every prediction against its ground-truth view.

    lpips: an LPIPS function to use instead of loading the published one (inputs in [0, 1], (N,) out).
    lpips_loader: how the published one is loaded when `lpips` is not given and config.lpips_net is set.
    """
    device = resolve_device(config.device)
    background = config.background_rgb
    pairing = pair_images(config.gt_dir, config.pred_dir, config.allow_missing)
    notes: list[str] = []
    if pairing.skipped:
        parts = []
        if pairing.missing:
            parts.append(f"{len(pairing.missing)} ground-truth view(s) without a prediction ({list_names(pairing.missing)})")
        if pairing.extra:
            parts.append(f"{len(pairing.extra)} prediction(s) without a ground truth ({list_names(pairing.extra)})")
        notes.append(f"--allow-missing: skipped {pairing.skipped} image(s): " + "; ".join(parts))

    lpips_name: str | None = None
    if lpips is not None:
        lpips_name = "custom"
    elif config.lpips_net is not None:
        status = lpips_loader(config.lpips_net, device)
        if status.available:
            lpips, lpips_name = status.fn, config.lpips_net
        else:
            notes.append(f"LPIPS skipped: {status.reason}. PSNR and SSIM are reported without it.")
    else:
        notes.append("LPIPS not computed (--lpips-net none).")

    columns: dict[str, list[float]] = {"psnr": [], "ssim": []}
    if lpips is not None:
        columns["lpips"] = []
    resized: list[str] = []
    precision: set[str] = set()
    for pair in pairing.pairs:
        gt, gt_info = load_rgb(pair.gt, background)
        pred, pred_info = load_rgb(pair.pred, background)
        for info in (gt_info, pred_info):
            if info.precision_note:
                precision.add(info.precision_note)
        if gt.shape != pred.shape:
            resized.append(f"{pair.name} (GT {_size_text(gt_info)}, prediction {_size_text(pred_info)})")
            gt, pred = resize(gt, config.size), resize(pred, config.size)
        gt, pred = gt.to(device)[None], pred.to(device)[None]
        columns["psnr"].append(float(psnr(pred, gt)[0]))
        columns["ssim"].append(float(ssim(pred, gt)[0]))
        if lpips is not None:
            columns["lpips"].append(float(lpips(pred, gt).flatten()[0]))

    if resized:
        notes.append(
            f"resized {len(resized)} pair(s) whose ground truth and prediction differ in size to "
            f"{config.size}×{config.size}: {list_names(resized, 5)}"
        )
    notes.extend(f"note: {text}" for text in sorted(precision))
    title = "Novel-view metrics" + (f" — {config.name}" if config.name else "")
    title += f"\nGT: {config.gt_dir}   prediction: {config.pred_dir}   background: {config.background}"
    settings = {
        "name": config.name,
        "gt_dir": str(config.gt_dir),
        "pred_dir": str(config.pred_dir),
        "background": list(background),
        "size": config.size,
        "lpips_net": lpips_name,
        "n_pairs": len(pairing.pairs),
        "n_skipped": pairing.skipped,
        "missing": pairing.missing,
        "extra": pairing.extra,
        "n_resized": len(resized),
        "ssim": "gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03",
        "std": "population (ddof 0)",
    }
    return MetricTable(
        title=title,
        row_label="view",
        rows=[pair.name for pair in pairing.pairs],
        columns=columns,
        digits={"psnr": 3, "ssim": 4, "lpips": 4},
        settings=settings,
        notes=notes,
    )
