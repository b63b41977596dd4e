"""Held-out evaluation of Hash3D-mini-sd through its folder (loaded by `load_stable_diffusion`, as the SD guidance
loads it): DDIM samples of held-out objects' captions, one view direction per object, scored against the object's
render from that direction's camera (`caption_score`), and the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hash3d.diffusion.guidance.refine import ddim_scheduler, decode_latents
from hash3d.diffusion.guidance.stable_diffusion import DIRECTIONS
from hash3d.diffusion.loading import load_stable_diffusion

from .caption_score import caption_following
from .data import render_ids
from .objects import HELD_OUT_ID_BASE, make_objects
from .text_data import captions, view_captions, views_direction

__all__ = ["EVAL_CAMERAS", "evaluate_sd", "heldout_captions", "sample_images", "write_sd_card"]

EVAL_CAMERAS = {"side": (15.0, 90.0), "front": (15.0, 0.0), "back": (15.0, 180.0), "overhead": (75.0, 30.0)}
"""(elevation, azimuth) in degrees of the evaluation camera of each view direction."""


def heldout_captions(n_objects: int, device) -> dict[str, Any]:
    """Held-out objects (never trained on), one direction each (cycling through DIRECTIONS): ids, captions with the
    view suffix, cameras [n] and the objects' renders [n, 3, 64, 64] from those cameras."""
    ids = torch.arange(HELD_OUT_ID_BASE, HELD_OUT_ID_BASE + n_objects, device=device)
    direction = [DIRECTIONS[k % len(DIRECTIONS)] for k in range(n_objects)]
    elevation = torch.tensor([EVAL_CAMERAS[d][0] for d in direction], device=device)
    azimuth = torch.tensor([EVAL_CAMERAS[d][1] for d in direction], device=device)
    index = views_direction(elevation, azimuth).tolist()
    if index != [DIRECTIONS.index(d) for d in direction]:
        raise AssertionError("EVAL_CAMERAS disagree with the guidance's view directions")
    texts = [view_captions(c)[k] for c, k in zip(captions(make_objects(ids)), index)]
    renders = render_ids(ids, elevation[:, None], azimuth[:, None])[:, 0]
    return {"ids": ids, "captions": texts, "elevation": elevation, "azimuth": azimuth, "renders": renders}


