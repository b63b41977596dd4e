"""DreamGaussian stage 2 (main2.py): refine the stage-1 mesh's albedo texture through a differentiable mesh
rasteriser.

Input: `{outdir}/{save_path}_mesh.{mesh_format}` from stage 1 (or `mesh=PATH`). A mesh with texture coordinates
and a texture keeps them (the refinement starts from that texture); one without is unwrapped with xatlas and its
vertex colours (or grey) baked into a `texture_size`² texture.

Each of the `iters_refine` steps (1-based, ratio = step / iters_refine):

1. the input view is rendered at ref_size·s with a random supersampling factor s in [0.125, 2] (DreamGaussian's
   SSAA), resized back to ref_size; loss = refine_ref_weight·MSE over the pixels the mesh covers and faces the
   camera (viewcos > 0.5);
2. `batch_size` random views (same sampling as stage 1, on white) at refine_resolution·s, resized back;
3. **target: Zero123 SDS** on those views, through the same cached guidance as stage 1, with annealed timesteps
   t = (1 − ratio)·1000 in [20, 980], times lambda_zero123. DreamGaussian instead makes an img2img target per
   view (50-step DDIM from strength 0.8 + 0.15·ratio) and regresses onto it with an MSE; its code keeps the SDS
   variant used here as a commented-out alternative. SDS costs one UNet call per view and step (the DDIM target
   about 40) and goes through the Hash3D cache like stage 1.
4. Adam (default betas): the texture (stored as logits, albedo = sigmoid) at texture_lr; with train_geo also
   per-vertex offsets at geom_lr.

The text modes follow DreamGaussian's main2.py instead: the input view's loss only with an input image and never
in imagedream (input view at azimuth 90 in text_mv); each random view (with its three multi-view companions in
text_mv / imagedream) is rendered at refine_resolution·s and the target is the guidance's `refine`: the render's
latents noised to DDIM step int(50·strength), strength = 0.8 + 0.15·ratio, and denoised over the remaining steps
with CFG (SD 100, MVDream 100, ImageDream 5; the UNet calls go through the cache); loss += lambda_sd·MSE(render,
target resized to the render).

Outputs: `{save_path}.obj` + `.mtl` + `_albedo.png` (or `{save_path}.glb` with mesh_format=glb), optionally the
orbit video `{save_path}_refined.mp4`, and `{save_path}_refine_report.json`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hash3d.profiling import step_done
from hash3d.render.mesh_raster import rasterize_mesh, resolve_mesh_backend
from hash3d.scene.isosurface import Mesh
from hash3d.training.outputs import save_video
from hash3d.training.progress import ProgressBar

from .common import (
    Report,
    Views,
    as_sets,
    build_guidance,
    cache_summary,
    check_output_folder,
    guidance_cameras,
    load_input,
    logger,
    make_views,
    on_white,
    pick_device,
    reference_azimuth,
    sample_offsets,
    step_views,
    synchronize,
    uses_reference_loss,
)
from .config import DreamGaussianConfig, DreamGaussianError
from .stage1 import orbit_frames

__all__ = ["Stage2Result", "run_stage2", "load_mesh", "stage1_mesh_path", "render_mesh", "textured_mesh"]


@dataclass
class Stage2Result:
    mesh: Mesh
    files: list[Path]
    report: Path
    video: Path | None
    summary: str


def stage1_mesh_path(cfg: DreamGaussianConfig) -> Path:
    return Path(cfg.mesh) if cfg.mesh else cfg.output_path(f"_mesh.{cfg.mesh_format}")


def load_mesh(path: str | Path) -> Mesh:
    """An OBJ (+ MTL + texture) / GLB / PLY file -> `Mesh` in the file's coordinates, with uv and texture when
    the file has them, else vertex colours when it has those."""
    import trimesh  # noqa: PLC0415

    path = Path(path)
    try:
        tm = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many kinds; all mean "unreadable mesh"
        raise DreamGaussianError(f"cannot read the mesh {path}: {exc}") from exc
    if not isinstance(tm, trimesh.Trimesh) or len(tm.faces) == 0:
        raise DreamGaussianError(f"{path} holds no triangle mesh")
    vertices = torch.tensor(np.asarray(tm.vertices), dtype=torch.float32)
    faces = torch.tensor(np.asarray(tm.faces), dtype=torch.long)
    visual = tm.visual
    uv = getattr(visual, "uv", None)
    texture = None
    if uv is not None and len(uv) == len(vertices):
        material = getattr(visual, "material", None)
        image = getattr(material, "image", None) or getattr(material, "baseColorTexture", None)
        if image is not None:
            texture = torch.tensor(np.asarray(image.convert("RGB")), dtype=torch.float32) / 255.0
    if texture is not None:
        return Mesh(vertices, faces, uv=torch.tensor(np.asarray(uv), dtype=torch.float32), texture=texture)
    colors = None
    if getattr(visual, "kind", None) == "vertex":
        colors = torch.tensor(np.asarray(visual.vertex_colors)[:, :3], dtype=torch.float32) / 255.0
    return Mesh(vertices, faces, colors=colors)


def textured_mesh(mesh: Mesh, size: int) -> Mesh:
    """A mesh with uv and texture: unwrapped with xatlas and its vertex colours (or grey) baked in when needed."""
    if mesh.uv is not None and mesh.texture is not None:
        return mesh
    from hash3d.export.uv_texture import fill_empty_texels, rasterize_uv, unwrap_uv  # noqa: PLC0415

    logger.info("the mesh has no texture: unwrapping it with xatlas (%d faces)", mesh.n_faces)
    mesh = unwrap_uv(mesh, size)
    face_id, bary = rasterize_uv(mesh.uv, mesh.faces, size)
    covered = face_id >= 0
    texture = torch.full((size, size, 3), 0.5)
    if mesh.colors is not None and bool(covered.any()):
        corners = mesh.colors[mesh.faces[face_id[covered]]]  # [K, 3, 3]
        texture[covered] = (bary[covered][..., None] * corners).sum(1)
    return replace(mesh, texture=fill_empty_texels(texture, covered))


def render_mesh(
    vertices: torch.Tensor, mesh: Mesh, albedo: torch.Tensor, views: Views, backend: str, ssaa: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render on white at views.size·ssaa and resize back -> image [C, 3, S, S], alpha [C, 1, S, S], viewcos."""
    size = views.size
    inner = max(8, int(round(size * ssaa)))
    Ks = views.Ks
    if inner != size:
        Ks = Ks.clone()
        Ks[:, :2] *= inner / size
    image, alpha, meta = rasterize_mesh(
        vertices, mesh.faces, views.viewmats, Ks, inner, inner, uv=mesh.uv, texture=albedo, background=1.0, backend=backend
    )
    image, alpha, viewcos = image.permute(0, 3, 1, 2), alpha.permute(0, 3, 1, 2), meta.viewcos.permute(0, 3, 1, 2)
    if inner != size:
        image = F.interpolate(image, (size, size), mode="bilinear", align_corners=False, antialias=inner > size)
        alpha = F.interpolate(alpha, (size, size), mode="nearest")
        viewcos = F.interpolate(viewcos, (size, size), mode="nearest")
    return image, alpha, viewcos


