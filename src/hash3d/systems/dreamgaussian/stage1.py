"""DreamGaussian stage 1 (main.py): 3D Gaussians from one image with Zero123 SDS (mode image), or from a prompt
with Stable Diffusion (text), MVDream (text_mv) or ImageDream (imagedream, prompt + image), with the Hash3D cache.

Each step (DreamGaussian's recipe, 1-based steps, ratio = step / iters), in mode image:

1. the means' learning rate follows the 3DGS log-linear schedule;
2. the input view (elevation `elevation`, azimuth 0, `radius`, `fovy`) is rendered at `ref_size` on white:
   loss = w·(10000·MSE(rgb, image on white) + 1000·MSE(alpha, image alpha)), w = ratio with warmup_rgb_loss, else 1;
3. `batch_size` random views (integer elevation offset in `vertical_range`, azimuth in [−180, 180), same radius)
   are rendered on white, or on black with probability `invert_bg_prob`, at `render_resolutions` by ratio
   (128 / 256 / 512) and scored by Zero123 SDS (annealed t = (1 − ratio)·1000 in [20, 980], w(t) = 1 − ᾱ_t, CFG 5,
   loss summed over the batch) times `lambda_zero123`; with the cache on, neighbouring (camera, t) requests reuse
   the UNet's deep features;
4. Adam step, then densification statistics from the random views, clone / split / prune every
   `densification_interval` steps inside [density_start_iter, density_end_iter], opacity reset every
   `opacity_reset_interval` steps.

After training: a final prune (opacity < 0.01 or scale > 0.1), `{save_path}_model.ply` (standard 3DGS layout),
the mesh `{save_path}_mesh.{mesh_format}` (opacity field on a `mesh_resolution`³ grid, marching cubes at
`density_thresh`, small components removed, decimated to 1e5 faces, xatlas UVs, albedo texture of
`texture_size`² baked from the Gaussians' colour field), optionally the orbit video `{save_path}.mp4`, and
`{save_path}_report.json`.

Differences from DreamGaussian: its texture is back-projected from 26 renders of the Gaussians, here the albedo is
the opacity-weighted mean of the Gaussians' colours at each surface point (`GaussianField`); its mesh is cleaned
and remeshed with pymeshlab, here small components are dropped and the mesh is decimated (`gaussian_mesh`);
densification statistics come from every random view of the step, not only the last one; the seed is fixed.

The text modes differ (DreamGaussian's main.py): the input view's losses apply only when an input image is given
and never in imagedream; in text_mv and imagedream the input view sits at azimuth 90 (the models' second view is
the front) and every random view brings three more at +90°, +180°, +270° with its elevation and background, the
four scored together as one set by the multi-view guidance (ImageDream adds the input image as a fifth view); the
guidance loss is weighted by lambda_sd; densification statistics come from the random (primary) views only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hash3d.profiling import section, step_done
from hash3d.render.gaussian_raster import rasterize_splats, resolve_backend
from hash3d.scene.gaussian_density import GaussianDensifyStrategy
from hash3d.scene.gaussian_mesh import GaussianField, GaussianMeshConfig, extract_gaussian_mesh
from hash3d.scene.gaussians import GaussianLRConfig, GaussianModel
from hash3d.scene.isosurface import NoSurfaceError
from hash3d.training.outputs import save_video
from hash3d.training.progress import ProgressBar

from .common import (
    Report,
    Views,
    as_sets,
    build_guidance,
    cache_summary,
    check_output_folder,
    existing_file,
    guidance_cameras,
    load_input,
    logger,
    make_views,
    on_white,
    pick_device,
    reference_azimuth,
    step_views,
    synchronize,
    to_uint8,
    uses_reference_loss,
)
from .config import DreamGaussianConfig, DreamGaussianError

__all__ = ["Stage1Result", "run_stage1", "render_gaussians", "lr_config", "densify_strategy", "render_resolution"]


@dataclass
class Stage1Result:
    model: GaussianModel
    ply: Path
    mesh: list[Path]
    report: Path
    video: Path | None
    summary: str


def lr_config(cfg: DreamGaussianConfig) -> GaussianLRConfig:
    """DreamGaussian's learning rates (random init: spatial_lr_scale 10)."""
    return GaussianLRConfig(
        position_lr_init=cfg.position_lr_init,
        position_lr_final=cfg.position_lr_final,
        position_lr_delay_mult=cfg.position_lr_delay_mult,
        position_lr_max_steps=cfg.position_lr_max_steps,
        spatial_lr_scale=10.0,
        feature_lr=cfg.feature_lr,
        opacity_lr=cfg.opacity_lr,
        scaling_lr=cfg.scaling_lr,
        rotation_lr=cfg.rotation_lr,
    )


