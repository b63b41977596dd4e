"""Held-out evaluation of a Hash3D-mini folder, loaded exactly as users load it (`load_zero123`).

Held-out objects have ids from `objects.HELD_OUT_ID_BASE` up (training never draws them). Each is seen from one
input view (random elevation in −10…40°, random azimuth) and predicted at elevation 30° and Δazimuth = 45°, 90°,
135°, 180° with DDIM (trailing spacing) and classifier-free guidance. Scores: PSNR against the ground-truth render,
and silhouette IoU (a pixel is object when any channel is below 0.9; albedo ≤ 0.85 keeps every lit object pixel
below that), compared with copying the input view and with a white image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hash3d.eval.metrics import psnr

from .data import render_ids
from .model import clip_pixels, relative_camera
from .objects import HELD_OUT_ID_BASE, sample_views

__all__ = ["DELTA_AZIMUTHS", "TARGET_ELEVATION", "heldout_views", "sample_novel_views", "evaluate", "write_grid",
           "silhouette", "iou"]

DELTA_AZIMUTHS = (45.0, 90.0, 135.0, 180.0)
TARGET_ELEVATION = 30.0


def heldout_views(n_objects: int, device) -> dict[str, torch.Tensor]:
    """Held-out objects: ids, cameras [n, 1 + 4] (input first) and their renders [n, 5, 3, 64, 64] on white."""
    ids = HELD_OUT_ID_BASE + torch.arange(n_objects, device=device)
    cond_e, cond_a = sample_views(ids, 1, stream=300)
    deltas = torch.tensor(DELTA_AZIMUTHS, device=device)
    elevation = torch.cat([cond_e, torch.full((n_objects, len(deltas)), TARGET_ELEVATION, device=device)], 1)
    azimuth = torch.cat([cond_a, (cond_a + deltas) % 360.0], 1)
    return {"ids": ids, "elevation": elevation, "azimuth": azimuth, "rgb": render_ids(ids, elevation, azimuth)}


def _crop_size(feature_extractor) -> int:
    size = feature_extractor.crop_size  # a dict, or transformers 5's SizeDict
    return int(getattr(size, "height", None) or (size["height"] if isinstance(size, dict) else size))


@torch.no_grad()
def sample_novel_views(parts, scheduler, cond_rgb: torch.Tensor, camera: torch.Tensor, cfg_scale: float,
                       generator: torch.Generator, chunk: int = 256) -> torch.Tensor:
    """Novel views [B, 3, H, W] in [0, 1] from input views cond_rgb [B, 3, H, W] in [0, 1] and Zero123 camera
    vectors [B, 4], with the conditioning built as `Zero123Guidance` builds it (unscaled mode latents of the input
    concatenated; zeros for both halves of the unconditional branch). `scheduler` is a DDIM-style scheduler with
    its timesteps set."""
    unet, vae = parts.unet, parts.vae
    dtype, device = unet.dtype, cond_rgb.device
    fe = parts.feature_extractor
    latent_hw = int(unet.config.sample_size)
    out = []
    for start in range(0, cond_rgb.shape[0], chunk):
        rgb = cond_rgb[start:start + chunk].float()
        cam = camera[start:start + chunk].float()
        b = rgb.shape[0]
        cond_lat = vae.encode((rgb * 2 - 1).to(dtype)).latent_dist.mode()
        pixels = clip_pixels(rgb, _crop_size(fe), fe.image_mean, fe.image_std).to(dtype)
        embeds = parts.image_encoder(pixels).image_embeds
        ctx = parts.cc_projection(torch.cat([embeds, cam.to(dtype)], -1))[:, None]
        x = torch.randn(b, unet.config.out_channels, latent_hw, latent_hw, generator=generator, device=device)
        for t in scheduler.timesteps:
            tt = t.to(device).expand(b)
            if cfg_scale == 1.0:
                v = unet(torch.cat([x.to(dtype), cond_lat], 1), tt, encoder_hidden_states=ctx).sample.float()
            else:
                x_in = torch.cat([torch.cat([x, x]).to(dtype), torch.cat([cond_lat, torch.zeros_like(cond_lat)])], 1)
                pred = unet(x_in, torch.cat([tt, tt]), encoder_hidden_states=torch.cat([ctx, torch.zeros_like(ctx)]))
                v_c, v_u = pred.sample.float().chunk(2)
                v = v_u + cfg_scale * (v_c - v_u)
            x = scheduler.step(v, t, x).prev_sample
        img = vae.decode((x / vae.config.scaling_factor).to(dtype)).sample.float()
        out.append(((img + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def silhouette(rgb: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """Object mask of RGB-on-white images [..., 3, H, W]: any channel below `threshold`."""
    return rgb.amin(-3) < threshold


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of boolean masks [N, H, W] (1 where both are empty)."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _scores(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, Any]:
    """pred, gt [n, 4, 3, H, W] -> mean PSNR, mean IoU, PSNR per Δazimuth."""
    p, g = pred.flatten(0, 1), gt.flatten(0, 1)
    ps = psnr(p, g).view(pred.shape[0], -1)
    io = iou(silhouette(p), silhouette(g))
    return {
        "psnr": round(ps.mean().item(), 3),
        "iou": round(io.mean().item(), 4),
        "psnr_by_delta_azimuth": {f"{d:g}": round(ps[:, k].mean().item(), 3) for k, d in enumerate(DELTA_AZIMUTHS)},
    }


@torch.no_grad()
def evaluate(model_dir: str | Path, device, n_objects: int = 64, ddim_steps: int = 50,
             cfg_scales: tuple[float, ...] = (1.0, 2.0, 3.0), grid_cfg: float = 3.0, seed: int = 0) -> dict[str, Any]:
    """Load the folder with `load_zero123` (fp16 on CUDA, fp32 on CPU), sample held-out novel views, score them."""
    from diffusers import DDIMScheduler

    from hash3d.diffusion.loading import load_zero123

    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    from transformers.utils import logging as hf_logging

    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        parts = load_zero123(str(model_dir), dtype=dtype, device=device, local_files_only=True)
    finally:
        if progress:
            hf_logging.enable_progress_bar()
    scheduler = DDIMScheduler.from_pretrained(str(model_dir), subfolder="scheduler")
    scheduler.set_timesteps(ddim_steps)
    views = heldout_views(n_objects, device)
    rgb = views["rgb"]
    n, k = rgb.shape[0], rgb.shape[1] - 1
    cond = rgb[:, :1].expand(-1, k, -1, -1, -1).reshape(n * k, *rgb.shape[2:])
    gt = rgb[:, 1:]
    e, a = views["elevation"], views["azimuth"]
    camera = relative_camera(e[:, :1].expand(-1, k).reshape(-1), a[:, :1].expand(-1, k).reshape(-1),
                             e[:, 1:].reshape(-1), a[:, 1:].reshape(-1))
    scales = list(dict.fromkeys([*cfg_scales, grid_cfg]))
    preds, scores = {}, {}
    for s in scales:
        g = torch.Generator(device=device).manual_seed(seed)
        pred = sample_novel_views(parts, scheduler, cond, camera, s, g).view(n, k, *rgb.shape[2:])
        preds[s] = pred
        scores[f"model, CFG {s:g}"] = _scores(pred, gt)
    scores["copy the input view"] = _scores(cond.view(n, k, *rgb.shape[2:]), gt)
    scores["white image"] = _scores(torch.ones_like(gt), gt)
    flat = rgb.flatten(0, 1)
    recon = (parts.vae.decode(parts.vae.encode((flat * 2 - 1).to(dtype)).latent_dist.mode()).sample.float() + 1) / 2
    metrics = {
        "held_out_ids": [int(views["ids"][0]), int(views["ids"][-1])],
        "n_objects": n,
        "pairs": n * k,
        "ddim_steps": ddim_steps,
        "target_elevation": TARGET_ELEVATION,
        "delta_azimuths": list(DELTA_AZIMUTHS),
        "dtype": str(dtype).replace("torch.", ""),
        "vae_reconstruction_psnr": round(psnr(recon.clamp(0, 1), flat).mean().item(), 3),
        "scores": scores,
    }
    return {"metrics": metrics, "input": rgb[:, 0], "gt": gt, "pred": preds, "grid_cfg": grid_cfg}


def write_grid(result: dict[str, Any], path: str | Path, rows: int = 8, scale: int = 2) -> Path:
    """Picture: one row per held-out object: input | predicted views | ground truth (Δaz 45, 90, 135, 180)."""
    from PIL import Image

    inp, gt, pred = result["input"], result["gt"], result["pred"][result["grid_cfg"]]
    rows = min(rows, inp.shape[0])
    k, (h, w) = gt.shape[1], inp.shape[-2:]
    gap, group_gap = 2, 10
    width = w * (1 + 2 * k) + gap * (2 * k - 2) + 2 * group_gap
    height = h * rows + gap * (rows - 1)
    canvas = torch.full((3, height, width), 0.82)
    for r in range(rows):
        y = r * (h + gap)
        tiles = [inp[r]] + list(pred[r]) + list(gt[r])
        x = 0
        for i, tile in enumerate(tiles):
            canvas[:, y:y + h, x:x + w] = tile.float().cpu()
            x += w + (group_gap if i in (0, k) else gap)
    img = (canvas.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
    picture = Image.fromarray(img)
    if scale != 1:
        picture = picture.resize((width * scale, height * scale), Image.NEAREST)
    path = Path(path)
    picture.save(path, optimize=True)
    return path
