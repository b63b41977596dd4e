"""dreamgaussian-hash3d's text (SD), text_mv (MVDream) and imagedream (ImageDream) modes: configs, the multi-view
cameras of a step, both stages end to end on tiny written models with the cache on, the command line, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hash3d.systems.dreamgaussian import DreamGaussianError, load_options
from hash3d.systems.dreamgaussian.common import (
    as_sets,
    guidance_cameras,
    reference_azimuth,
    step_views,
    uses_reference_loss,
)
from test_dreamgaussian import SMALL

ROOT = Path(__file__).resolve().parents[1]
FRONT = ROOT / "dreamgaussian-hash3d"
CONFIGS = FRONT / "configs"
EXAMPLE = FRONT / "data" / "mug_rgba.png"
NEGATIVE = "ugly, bad anatomy, blurry"


@pytest.fixture(scope="module")
def models(written_models, multiview_models):
    return {"text": written_models["sd"], "text_mv": multiview_models["mvdream"], "imagedream": multiview_models["imagedream"]}


def tiny(model: str, outdir: Path, **extra) -> list[str]:
    """Overrides that shrink a config to a few CPU seconds; the cache (when on) hits after its first call."""
    base = {
        "prompt": "a plush toy of a corgi nurse",
        "save_path": "corgi",
        "outdir": str(outdir),
        "guidance.pretrained_model_name_or_path": model,
        **SMALL,
        "iters": 4,
        "iters_refine": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_configs_carry_dreamgaussian_text_defaults():
    text, mv, image = (load_options(CONFIGS / f"{n}.yaml") for n in ("text", "text_mv", "imagedream"))
    assert (text.mode, mv.mode, image.mode) == ("text", "text_mv", "imagedream")
    assert text.model_name == "stabilityai/stable-diffusion-2-1-base" and text.guidance_scale == 100
    assert mv.model_name == "ashawkey/mvdream-sd2.1-diffusers" and mv.guidance_scale == 100
    assert image.model_name == "ashawkey/imagedream-ipmv-diffusers" and image.guidance_scale == 5
    for c in (text, mv, image):
        assert (c.lambda_sd, c.lambda_zero123, c.iters, c.iters_refine, c.batch_size, c.ref_size) == (1, 0, 500, 50, 1, 256)
        assert (c.radius, c.fovy, c.invert_bg_prob, c.num_pts, c.sh_degree, c.anneal_timestep) == (2.5, 49.1, 0.5, 5000, 0, True)
        assert (c.position_lr_max_steps, c.densification_interval, c.density_end_iter) == (300, 50, 3000)
        assert not c.cache.enabled
    assert (text.min_ver, text.max_ver, mv.min_ver, mv.max_ver, image.min_ver, image.max_ver) == (-30, 30, -30, 30, -5, 0)
    assert (text.density_start_iter, mv.density_start_iter, image.density_start_iter) == (0, 0, 50)
    assert text.negative_prompt == "" and mv.negative_prompt.startswith("ugly, bad anatomy") and mv.negative_prompt == image.negative_prompt
    # guidance_scale left unset: DreamGaussian's per mode
    assert load_options(CONFIGS / "imagedream.yaml", ["guidance.guidance_scale=null"]).guidance_scale == 5
    assert load_options(CONFIGS / "text.yaml", ["guidance.guidance_scale=null"]).guidance_scale == 100
    for name in ("text", "text_mv", "imagedream"):
        hashed = load_options(CONFIGS / f"{name}_hash3d.yaml")
        assert hashed.cache.enabled and hashed.cache.mode == "noise" and hashed.cache.policy.strategy == "auto"


def test_multiview_step_views_are_sets_at_90_degree_steps():
    cfg = load_options(CONFIGS / "text_mv.yaml", ["batch_size=2"])
    rng = np.random.default_rng(3)
    primary, extra, bg, extra_bg = step_views(rng, cfg, 32, "cpu")
    assert len(primary) == 2 and len(extra) == 6
    elevation, azimuth, distance = guidance_cameras(primary, extra)
    assert elevation.shape == (8,) and bool((distance == 2.5).all())
    for s in range(2):
        ring = azimuth[4 * s : 4 * s + 4] - azimuth[4 * s]
        torch.testing.assert_close(ring, torch.tensor([0.0, 90.0, 180.0, 270.0]))
        assert bool((elevation[4 * s : 4 * s + 4] == elevation[4 * s]).all())
        assert bool((extra_bg[3 * s : 3 * s + 3] == bg[s]).all())
    # the same draws as mode image (so the random views of image mode are unchanged)
    image_cfg = load_options(CONFIGS / "image.yaml", ["batch_size=2", "radius=2.5"])
    p2, none, bg2, _ = step_views(np.random.default_rng(3), image_cfg, 32, "cpu")
    assert none is None and torch.equal(p2.azimuth, primary.azimuth) and torch.equal(bg2, bg)
    rows = as_sets(torch.arange(2)[:, None] * 10, torch.arange(6)[:, None] + 100)
    assert rows.flatten().tolist() == [0, 100, 101, 102, 10, 103, 104, 105]


def test_reference_view_rules():
    ref = torch.ones(4, 8, 8)
    text, mv, image_dream, image = (load_options(CONFIGS / f"{n}.yaml") for n in ("text", "text_mv", "imagedream", "image"))
    assert (reference_azimuth(text), reference_azimuth(mv), reference_azimuth(image_dream), reference_azimuth(image)) == (0, 90, 90, 0)
    assert uses_reference_loss(text, ref) and uses_reference_loss(mv, ref) and uses_reference_loss(image, ref)
    assert not uses_reference_loss(image_dream, ref) and not uses_reference_loss(text, None)


@pytest.mark.parametrize("mode", ["text", "text_mv", "imagedream"])
def test_both_stages_end_to_end(models, tmp_path, mode):
    import trimesh

    from hash3d.scene.gaussians import GaussianModel
    from hash3d.systems.dreamgaussian.stage1 import run_stage1
    from hash3d.systems.dreamgaussian.stage2 import load_mesh, run_stage2

    out = tmp_path / "logs"
    extra = {"input": str(EXAMPLE)} if mode == "imagedream" else {}
    cfg = load_options(CONFIGS / f"{mode}_hash3d.yaml", tiny(models[mode], out, **extra))
    r1 = run_stage1(cfg, progress=False)
    assert GaussianModel.from_ply(r1.ply).num_gaussians == r1.model.num_gaussians > 0
    assert [p.name for p in r1.mesh] == ["corgi_mesh.obj", "corgi_mesh.mtl", "corgi_mesh_albedo.png"]
    assert len(trimesh.load(r1.mesh[0], force="mesh", process=False).faces) > 0
    report = json.loads((out / "corgi_report.json").read_text())
    assert report["mode"] == mode and report["steps"] == 4 and report["model"] == models[mode]
    cache = report["cache"]
    views = 1 if mode == "text" else 4
    # one lookup per step (a set of views in the multi-view modes), and the big cells hit after the first
    hits = cache["hits"]
    assert cache["queries"] == 4 and hits >= 1
    assert (cache["unet_calls_saved"], cache["unet_calls_run"]) == (hits * views, (4 - hits) * views)
    if mode != "text":
        assert (cache["views_per_set"], cache["sets_cached"], cache["sets_run"]) == (4, hits, 4 - hits)

    r2 = run_stage2(cfg, progress=False)
    assert [p.name for p in r2.files] == ["corgi.obj", "corgi.mtl", "corgi_albedo.png"]
    before, after = load_mesh(r1.mesh[0]), load_mesh(r2.files[0])
    torch.testing.assert_close(after.vertices, before.vertices)
    assert not torch.allclose(after.texture, before.texture, atol=2 / 255)
    report2 = json.loads((out / "corgi_refine_report.json").read_text())
    assert report2["target"] == {"text": "sd", "text_mv": "mvdream", "imagedream": "imagedream"}[mode] + "-refine"
    # DDIM from step int(50·strength), strength 0.8 + 0.15·ratio: 7 + 3 UNet calls over the two steps
    assert report2["cache"]["queries"] == 10
    # without a CUDA device the cost-aware policy tries every request: no skip, no quiet probe
    assert (report2["cache"]["tried"], report2["cache"]["skipped"], report2["cache"]["probed"]) == (10, 0, 0)


def test_text_mode_with_an_input_image_uses_the_reference_view(models, tmp_path):
    from hash3d.systems.dreamgaussian.stage1 import run_stage1

    out = tmp_path / "logs"
    plain = load_options(CONFIGS / "text.yaml", tiny(models["text"], out, iters=2))
    with_image = load_options(CONFIGS / "text.yaml", tiny(models["text"], out, iters=2, input=str(EXAMPLE), save_path="mug"))
    a, b = run_stage1(plain, progress=False), run_stage1(with_image, progress=False)
    # same seed and draws: only the input view's losses differ
    ma, mb = a.model.means.detach(), b.model.means.detach()
    assert ma.shape != mb.shape or not torch.allclose(ma, mb)
    # and without one the run is reproducible
    again = run_stage1(load_options(CONFIGS / "text.yaml", tiny(models["text"], out, iters=2)), progress=False)
    torch.testing.assert_close(again.model.means, a.model.means)


def test_bad_input_is_a_clear_error(models, tmp_path, monkeypatch):
    import hash3d.systems.dreamgaussian.common as common
    from hash3d.systems.dreamgaussian.stage1 import run_stage1
    from hash3d.systems.dreamgaussian.stage2 import run_stage2

    out = tmp_path / "logs"
    cases = [
        ("imagedream.yaml", {}, "imagedream needs an input image as well as the prompt: add input="),
        ("imagedream.yaml", {"input": str(EXAMPLE), "prompt": "null"}, "mode imagedream needs a text prompt: add prompt="),
        ("text_mv.yaml", {"prompt": "' '"}, "mode text_mv needs a text prompt"),
        ("text.yaml", {"lambda_zero123": 1}, "combining Stable Diffusion .* with the Zero123 guidance is not provided"),
        ("text_mv.yaml", {"imagedream": "true"}, "mvdream and imagedream are both true"),
        ("text_mv.yaml", {"lambda_sd": 0}, "mode text_mv needs lambda_sd > 0"),
        ("text_mv.yaml", {"cache.enabled": "true", "cache.mode": "features"}, "set cache.mode to noise"),
    ]
    for config, extra, message in cases:
        cfg = load_options(CONFIGS / config, tiny(models["text_mv"], out, **extra))
        with pytest.raises((DreamGaussianError, ValueError), match=message):
            run_stage1(cfg, progress=False)
        with pytest.raises((DreamGaussianError, ValueError), match=message):
            run_stage2(load_options(CONFIGS / config, tiny(models["text_mv"], out, mesh=str(EXAMPLE), **extra)), progress=False)
    # an RGB photo instead of an RGBA image, without rembg to cut it out
    monkeypatch.setattr(common, "has_rembg", lambda: False)
    rgb = tmp_path / "photo.jpg"
    Image.open(EXAMPLE).convert("RGB").save(rgb)
    cfg = load_options(CONFIGS / "imagedream.yaml", tiny(models["imagedream"], out, input=str(rgb)))
    with pytest.raises(DreamGaussianError, match="no alpha channel.*rembg is not installed.*process.py"):
        run_stage1(cfg, progress=False)
    # the mvdream weights given to imagedream
    cfg = load_options(CONFIGS / "imagedream.yaml", tiny(models["text_mv"], out, input=str(EXAMPLE)))
    with pytest.raises(FileNotFoundError, match="looks like an MVDream model"):
        run_stage1(cfg, progress=False)
    assert not out.exists() or not any(out.glob("corgi*"))


@pytest.mark.slow
def test_command_lines_as_users_run_them(models, tmp_path):
    """main.py then main2.py with configs/text_mv_hash3d.yaml from dreamgaussian-hash3d/, as in the README."""
    # this checkout's package, whichever one is installed
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=path)
    args = ["--config", "configs/text_mv_hash3d.yaml", *tiny(models["text_mv"], tmp_path / "logs", iters=2, iters_refine=1)]
    for script, head in (("main.py", "stage 1 (Gaussians): 2 steps"), ("main2.py", "stage 2 (texture): 1 steps")):
        p = subprocess.run([sys.executable, script, *args], cwd=FRONT, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip().splitlines()[-1].startswith(head)
    assert (tmp_path / "logs" / "corgi_model.ply").is_file() and (tmp_path / "logs" / "corgi.obj").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["text", "text_mv", "imagedream"])
def test_both_stages_on_cuda(models, tmp_path, mode):
    """device=auto on a GPU (fp16 guidance, gsplat / nvdiffrast when installed), cache on."""
    from hash3d.systems.dreamgaussian.stage1 import run_stage1
    from hash3d.systems.dreamgaussian.stage2 import run_stage2

    extra = {"input": str(EXAMPLE)} if mode == "imagedream" else {}
    cfg = load_options(CONFIGS / f"{mode}_hash3d.yaml", tiny(models[mode], tmp_path / "logs", iters=20, ref_size=64, **extra))
    report = json.loads(run_stage1(cfg, progress=False).report.read_text())
    assert report["device"].startswith("cuda") and report["cache"]["hits"] > 0
    report2 = json.loads(run_stage2(cfg, progress=False).report.read_text())
    # the cost-aware policy (shipped) may skip requests on a GPU or probe them quietly: each of the 10 is one of three
    cache2 = report2["cache"]
    assert report2["device"].startswith("cuda") and cache2["tried"] + cache2["skipped"] + cache2["probed"] == 10


def test_wrong_weights_are_one_line_through_the_command_line(models, tmp_path, capsys, monkeypatch):
    """Weights of the other multi-view family: a user error (exit 2, one line), not a traceback."""
    from hash3d.systems.dreamgaussian.cli import main_stage1

    monkeypatch.chdir(FRONT)
    args = ["--config", "configs/text_mv.yaml", *tiny(models["imagedream"], tmp_path / "logs")]
    assert main_stage1(args, "main.py") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("main.py: error: the folder") and "holds an ImageDream UNet" in err[-1]