def densify_strategy(cfg: DreamGaussianConfig) -> GaussianDensifyStrategy:
    return GaussianDensifyStrategy.dreamgaussian(
        grad_threshold=cfg.densify_grad_threshold,
        percent_dense=cfg.percent_dense,
        stats_start=cfg.density_start_iter,
        stats_stop=cfg.density_end_iter,
        refine_start=cfg.density_start_iter,
        refine_stop=cfg.density_end_iter,
        refine_every=cfg.densification_interval,
        opacity_reset_every=cfg.opacity_reset_interval,
    )


def render_resolution(cfg: DreamGaussianConfig, ratio: float) -> int:
    """Random-view resolution at step ratio `ratio` (DreamGaussian: 128 / 256 / 512 split at 0.3 / 0.6)."""
    for size, limit in zip(cfg.render_resolutions, cfg.render_resolution_ratios):
        if ratio < limit:
            return size
    return cfg.render_resolutions[-1]


def render_gaussians(model: GaussianModel, views: Views, background: torch.Tensor, backend: str = "auto"):
    """-> rgb [C, 3, S, S], alpha [C, 1, S, S], RasterMeta."""
    rgb, alpha, meta = rasterize_splats(model.splats(), views.viewmats, views.Ks, views.size, views.size, background, backend)
    return rgb.permute(0, 3, 1, 2), alpha.permute(0, 3, 1, 2), meta


def _initial_model(cfg: DreamGaussianConfig, device: torch.device) -> GaussianModel:
    if cfg.load:
        path = existing_file(cfg.load, "load= .ply", "give an existing 3DGS .ply, or leave load unset for a random start")
        try:
            return GaussianModel.from_ply(path, device=device)
        except (ValueError, OSError, KeyError) as exc:
            raise DreamGaussianError(f"cannot read the Gaussians in {path}: {exc}") from exc
    generator = torch.Generator().manual_seed(cfg.seed)
    return GaussianModel.random_ball(cfg.num_pts, 0.5, sh_degree=cfg.sh_degree, generator=generator, device=device)


def orbit_frames(render, cfg: DreamGaussianConfig, device: torch.device, progress: bool = False) -> list[np.ndarray]:
    """`video_frames` views around the object at the input elevation, rendered by `render(views) -> [1, 3, S, S]`
    (with a progress bar when `progress`)."""
    frames = []
    bar = ProgressBar(cfg.video_frames, enabled=progress, desc="video", unit="view")
    for azimuth in np.linspace(0.0, 360.0, cfg.video_frames, endpoint=False):
        views = make_views([cfg.elevation], [float(azimuth)], cfg.radius, cfg.fovy, cfg.video_size, device)
        with torch.no_grad():
            frames.append(to_uint8(render(views)[0].permute(1, 2, 0)))
        bar.update()
    bar.close()
    return frames


def extract_mesh(model: GaussianModel, cfg: DreamGaussianConfig):
    """The stage-1 mesh; when the field never reaches density_thresh (short or small runs), half its peak is used
    instead, with a warning, so that a finished run always leaves a mesh for stage 2."""
    mesh_cfg = GaussianMeshConfig(resolution=cfg.mesh_resolution, density_threshold=cfg.density_thresh)
    try:
        return extract_gaussian_mesh(model, mesh_cfg), cfg.density_thresh
    except NoSurfaceError as exc:
        if exc.suggested_threshold is None or exc.suggested_threshold <= 0:
            raise DreamGaussianError(f"no mesh could be extracted: {exc}") from exc
        logger.warning("%s; using density_thresh=%.4g instead", exc, exc.suggested_threshold)
        mesh_cfg.density_threshold = exc.suggested_threshold
        try:
            return extract_gaussian_mesh(model, mesh_cfg), exc.suggested_threshold
        except NoSurfaceError as again:
            raise DreamGaussianError(f"no mesh could be extracted: {again}") from again