@torch.no_grad()
def sample_images(parts, texts: list[str], cfg_scale: float, steps: int, generator: torch.Generator,
                  chunk: int = 128) -> torch.Tensor:
    """DDIM samples [B, 3, H, W] in [0, 1] of `texts` from `load_stable_diffusion` parts; the unconditional branch
    is the empty prompt, as the SD guidance's."""
    unet, tokenizer = parts.unet, parts.tokenizer
    device, dtype = unet.device, unet.dtype
    scheduler = ddim_scheduler(parts.scheduler)
    scheduler.set_timesteps(steps)

    def encode(batch: list[str]) -> torch.Tensor:
        ids = tokenizer(batch, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        return parts.text_encoder(ids)[0]

    side = int(unet.config.sample_size)
    out = []
    for start in range(0, len(texts), chunk):
        batch = texts[start:start + chunk]
        b = len(batch)
        context = torch.cat([encode(batch), encode([""] * b)])
        x = torch.randn(b, unet.config.in_channels, side, side, generator=generator, device=device)
        for t in scheduler.timesteps:
            tt = t.to(device).expand(2 * b)
            pred = unet(torch.cat([x, x]).to(dtype), tt, encoder_hidden_states=context).sample.float()
            cond, uncond = pred.chunk(2)
            x = scheduler.step(uncond + cfg_scale * (cond - uncond), t, x).prev_sample
        out.append(decode_latents(parts.vae, x))
    return torch.cat(out)


def evaluate_sd(model_dir: str | Path, device, n_objects: int = 64, ddim_steps: int = 50,
                cfg_scales: tuple[float, ...] = (1.0, 3.0, 7.5), grid_cfg: float = 7.5,
                grid_path: str | Path | None = None, grid_rows: int = 8, seed: int = 0) -> dict[str, Any]:
    """Caption-following scores per CFG scale (own captions vs shuffled) of held-out captions; optionally the
    samples picture (each row: 4 samples at `grid_cfg` | the described object's render)."""
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    parts = load_stable_diffusion(model_dir, dtype, device)
    data = heldout_captions(n_objects, device)
    scores, grid_samples = {}, None
    for cfg_scale in cfg_scales:
        g = torch.Generator(device=device).manual_seed(seed)
        samples = sample_images(parts, data["captions"], cfg_scale, ddim_steps, g)
        scores[f"{cfg_scale:g}"] = {k: round(v, 4) for k, v in caption_following(samples, data["renders"]).items()}
    if grid_path is not None:
        rows = min(grid_rows, n_objects)
        g = torch.Generator(device=device).manual_seed(seed + 1)
        texts = [t for t in data["captions"][:rows] for _ in range(4)]
        grid_samples = sample_images(parts, texts, grid_cfg, ddim_steps, g).view(rows, 4, 3, *data["renders"].shape[-2:])
        write_samples_png(grid_samples, data["renders"][:rows], grid_path)
    return {"n_objects": n_objects, "ddim_steps": ddim_steps, "scores": scores,
            "grid_captions": data["captions"][:grid_rows] if grid_path is not None else [],
            "captions": data["captions"]}


def write_samples_png(samples: torch.Tensor, renders: torch.Tensor, path: str | Path, scale: int = 2) -> Path:
    """samples [rows, k, 3, H, W], renders [rows, 3, H, W] -> a PNG: each row k samples | the render."""
    from PIL import Image

    rows, k = samples.shape[:2]
    tiles = torch.cat([samples.cpu().float(), renders.cpu().float()[:, None]], 1)  # [rows, k+1, 3, H, W]
    grid = tiles.permute(0, 3, 1, 4, 2).reshape(rows * tiles.shape[-2], (k + 1) * tiles.shape[-1], 3)
    img = Image.fromarray((grid.clamp(0, 1) * 255).round().byte().numpy())
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    img.save(path)
    return path


def _limits(run: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """The card's 'Limits' line: how far the scores stand from the shuffled ones at the CFG scale with the best colour
    score, so that a reader sees what the model follows and what it barely does."""
    scale, best = max(metrics["scores"].items(), key=lambda kv: kv[1]["color"])

    def margin(name: str) -> str:
        own, other = best[name], best[f"{name}_shuffled"]
        word = "clearly" if own - other >= 0.15 else "weakly" if own - other >= 0.03 else "not"
        return f"{word} ({own:.2f} vs {other:.2f} shuffled)"

    return [
        "## Limits",
        "",
        f"Trained {run['minutes']} min ({run['steps']} steps). At CFG {scale} it follows colours {margin('color')} and "
        f"shapes {margin('shape')}.",
        "",
    ]


def write_sd_card(path: str | Path, run: dict[str, Any], metrics: dict[str, Any]) -> Path:
    """The model card README.md: what it is, how it was trained, held-out caption-following scores."""
    cfg = run["config"]
    params = run["parameters"]
    lines = [
        "# Hash3D-mini-sd",
        "",
        "A small latent text-to-image diffusion model trained by the Hash3D project on captioned renders of procedural",
        "objects, so that text-to-3D runs, tests and quality checks work offline. It has the Stable Diffusion layout and",
        "loads unchanged with `hash3d.diffusion.loading.load_stable_diffusion` and the SD guidance",
        "(`StableDiffusionGuidance`, `pretrained_model_name_or_path` = this folder). It knows only the captions below:",
        "it is a measuring instrument, not a general model.",
        "",
        "## Conventions",
        "",
        "- Captions: colours (red, orange, yellow, green, cyan, blue, purple, pink, white, grey, black), textures",
        "  (striped, checkered), shapes (sphere, cube, box, cylinder, cone, torus), 'X on Y', 'X next to Y', lists;",
        "  every word one token of the CLIP BPE tokenizer. Each caption ends with the SD guidance's view suffix",
        "  (', front view' / ', side view' / ', back view' / ', overhead view'), chosen with its default thresholds.",
        "- Images 64×64 RGB on white; cameras as `hash3d.data.cameras` at distance 3.8, fovy 20°, elevation −10…85°.",
        "- Unconditional branch: the empty prompt. Scheduler: v-prediction, cosine betas, 1000 steps.",
        f"- VAE: the Hash3D-mini Zero123 model's (frozen; scaling_factor {run['scaling_factor']:g}, whitened latents).",
        "",
        "## Architecture",
        "",
        "| part | parameters |",
        "|---|---|",
        *[f"| {k} | {v / 1e6:.2f}M |" for k, v in params.items()],
        f"| folder | {run['folder_bytes'] / 1e6:.2f} MB (fp16 safetensors) |",
        "",
        "## Recipe",
        "",
        f"- Device: {run['device']}; {len(run['sessions'])} command(s): "
        + "; ".join(f"`{x['command']}` (steps {x['start_step']}…{x['end_step']}, {x['wall_minutes']} min wall clock, "
                    f"UNet compiled: {x['compiled']})" for x in run["sessions"]) + ".",
        f"- {run['steps']} steps in {run['minutes']} min, batch {cfg['batch']}, AdamW lr {cfg['lr']} (warm-up "
        f"{cfg['warmup_steps']}, cosine to 10 %), EMA {cfg['ema']} (exported), captions dropped {cfg['cfg_drop']:.0%}.",
        "",
        "| step | minutes | loss |",
        "|---|---|---|",
        *[f"| {s} | {m} | {loss} |" for s, m, loss in run["loss_log"]],
        "",
        "## Held-out caption following",
        "",
        f"{metrics['n_objects']} held-out objects (never trained on), one view direction each; DDIM "
        f"{metrics['ddim_steps']} steps. Scores (`hash3d.mini.caption_score`) against the described object's render",
        "from the caption's direction; 'shuffled' scores the same samples against another caption's render.",
        "",
        "| CFG | colour | colour, shuffled | shape IoU | shape IoU, shuffled |",
        "|---|---|---|---|---|",
        *[f"| {k} | {v['color']:.3f} | {v['color_shuffled']:.3f} | {v['shape']:.3f} | {v['shape_shuffled']:.3f} |"
          for k, v in metrics["scores"].items()],
        "",
        *_limits(run, metrics),
        "![held-out samples](samples.png)",
        "",
        "`samples.png`: each row four samples of one held-out caption | the described object's render. Captions:",
        "",
        *[f"{i + 1}. {c}" for i, c in enumerate(metrics.get("grid_captions", []))],
        "",
        "## Reproduce",
        "",
        "```",
        "python tools/train_mini_sd.py --out outputs/mini-sd --compile",
        "```",
        "",
        "`--minutes` (default 6.5) of training over all commands; each command stops training `--deadline-minutes`",
        "(default 7.5) after its start and checkpoints; run it again until it prints 'done' (then it exports and runs this",
        "evaluation). Step counts depend on the GPU; the table above is this folder's.",
        "",
    ]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path