def _ssaa(rng: np.random.Generator) -> float:
    return float(min(2.0, max(0.125, 2.0 * rng.random())))


def _text_step(
    cfg: DreamGaussianConfig, step: int, rng: np.random.Generator, vertices: torch.Tensor, mesh: Mesh,
    albedo: torch.Tensor, backend: str, guidance, device: torch.device,
) -> torch.Tensor:  # fmt: skip
    """The text modes' stage-2 loss on one step's random views: lambda_sd·MSE(render, guidance.refine(render))."""
    ratio = min(1.0, step / cfg.iters_refine)
    views, extra, _, _ = step_views(rng, cfg, cfg.refine_resolution, device)
    # one random supersampling factor per view, as DreamGaussian
    primary = [render_mesh(vertices, mesh, albedo, views.select(i), backend, _ssaa(rng))[0] for i in range(len(views))]
    images = torch.cat(primary)
    if extra is not None:
        others = [render_mesh(vertices, mesh, albedo, extra.select(i), backend, _ssaa(rng))[0] for i in range(len(extra))]
        images = as_sets(images, torch.cat(others))
    guidance.update_step(step, cfg.iters_refine)
    target = guidance.refine(images, *guidance_cameras(views, extra), strength=0.8 + 0.15 * ratio)
    target = F.interpolate(target, images.shape[-2:], mode="bilinear", align_corners=False)
    return cfg.lambda_sd * F.mse_loss(images, target)


