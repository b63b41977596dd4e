"""dreamgaussian-hash3d: configs (twins, DreamGaussian defaults, typo errors), camera conventions, both stages end
to end on the CPU with a tiny written Zero123 (cache on and off), the command lines as users run them, and every
bad-input error."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hash3d.config import flatten
from hash3d.config.errors import ConfigError
from hash3d.config.loader import load_yaml
from hash3d.config.typed import to_data
from hash3d.systems.dreamgaussian import DreamGaussianError, load_options
from hash3d.systems.dreamgaussian.common import make_views, vertical_range

ROOT = Path(__file__).resolve().parents[1]
FRONT = ROOT / "dreamgaussian-hash3d"
CONFIGS = FRONT / "configs"
EXAMPLE = FRONT / "data" / "mug_rgba.png"


SMALL = {
    "iters": 6,
    "iters_refine": 3,
    "num_pts": 200,
    "ref_size": 32,
    "render_resolutions": "[24,32,32]",
    "refine_resolution": 32,
    "mesh_resolution": 24,
    "texture_size": 32,
    "density_start_iter": 2,
    "densification_interval": 3,
    "density_thresh": 0.05,
    "cache.cell_size": "[360,360,10,1000]",
    "cache.policy.probability": 1,
}
"""Options that shrink a DreamGaussian config to a few CPU seconds (the text-mode tests use them too)."""


def tiny(model: str, outdir: Path, **extra) -> list[str]:
    """Overrides that shrink a config to a few CPU seconds; the cache (when on) hits after its first call."""
    base = {
        "input": str(EXAMPLE),
        "save_path": "mug",
        "outdir": str(outdir),
        "guidance.pretrained_model_name_or_path": model,
        **SMALL,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("plain", ["image", "image_sai", "text", "text_mv", "imagedream"])
def test_hash3d_twin_differs_only_in_the_cache_block(plain):
    a_raw = dict(load_yaml(CONFIGS / f"{plain}.yaml"))
    b_raw = dict(load_yaml(CONFIGS / f"{plain}_hash3d.yaml"))
    assert "cache" in b_raw and b_raw["cache"]["enabled"] is True
    a_raw.pop("cache", None)
    b_raw.pop("cache")
    assert a_raw == b_raw
    a, b = (to_data(load_options(CONFIGS / f"{n}.yaml")) for n in (plain, f"{plain}_hash3d"))
    la, lb = flatten(a), flatten(b)
    diff = sorted(k for k in set(la) | set(lb) if la.get(k) != lb.get(k))
    assert diff and all(k.startswith("cache.") for k in diff), diff
    assert a["cache"]["enabled"] is False and b["cache"]["enabled"] is True


def test_configs_carry_dreamgaussian_defaults():
    xl = load_options(CONFIGS / "image.yaml")
    sai = load_options(CONFIGS / "image_sai.yaml")
    # image.yaml and image_sai.yaml differ only in stable_zero123 and warmup_rgb_loss (and so the weights)
    la, lb = flatten(to_data(xl)), flatten(to_data(sai))
    assert sorted(k for k in la if la[k] != lb[k]) == ["guidance.pretrained_model_name_or_path", "stable_zero123", "warmup_rgb_loss"]
    assert xl.model_name == "ashawkey/zero123-xl-diffusers" and not xl.stable_zero123 and xl.warmup_rgb_loss
    assert sai.model_name == "ashawkey/stable-zero123-diffusers" and sai.stable_zero123 and not sai.warmup_rgb_loss
    c = sai
    assert (c.iters, c.iters_refine, c.ref_size, c.batch_size, c.num_pts, c.sh_degree) == (500, 50, 256, 1, 5000, 0)
    assert (c.radius, c.fovy, c.min_ver, c.max_ver, c.elevation, c.invert_bg_prob) == (2, 49.1, -30, 30, 0, 0.5)
    assert (c.lambda_zero123, c.lambda_sd, c.density_thresh, c.outdir, c.mesh_format) == (1, 0, 1, "logs", "obj")
    assert (c.position_lr_init, c.position_lr_final, c.position_lr_max_steps) == (0.001, 0.00002, 500)
    assert (c.feature_lr, c.opacity_lr, c.scaling_lr, c.rotation_lr, c.percent_dense) == (0.01, 0.05, 0.005, 0.005, 0.01)
    assert (c.density_start_iter, c.density_end_iter, c.densification_interval, c.opacity_reset_interval) == (100, 3000, 100, 700)
    assert (c.densify_grad_threshold, c.geom_lr, c.texture_lr) == (0.01, 0.0001, 0.2)
    assert c.render_resolutions == [128, 256, 512] and c.render_resolution_ratios == [0.3, 0.6]
    assert c.guidance.guidance_scale == 5 and c.anneal_timestep and c.guidance.dtype == "fp16"
    h = load_options(CONFIGS / "image_sai_hash3d.yaml")
    assert h.cache.cell_size == (20.0, 20.0, 0.1, 20.0) and h.cache.mode == "noise" and h.cache.policy.strategy == "auto"


def test_render_resolution_schedule_and_vertical_range():
    from hash3d.systems.dreamgaussian.stage1 import render_resolution

    c = load_options(CONFIGS / "image.yaml")
    assert [render_resolution(c, r) for r in (0.0, 0.29, 0.3, 0.59, 0.6, 1.0)] == [128, 128, 256, 256, 512, 512]
    assert vertical_range(c) == (-30, 30)
    # photo from above (DreamGaussian sign): still covers [-30, 30] absolute, never beyond ±80
    assert vertical_range(load_options(CONFIGS / "image.yaml", ["elevation=-30"])) == (-30, 60)
    assert vertical_range(load_options(CONFIGS / "image.yaml", ["elevation=60"])) == (-90, 20)


def test_unknown_option_names_the_closest_key():
    with pytest.raises(ConfigError, match="unknown config key 'iter'.*did you mean 'iters'"):
        load_options(CONFIGS / "image.yaml", ["iter=10"])
    with pytest.raises(ConfigError, match="'cache.policy.probabilty'.*did you mean 'probability'"):
        load_options(CONFIGS / "image_hash3d.yaml", ["cache.policy.probabilty=0.3"])
    with pytest.raises(ConfigError, match="mesh_format"):
        load_options(CONFIGS / "image.yaml", ["mesh_format=fbx"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_options(CONFIGS / "nope.yaml")


def test_cameras_follow_dreamgaussian_convention():
    """DreamGaussian's orbit camera: x = r cos e sin a, y = −r sin e, z = r cos e cos a (y up, elevation < 0 = above);
    the guidance sees threestudio angles whose Zero123 embedding is DreamGaussian's [rad(ver), sin a, cos a,
    rad(90 + elevation)]."""
    from hash3d.diffusion.guidance.zero123 import camera_embedding
    from hash3d.systems.dreamgaussian.common import REF_AZIMUTH, dg_to_world_elevation

    r = 2.0
    elev = torch.tensor([0.0, -30.0, 20.0, -30.0])
    azim = torch.tensor([0.0, 0.0, 90.0, -120.0])
    views = make_views(elev, azim, r, 49.1, 16)
    centres = views.c2w[:, :3, 3]
    e, a = torch.deg2rad(elev), torch.deg2rad(azim)
    expected = torch.stack([r * e.cos() * a.sin(), -r * e.sin(), r * e.cos() * a.cos()], -1)
    torch.testing.assert_close(centres, expected, atol=1e-5, rtol=0)
    # every camera looks at the origin with the image's up direction towards +y
    for c in range(4):
        origin_cam = views.viewmats[c, :3, 3]  # the origin in OpenCV camera coordinates
        assert abs(origin_cam[0]) < 1e-5 and abs(origin_cam[1]) < 1e-5 and origin_cam[2] > 0
    up_in_cam = views.viewmats[:, :3, :3] @ torch.tensor([0.0, 1.0, 0.0])
    assert (up_in_cam[:, 1] < 0).all()  # OpenCV y points down: scene +y is up in the image
    # guidance keys and the Stable-Zero123 camera vector
    cond = float(dg_to_world_elevation(-30.0))
    ver, hor = torch.tensor([10.0, -25.0]), torch.tensor([45.0, -170.0])
    v = make_views(-30.0 + ver, hor, r, 49.1, 16)
    emb = camera_embedding(v.elevation, v.azimuth, v.distance, cond, REF_AZIMUTH, r, "stable")
    dg = torch.stack([torch.deg2rad(ver), torch.deg2rad(hor).sin(), torch.deg2rad(hor).cos(), torch.full_like(ver, math.radians(90 - 30))], -1)
    torch.testing.assert_close(emb, dg, atol=1e-6, rtol=0)


def test_guidance_options_reach_the_guidance(written_models, tmp_path):
    from hash3d.systems.dreamgaussian.common import build_guidance

    for mode in ("eager", "compiled"):
        cfg = load_options(CONFIGS / "image_sai.yaml", tiny(written_models["zero123"], tmp_path) + [f"guidance.vae_encoder={mode}"])
        guidance = build_guidance(cfg, torch.device("cpu"), torch.rand(4, 32, 32))
        assert guidance.config.vae_encoder == mode and guidance.config.cuda_graphs
    with pytest.raises(ConfigError, match="vae_encoder"):
        load_options(CONFIGS / "image_sai.yaml", tiny(written_models["zero123"], tmp_path) + ["guidance.vae_encoder=fast"])


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize(
    "config, cache_on, fmt",
    [("image_sai_hash3d.yaml", True, "obj"), ("image.yaml", False, "glb")],
    ids=["stable-zero123+cache", "zero123-xl-no-cache-glb"],
)
def test_both_stages_end_to_end(written_models, tmp_path, config, cache_on, fmt):
    import trimesh

    from hash3d.scene.gaussians import PARAM_NAMES, GaussianModel
    from hash3d.systems.dreamgaussian.stage1 import run_stage1
    from hash3d.systems.dreamgaussian.stage2 import load_mesh, run_stage2

    out = tmp_path / "logs"
    cfg = load_options(CONFIGS / config, tiny(written_models["zero123"], out, mesh_format=fmt))
    assert cfg.cache.enabled is cache_on
    r1 = run_stage1(cfg, progress=False)

    # the .ply reloads with the same Gaussians
    assert r1.ply == out / "mug_model.ply"
    loaded = GaussianModel.from_ply(r1.ply)
    assert loaded.num_gaussians == r1.model.num_gaussians > 0
    for name in PARAM_NAMES:
        torch.testing.assert_close(loaded.params[name], r1.model.params[name].detach().float())
    # the coarse mesh with its texture
    if fmt == "obj":
        assert [p.name for p in r1.mesh] == ["mug_mesh.obj", "mug_mesh.mtl", "mug_mesh_albedo.png"]
        tm = trimesh.load(r1.mesh[0], force="mesh", process=False)
        assert Image.open(out / "mug_mesh_albedo.png").size == (32, 32)
    else:
        assert [p.name for p in r1.mesh] == ["mug_mesh.glb"]
        tm = trimesh.load(r1.mesh[0], force="mesh", process=False)
    assert len(tm.faces) > 0 and tm.visual.uv is not None
    # the mesh sits where the Gaussians are (same frame, no axis swap on export)
    means = r1.model.means.detach()
    lo, hi = means.min(0).values - 0.3, means.max(0).values + 0.3
    assert ((torch.tensor(tm.vertices, dtype=torch.float32) >= lo) & (torch.tensor(tm.vertices, dtype=torch.float32) <= hi)).all()
    # the report
    report = json.loads((out / "mug_report.json").read_text())
    assert report["steps"] == 6 and report["num_gaussians"] == loaded.num_gaussians
    assert report["cache"]["enabled"] is cache_on
    if cache_on:
        assert report["cache"]["hits"] > 0 and report["cache"]["unet_calls_saved"] > 0
        assert "cache hit rate" in r1.summary and "UNet calls saved" in r1.summary
    else:
        assert report["cache"]["unet_calls_saved"] == 0 and "cache off" in r1.summary

    r2 = run_stage2(cfg, progress=False)
    if fmt == "obj":
        assert [p.name for p in r2.files] == ["mug.obj", "mug.mtl", "mug_albedo.png"]
        assert Image.open(out / "mug_albedo.png").size == (32, 32)
    else:
        assert [p.name for p in r2.files] == ["mug.glb"]
    refined = trimesh.load(r2.files[0], force="mesh", process=False)
    assert len(refined.faces) == r2.mesh.n_faces and refined.visual.uv is not None
    # geometry untouched (train_geo false), texture changed by the refinement
    before = load_mesh(r1.mesh[0])
    after = load_mesh(r2.files[0])
    torch.testing.assert_close(after.vertices, before.vertices)
    assert not torch.allclose(after.texture, before.texture, atol=2 / 255)
    report2 = json.loads((out / "mug_refine_report.json").read_text())
    assert report2["steps"] == 3 and report2["target"] == "zero123-sds" and report2["cache"]["enabled"] is cache_on
    if cache_on:
        assert report2["cache"]["hits"] > 0


def test_stage2_unwraps_an_untextured_mesh_and_trains_geometry(written_models, tmp_path):
    import trimesh

    from hash3d.systems.dreamgaussian.stage2 import load_mesh, run_stage2

    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    sphere.visual.vertex_colors = np.tile([200, 40, 40, 255], (len(sphere.vertices), 1))
    mesh_path = tmp_path / "ball.ply"
    sphere.export(mesh_path)
    cfg = load_options(
        CONFIGS / "image_sai.yaml",
        tiny(written_models["zero123"], tmp_path / "logs", mesh=str(mesh_path), train_geo="true", geom_lr=0.01),
    )
    result = run_stage2(cfg, progress=False)
    out = load_mesh(result.files[0])
    assert out.texture is not None and out.texture.shape == (32, 32, 3)
    # the vertex colour was baked into the texture before refining: still mostly red
    assert out.texture[..., 0].mean() > out.texture[..., 1].mean() + 0.2
    assert (out.vertices.norm(dim=-1) - 0.5).abs().max() > 1e-4  # train_geo moved the vertices


def test_orbit_video(written_models, tmp_path):
    import imageio.v2 as imageio

    from hash3d.systems.dreamgaussian.stage1 import run_stage1

    cfg = load_options(
        CONFIGS / "image_sai_hash3d.yaml",
        tiny(written_models["zero123"], tmp_path, iters=2, save_video="true", video_size=32, video_frames=6),
    )
    result = run_stage1(cfg, progress=False)
    assert result.video == tmp_path / "mug.mp4"
    frames = imageio.mimread(result.video)
    assert len(frames) == 6 and frames[0].shape[:2] == (32, 32)


def test_stage1_starts_from_a_ply(written_models, tmp_path):
    from hash3d.scene.gaussians import GaussianModel
    from hash3d.systems.dreamgaussian.stage1 import run_stage1

    start = GaussianModel.random_ball(123, 0.4, generator=torch.Generator().manual_seed(1))
    start.save_ply(tmp_path / "start.ply")
    cfg = load_options(CONFIGS / "image_sai.yaml", tiny(written_models["zero123"], tmp_path / "logs", iters=1, load=str(tmp_path / "start.ply")))
    result = run_stage1(cfg, progress=False)
    report = json.loads(result.report.read_text())
    assert result.model.num_gaussians + report["final_prune_removed"] == 123  # no densification in one step
    cfg.load = str(tmp_path / "missing.ply")
    with pytest.raises(DreamGaussianError, match="load= .ply not found: .*missing.ply"):
        run_stage1(cfg, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_both_stages_on_cuda(written_models, tmp_path):
    """device=auto on a GPU: gsplat (when installed) for the Gaussians, nvdiffrast (when installed) for the mesh."""
    from hash3d.render.gaussian_raster import has_gsplat
    from hash3d.render.mesh_raster import has_nvdiffrast
    from hash3d.systems.dreamgaussian.stage1 import run_stage1
    from hash3d.systems.dreamgaussian.stage2 import run_stage2

    out = tmp_path / "logs"
    cfg = load_options(CONFIGS / "image_sai_hash3d.yaml", tiny(written_models["zero123"], out, iters=20, ref_size=64))
    r1 = run_stage1(cfg, progress=False)
    report = json.loads(r1.report.read_text())
    assert report["device"].startswith("cuda")
    assert report["gaussian_backend"] == ("gsplat" if has_gsplat() else "torch")
    assert report["cache"]["hits"] > 0
    r2 = run_stage2(cfg, progress=False)
    report2 = json.loads(r2.report.read_text())
    assert report2["mesh_backend"] == ("nvdiffrast" if has_nvdiffrast() else "torch")
    assert (out / "mug_albedo.png").exists()


# ------------------------------------------------------------------------------------------------ bad input


def _stage(name):
    from hash3d.systems.dreamgaussian.stage1 import run_stage1
    from hash3d.systems.dreamgaussian.stage2 import run_stage2

    return {"1": run_stage1, "2": run_stage2}[name]


def test_missing_input_fails_before_anything_is_written(written_models, tmp_path):
    out = tmp_path / "logs"
    out.mkdir()
    old = out / "mug_model.ply"
    old.write_text("an earlier result")
    cfg = load_options(CONFIGS / "image_sai.yaml", tiny(written_models["zero123"], out, input=str(tmp_path / "nope.png")))
    with pytest.raises(DreamGaussianError, match="input: image not found: .*nope.png"):
        _stage("1")(cfg, False)
    assert old.read_text() == "an earlier result" and sorted(p.name for p in out.iterdir()) == ["mug_model.ply"]
    cfg = load_options(CONFIGS / "image_sai.yaml", tiny(written_models["zero123"], out, input="null"))
    with pytest.raises(DreamGaussianError, match="input is required: add input=.*process.py"):
        _stage("1")(cfg, False)


def test_image_without_alpha_and_without_rembg(written_models, tmp_path, monkeypatch):
    import hash3d.systems.dreamgaussian.common as common

    monkeypatch.setattr(common, "has_rembg", lambda: False)
    rgb = tmp_path / "photo.jpg"
    Image.open(EXAMPLE).convert("RGB").save(rgb)
    cfg = load_options(CONFIGS / "image_sai.yaml", tiny(written_models["zero123"], tmp_path / "logs", input=str(rgb)))
    with pytest.raises(DreamGaussianError, match="no alpha channel.*rembg is not installed.*process.py"):
        _stage("1")(cfg, False)
    # an RGBA image whose alpha masks nothing counts as having none
    opaque = tmp_path / "opaque.png"
    Image.open(EXAMPLE).convert("RGB").convert("RGBA").save(opaque)
    cfg = load_options(CONFIGS / "image_sai.yaml", tiny(written_models["zero123"], tmp_path / "logs", input=str(opaque)))
    with pytest.raises(DreamGaussianError, match="no alpha channel"):
        _stage("1")(cfg, False)


def test_save_path_missing_or_not_writable(written_models, tmp_path):
    cfg = load_options(CONFIGS / "image_sai.yaml", tiny(written_models["zero123"], tmp_path, save_path="null"))
    with pytest.raises(DreamGaussianError, match="save_path is required: add save_path=NAME"):
        _stage("1")(cfg, False)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for stage in ("1", "2"):
        cfg = load_options(CONFIGS / "image_sai.yaml", tiny(written_models["zero123"], blocker / "logs"))
        cfg.mesh = str(EXAMPLE)  # stage 2 gets past the mesh check to the folder check
        with pytest.raises(DreamGaussianError, match="cannot write the outputs to .*a_file/logs.*outdir="):
            _stage(stage)(cfg, False)
    assert blocker.read_text() == "not a folder"


def test_stage2_without_stage1_outputs(written_models, tmp_path):
    cfg = load_options(CONFIGS / "image_sai_hash3d.yaml", tiny(written_models["zero123"], tmp_path / "logs"))
    with pytest.raises(DreamGaussianError, match=r"stage-1 mesh not found: .*mug_mesh\.obj \(run stage 1 first: python main\.py"):
        _stage("2")(cfg, False)
    assert not (tmp_path / "logs").exists()  # nothing created
    cfg.mesh = str(tmp_path / "other.obj")
    with pytest.raises(DreamGaussianError, match="mesh not found: .*other.obj.*mesh=PATH must name"):
        _stage("2")(cfg, False)


@pytest.mark.parametrize(
    "override, message",
    [("mvdream=true", "mvdream"), ("lambda_sd=1", "Stable Diffusion"), ("lambda_zero123=0", "lambda_zero123")],
)
def test_unsupported_dreamgaussian_options(written_models, tmp_path, override, message):
    cfg = load_options(CONFIGS / "image_sai.yaml", tiny(written_models["zero123"], tmp_path) + [override])
    with pytest.raises(DreamGaussianError, match=message):
        _stage("1")(cfg, False)


# ------------------------------------------------------------------------------------------------ process.py


def test_process_keeps_alpha_and_recentres(tmp_path):
    from hash3d.data.process_image import ProcessOptions, process_path

    # a small off-centre object with an alpha channel
    img = np.zeros((60, 100, 4), np.uint8)
    img[5:25, 10:30] = [200, 30, 30, 255]
    Image.fromarray(img, "RGBA").save(tmp_path / "thing.png")
    Image.fromarray(img[..., :3]).save(tmp_path / "thing_rgba.png")  # an earlier output: not processed again
    written = process_path(tmp_path, ProcessOptions(size=64))
    assert written == [tmp_path / "thing_rgba.png"]
    out = np.asarray(Image.open(written[0]))
    assert out.shape == (64, 64, 4)
    ys, xs = np.nonzero(out[..., 3] > 127)
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    assert abs(side - round(64 * 0.8)) <= 1  # 80% of the canvas
    assert abs((ys.min() + ys.max()) / 2 - 31.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 31.5) <= 1
    assert (out[out[..., 3] == 255][:, :3] == [200, 30, 30]).all()
    # no recentring: same size as the input
    same = process_path(tmp_path / "thing.png", ProcessOptions(recenter=False))
    assert np.asarray(Image.open(same[0])).shape == (60, 100, 4)


def test_process_without_alpha_needs_rembg(tmp_path, monkeypatch):
    from hash3d.data import process_image
    from hash3d.data.base import DataError

    monkeypatch.setattr(process_image, "has_rembg", lambda: False)
    Image.new("RGB", (20, 20), (10, 200, 10)).save(tmp_path / "photo.jpg")
    with pytest.raises(DataError, match="no alpha channel and rembg is not installed.*pip install rembg"):
        process_image.process_path(tmp_path / "photo.jpg")
    with pytest.raises(DataError, match="input not found"):
        process_image.process_path(tmp_path / "missing.png")
    assert not (tmp_path / "photo_rgba.png").exists()


# ------------------------------------------------------------------------------------------------ the command lines


def _run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, script, *args], cwd=FRONT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_command_lines_as_users_run_them(written_models, tmp_path):
    """process.py -> main.py -> main2.py in dreamgaussian-hash3d/, relative paths as in DreamGaussian's README."""
    src = tmp_path / "photo.png"
    Image.open(EXAMPLE).resize((48, 40)).save(src)
    p = _run("process.py", str(src), "--size", "64")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "photo_rgba.png").exists() and "wrote" in p.stdout

    outdir = tmp_path / "logs"
    args = ["--config", "configs/image_sai_hash3d.yaml", *tiny(written_models["zero123"], outdir, input=str(tmp_path / "photo_rgba.png"), save_path="photo")]
    p = _run("main.py", *args)
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("stage 1 (Gaussians): 6 steps") and "cache hit rate" in last and "UNet calls saved" in last
    assert "stage 1" in p.stderr and "hit=" in p.stderr  # the progress bar with the hit rate
    p = _run("main2.py", *args)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("stage 2 (texture): 3 steps")
    names = sorted(x.name for x in outdir.iterdir())
    assert names == sorted([
        "photo_model.ply", "photo_mesh.obj", "photo_mesh.mtl", "photo_mesh_albedo.png", "photo_report.json",
        "photo.obj", "photo.mtl", "photo_albedo.png", "photo_refine_report.json",
    ])  # fmt: skip


def test_command_line_errors(tmp_path, capsys, monkeypatch):
    """Bad input through the command-line entry points (in-process): one line naming the fix, exit status 2."""
    from hash3d.systems.dreamgaussian.cli import main_stage1, main_stage2

    monkeypatch.chdir(FRONT)
    assert main_stage1(["--config", "configs/image_sai.yaml", "input=data/mug_rgba.png", "save_path=x", "iter=3"], "main.py") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "main.py: error: unknown config key 'iter' — did you mean 'iters'?"
    args = ["--config", "configs/image_sai.yaml", "input=data/mug_rgba.png", "save_path=never_made", f"outdir={tmp_path}"]
    assert main_stage2(args, "main2.py") == 2
    err = capsys.readouterr().err
    assert err.startswith("main2.py: error: stage-1 mesh not found") and "run stage 1 first" in err
    assert main_stage1(["--config", "configs/image_sai.yaml", "input=data/none.png", "save_path=x", f"outdir={tmp_path}"], "main.py") == 2
    assert "input: image not found: data/none.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a flag that is not key=value
        main_stage1(["--config", "configs/image_sai.yaml", "--iters", "3"], "main.py")
    assert "config options are given as key=value" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
