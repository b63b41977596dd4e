"""The model card (README.md) of a trained Hash3D-mini folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .evaluate import DELTA_AZIMUTHS, TARGET_ELEVATION
from .model import folder_bytes
from .objects import HELD_OUT_ID_BASE, OBJECT_RADIUS_RANGE, VIEW_ELEVATION_RANGE
from .render import AMBIENT, CAMERA_DISTANCE, FOVY_DEG, IMAGE_SIZE, LIGHT_DIRECTION

__all__ = ["write_card"]


def _curve(log: list[list[float]], rows: int = 12) -> list[list[float]]:
    if len(log) <= rows:
        return log
    picks = sorted({round(i * (len(log) - 1) / (rows - 1)) for i in range(rows)})
    return [log[i] for i in picks]


def write_card(path: str | Path, trainer, metrics: dict[str, Any]) -> Path:
    cfg, st, configs = trainer.cfg, trainer.state, trainer.configs
    unet, vae, clip = configs["unet"], configs["vae"], configs["image_encoder"]
    n = trainer.n_params
    total = sum(n.values())
    vae_min, diff_min = st["vae_seconds"] / 60, st["diffusion_seconds"] / 60
    modes = (["compiled by torch.compile"] if trainer.unet_compiled else []) + (
        ["channels-last"] if st["device_name"] != "cpu" else [])
    unet_mode = f"UNet {' and '.join(modes)}, " if modes else ""
    lines = [
        "# Hash3D-mini Zero123",
        "",
        "A small Zero123-style novel-view diffusion model trained by the Hash3D project on procedural objects, so",
        "that image-to-3D runs, tests and quality checks work offline without downloaded weights. It has the",
        "diffusers Zero123 layout and loads unchanged with `hash3d.diffusion.loading.load_zero123` and",
        "`hash3d.diffusion.guidance.Zero123Guidance`. It knows only simple coloured primitives: it is a",
        "measuring instrument, not a general model.",
        "",
        "```python",
        "from hash3d.diffusion.guidance import Zero123Guidance, Zero123GuidanceConfig",
        "guidance = Zero123Guidance(Zero123GuidanceConfig(pretrained_model_name_or_path=\"PATH/TO/THIS/FOLDER\",",
        "                                                 camera_embedding=\"stable\", guidance_scale=3.0))",
        "guidance.set_image(rgba, elevation_deg=..., azimuth_deg=0.0)",
        "```",
        "",
        "## Conventions (what a pipeline must match)",
        "",
        f"- Images {IMAGE_SIZE}×{IMAGE_SIZE} RGB on a white background; the guidance resizes renders to that.",
        f"- Cameras as `hash3d.data.cameras` (threestudio): z up, elevation/azimuth in degrees; training views at "
        f"distance {CAMERA_DISTANCE} with vertical fov {FOVY_DEG:g}° (threestudio's stable-zero123 camera), "
        f"elevation uniform in {VIEW_ELEVATION_RANGE[0]:g}…{VIEW_ELEVATION_RANGE[1]:g}°, azimuth uniform in 0…360°.",
        f"- Objects are normalised to a bounding radius of {OBJECT_RADIUS_RANGE[0]:g}–{OBJECT_RADIUS_RANGE[1]:g} "
        "around the origin: the silhouette's larger side spans about 55–85 % of the frame (median ≈ 65 %). Input "
        "images should be framed the same way (object centred, about 2/3 of the frame).",
        "- Camera vector: `stable` = [rad(cond_elev − elev), sin Δaz, cos Δaz, rad(90 − cond_elev)] (trained on "
        f"{100 * (1 - cfg.xl_fraction):.0f} % of pairs); `xl` with Δradius = 0 also works (the other "
        f"{100 * cfg.xl_fraction:.0f} %), so pass `camera_embedding=\"stable\"` (the guidance's `auto` picks "
        "`stable` only when the path contains 'stable') or keep the xl cond distance equal to the camera distance.",
        "- Unconditional branch: zeros for the projected embedding and for the concatenated latents (as the guidance).",
        f"- Scheduler: v-prediction, cosine (`squaredcos_cap_v2`) betas, 1000 steps; DDIM with trailing spacing.",
        "",
        "## Architecture",
        "",
        "| part | class | parameters | notes |",
        "|---|---|---|---|",
        f"| unet | UNet2DConditionModel | {n['unet'] / 1e6:.2f}M | in 8 / out 4 channels, {unet['sample_size']}² latents, "
        f"blocks {unet['block_out_channels']} × {unet['layers_per_block']} layer, attention at the two lower levels, "
        f"cross-attention dim {unet['cross_attention_dim']}, `addition_embed_type=\"text\"` (the condition also "
        "modulates every ResNet through the time embedding), scale-shift norm |",
        f"| vae | AutoencoderKL | {n['vae'] / 1e6:.2f}M | blocks {vae['block_out_channels']} (×2 down-sampling), "
        f"4 latent channels, scaling_factor {vae['scaling_factor']:.4f} (1 / latent std) |",
        f"| image_encoder | CLIPVisionModelWithProjection | {n['image_encoder'] / 1e6:.2f}M | {clip['image_size']} px, "
        f"patch {clip['patch_size']}, width {clip['hidden_size']}, {clip['num_hidden_layers']} layers, "
        f"projection {clip['projection_dim']}; trained with the UNet |",
        f"| cc_projection | CameraProjection | {n['cc_projection'] / 1e6:.3f}M | Linear({configs['cc_projection']['in_channel']} → "
        f"{configs['cc_projection']['out_channel']}) |",
        f"| total | | {total / 1e6:.2f}M | fp16 safetensors; folder {folder_bytes(Path(path).parent) / 1e6:.1f} MB |",
        "",
        "## Data",
        "",
        "Procedural objects of 1–4 parts (sphere, box, cylinder, cone, torus) with random sizes, poses (half of the "
        "parts upright), albedos in 0.05–0.85 and textures (solid, stripes, checker), sphere-traced on the GPU by "
        f"`hash3d.mini.render`: Lambertian light from {tuple(LIGHT_DIRECTION)} (world, z up) plus ambient {AMBIENT}, "
        "anti-aliased edges, white background. An object depends only on its integer id (hashed random numbers). "
        f"Training used ids 0…{st['next_id'] - 1} in a pool of {cfg.pool_objects} objects × {cfg.pool_views} views "
        "refreshed a few objects per step; "
        f"held-out ids start at {HELD_OUT_ID_BASE} and were never trained on.",
        "",
        "## Recipe",
        "",
        f"- Hardware: {', '.join(sorted({x.get('device', st['device_name']) for x in st['sessions']}))}"
        f"{'; bf16 autocast' if st['device_name'] != 'cpu' else ''}; {len(st['sessions'])} command(s) "
        f"(`{st['sessions'][-1].get('command', 'tools/train_mini.py')}`).",
        f"- VAE phase: {st['vae_step']} steps, {vae_min:.2f} min, batch {cfg.vae_batch} (10 % random smooth colour "
        f"fields), AdamW lr {cfg.vae_lr:g}, L1 + L2 + 1e-4·KL per pixel; then frozen and its latent channels "
        f"whitened (raw channel means {st.get('raw_channel_mean', '?')}, stds {st.get('raw_channel_std', '?')}, "
        "folded into `quant_conv` / `post_quant_conv`, so decoding is unchanged). Held-out reconstruction "
        f"PSNR {metrics['vae_reconstruction_psnr']:.2f} dB; posterior std / latent std "
        f"{st.get('posterior_std_ratio', float('nan')):.3f} (the diffusion targets are posterior samples, as the "
        "guidance's `encode_images`).",
        f"- Diffusion phase: {st['step']} steps, {diff_min:.2f} min, batch {cfg.batch} (input, target) pairs of one "
        f"object, AdamW lr {cfg.lr:g} (warm-up {cfg.warmup_steps} steps, cosine to 10 %), weight decay "
        f"{cfg.weight_decay:g}, grad clip 1, EMA {cfg.ema:g} (exported), v-prediction MSE, t uniform in 0…999, "
        f"{unet_mode}"
        f"condition dropped {100 * cfg.cfg_drop:.0f} % (CFG), same view as target {100 * cfg.same_view:.0f} %.",
        f"- Total training time {vae_min + diff_min:.2f} min.",
        "",
        "### Diffusion loss (mean over each logging interval)",
        "",
        "| step | minutes | loss |",
        "|---|---|---|",
    ]
    lines += [f"| {s} | {sec / 60:.2f} | {loss:.4f} |" for s, sec, loss in _curve(st["loss_log"])]
    lines += [
        "",
        "## Held-out scores",
        "",
        f"{metrics['n_objects']} held-out objects, one input view each (elevation −10…40°, random azimuth), "
        f"targets at elevation {TARGET_ELEVATION:g}° and Δazimuth {', '.join(f'{d:g}' for d in DELTA_AZIMUTHS)}° "
        f"({metrics['pairs']} pairs); DDIM {metrics['ddim_steps']} steps; weights loaded as {metrics['dtype']} "
        "through `load_zero123`. Silhouette: pixels with a channel below 0.9.",
        "",
        "| prediction | PSNR (dB) | silhouette IoU | " + " | ".join(f"PSNR Δaz {d:g}°" for d in DELTA_AZIMUTHS) + " |",
        "|---|---|---|" + "---|" * len(DELTA_AZIMUTHS),
    ]
    for name, s in metrics["scores"].items():
        by = s["psnr_by_delta_azimuth"]
        lines.append(f"| {name} | {s['psnr']:.2f} | {s['iou']:.3f} | "
                     + " | ".join(f"{by[f'{d:g}']:.2f}" for d in DELTA_AZIMUTHS) + " |")
    lines += [
        "",
        f"![held-out novel views](samples.png)",
        "",
        f"`samples.png`: each row one held-out object: the input view | predicted views (CFG {cfg.grid_cfg:g}) at "
        f"Δazimuth {', '.join(f'{d:g}' for d in DELTA_AZIMUTHS)}° | the ground truth.",
        "",
        "## Reproduce",
        "",
        "```",
        f"python tools/train_mini.py --out outputs/mini --minutes {cfg.minutes:g}   # repeat until it prints 'done'",
        "```",
        "",
        "Each command trains at most `--session-minutes` (default 8) and checkpoints to `OUT/checkpoint.pt`; the "
        "timings differ between GPUs, so the step counts above are what this folder got.",
        "",
    ]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path