def run_stage2(cfg: DreamGaussianConfig, progress: bool = True) -> Stage2Result:
    """Refine the stage-1 mesh's texture and write the stage-2 outputs (see the module docstring)."""
    mode = cfg.check_supported()
    mesh_path = stage1_mesh_path(cfg)
    if not mesh_path.is_file():
        if cfg.mesh:
            raise DreamGaussianError(f"mesh not found: {mesh_path} (mesh=PATH must name an existing .obj, .glb or .ply)")
        raise DreamGaussianError(
            f"stage-1 mesh not found: {mesh_path} (run stage 1 first: python main.py --config CONFIG "
            f"input=IMAGE save_path={cfg.save_path}, with the same outdir and mesh_format; or give mesh=PATH)"
        )
    reference = load_input(cfg) if mode in ("image", "imagedream") or cfg.input else None
    check_output_folder(cfg)
    device = pick_device(cfg)
    mesh = textured_mesh(load_mesh(mesh_path), cfg.texture_size)
    torch.manual_seed(cfg.seed)
    report = Report("stage 2 (texture)", cfg, device)
    guidance = build_guidance(cfg, device, reference) if cfg.iters_refine > 0 else None

    backend = resolve_mesh_backend(cfg.mesh_backend, device)
    mesh = replace(mesh, vertices=mesh.vertices.to(device), faces=mesh.faces.to(device), uv=mesh.uv.to(device))
    base = mesh.vertices
    logits = torch.logit(mesh.texture.to(device).clamp(1e-3, 1 - 1e-3)).requires_grad_(True)
    groups = [{"params": [logits], "lr": cfg.texture_lr}]
    offsets = None
    if cfg.train_geo:
        offsets = torch.zeros_like(base, requires_grad=True)
        groups.append({"params": [offsets], "lr": cfg.geom_lr})
    optimizer = torch.optim.Adam(groups)
    reference_loss = uses_reference_loss(cfg, reference)
    ref_rgb = on_white(reference)[None].to(device) if reference_loss else None
    ref_views = make_views([cfg.elevation], [reference_azimuth(cfg)], cfg.radius, cfg.fovy, cfg.ref_size, device)
    rng = np.random.default_rng(cfg.seed)
    bar = ProgressBar(cfg.iters_refine, enabled=progress, desc="stage 2")

    def vertices() -> torch.Tensor:
        return base if offsets is None else base + offsets

    synchronize(device)
    t0 = time.perf_counter()
    for step in range(1, cfg.iters_refine + 1):
        albedo = torch.sigmoid(logits)
        loss = torch.zeros((), device=device)
        if reference_loss:
            image, alpha, viewcos = render_mesh(vertices(), mesh, albedo, ref_views, backend, _ssaa(rng))
            valid = ((alpha > 0) & (viewcos > 0.5)).float()
            loss = cfg.refine_ref_weight * F.mse_loss(image * valid, ref_rgb * valid)
        if mode != "image":
            loss = loss + _text_step(cfg, step, rng, vertices(), mesh, albedo, backend, guidance, device)
        else:
            vers, hors = sample_offsets(rng, cfg, cfg.batch_size)
            views = make_views([cfg.elevation + v for v in vers], hors, cfg.radius, cfg.fovy, cfg.refine_resolution, device)
            # one random supersampling factor per view, as DreamGaussian
            images = [render_mesh(vertices(), mesh, albedo, views.select(i), backend, _ssaa(rng))[0] for i in range(len(vers))]
            guidance.update_step(step, cfg.iters_refine)
            out = guidance(torch.cat(images), views.elevation, views.azimuth, views.distance)
            loss = loss + cfg.lambda_zero123 * out.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_done()
        bar.update()
        if step % cfg.log_every == 0 or step == cfg.iters_refine:
            bar.set_postfix(float(loss.detach()), guidance.cache_stats())
    synchronize(device)
    train_time = time.perf_counter() - t0
    bar.close()

    with torch.no_grad():
        albedo = torch.sigmoid(logits)
        final = Mesh(vertices().detach().cpu(), mesh.faces.cpu(), uv=mesh.uv.cpu(), texture=albedo.detach().cpu())
    from hash3d.export.mesh_files import export_mesh  # noqa: PLC0415

    files = export_mesh(final, cfg.output_path(f".{cfg.mesh_format}"), cfg.mesh_format, up_axis="z")
    video = None
    if cfg.save_video:
        v = vertices().detach()
        video = save_video(
            cfg.output_path("_refined.mp4"),
            orbit_frames(lambda views: render_mesh(v, mesh, albedo, views, backend)[0], cfg, device, progress),
        )
    report.set(
        steps=cfg.iters_refine,
        train_time_s=round(train_time, 3),
        step_time_ms=round(1000 * train_time / max(cfg.iters_refine, 1), 2),
        mesh_backend=backend,
        mesh=str(mesh_path),
        mesh_vertices=final.n_vertices,
        mesh_faces=final.n_faces,
        texture_size=int(albedo.shape[0]),
        mode=mode,
        target="zero123-sds" if mode == "image" else {"text": "sd", "text_mv": "mvdream", "imagedream": "imagedream"}[mode] + "-refine",
        cache=cache_summary(guidance),
    )
    outputs = files + ([video] if video else [])
    report_path = cfg.output_path("_refine_report.json")
    summary = report.finish(report_path, outputs)
    return Stage2Result(final, files, report_path, video, summary)