def run_stage1(cfg: DreamGaussianConfig, progress: bool = True) -> Stage1Result:
    """Train the Gaussians and write the stage-1 outputs (see the module docstring)."""
    mode = cfg.check_supported()
    if cfg.gui:
        logger.warning("gui=true ignored: dreamgaussian-hash3d runs headless (progress bar, report, save_video=true)")
    # the inputs, then the output folder, are checked before any work, so a bad run overwrites nothing
    reference = load_input(cfg) if mode in ("image", "imagedream") or cfg.input else None  # [4, S, S]
    check_output_folder(cfg)
    device = pick_device(cfg)
    model = _initial_model(cfg, device)
    torch.manual_seed(cfg.seed)
    report = Report("stage 1 (Gaussians)", cfg, device)
    guidance = build_guidance(cfg, device, reference)
    weight = cfg.lambda_zero123 if mode == "image" else cfg.lambda_sd

    reference_loss = uses_reference_loss(cfg, reference)
    if reference_loss:
        ref_rgb = on_white(reference)[None].to(device)  # [1, 3, S, S]
        ref_alpha = reference[3:][None].to(device)
    ref_views = make_views([cfg.elevation], [reference_azimuth(cfg)], cfg.radius, cfg.fovy, cfg.ref_size, device)
    white = torch.ones(3, device=device)
    backend = resolve_backend(cfg.gaussian_backend, device)
    lr = lr_config(cfg)
    optimizer = model.make_optimizer(lr)
    strategy = densify_strategy(cfg)
    strategy.check_sanity(model.params, optimizer)
    state = strategy.initialize_state()
    rng = np.random.default_rng(cfg.seed)
    split_generator = torch.Generator(device=device).manual_seed(cfg.seed)
    bar = ProgressBar(cfg.iters, enabled=progress, desc="stage 1")

    synchronize(device)
    t0 = time.perf_counter()
    for step in range(1, cfg.iters + 1):
        ratio = min(1.0, step / cfg.iters)
        GaussianModel.update_learning_rate(optimizer, step, lr)
        loss = torch.zeros((), device=device)
        if reference_loss:  # the input view
            rgb, alpha, _ = render_gaussians(model, ref_views, white, backend)
            warm = ratio if cfg.warmup_rgb_loss else 1.0
            loss = warm * (10000.0 * F.mse_loss(rgb, ref_rgb) + 1000.0 * F.mse_loss(alpha, ref_alpha))
        # random views (with their multi-view companions), scored by the guidance
        views, extra, backgrounds, extra_backgrounds = step_views(rng, cfg, render_resolution(cfg, ratio), device)
        images, _, meta = render_gaussians(model, views, backgrounds, backend)
        if extra is not None:
            images = as_sets(images, render_gaussians(model, extra, extra_backgrounds, backend)[0])
        guidance.update_step(step, cfg.iters)
        out = guidance(images, *guidance_cameras(views, extra))
        loss = loss + weight * out.loss
        with section("backward"):
            loss.backward()
        with section("optimizer"):
            if cfg.grad_clip > 0:
                for param in model.params.values():
                    torch.nn.utils.clip_grad_norm_(param, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with section("densify"):
            strategy.step_post_backward(model.params, optimizer, state, step, meta, split_generator)
        step_done()
        bar.update()
        if step % cfg.log_every == 0 or step == cfg.iters:
            bar.set_postfix(float(loss.detach()), guidance.cache_stats())
    synchronize(device)
    train_time = time.perf_counter() - t0
    bar.close()
    removed = strategy.final_prune(model.params, optimizer, state, min_opacity=0.01, max_world_scale=0.1)

    # outputs (the folder was checked before training)
    ply = cfg.output_path("_model.ply")
    model.save_ply(ply)
    mesh, threshold = extract_mesh(model, cfg)
    from hash3d.export.mesh_files import export_mesh  # noqa: PLC0415

    field = GaussianField.from_model(model, 0.005)
    mesh_files = export_mesh(
        mesh, cfg.output_path(f"_mesh.{cfg.mesh_format}"), cfg.mesh_format, cfg.texture_size, field=field,
        up_axis="z", device=device,
    )  # fmt: skip
    video = None
    if cfg.save_video:
        video = save_video(
            cfg.output_path(".mp4"),
            orbit_frames(lambda v: render_gaussians(model, v, white, backend)[0], cfg, device, progress),
        )
    report.set(
        mode=mode,
        steps=cfg.iters,
        train_time_s=round(train_time, 3),
        step_time_ms=round(1000 * train_time / cfg.iters, 2),
        gaussian_backend=backend,
        num_gaussians=model.num_gaussians,
        final_prune_removed=removed,
        mesh_vertices=mesh.n_vertices,
        mesh_faces=mesh.n_faces,
        density_thresh_used=threshold,
        cache=cache_summary(guidance),
    )
    outputs = [ply, *mesh_files] + ([video] if video else [])
    report_path = cfg.output_path("_report.json")
    summary = report.finish(report_path, outputs)
    return Stage1Result(model, ply, mesh_files, report_path, video, summary)
