"""gaussian-dreamer-hash3d end to end on tiny written models (Stable Diffusion and Shap-E): every init kind with the
cache on and off, the .ply outputs, the video, exact resume with densification, export, bad input, the twin configs."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh

from hash3d.config import load_config, to_data, twin_differences
from hash3d.diffusion.schedule import schedule_value
from hash3d.launch import main
from hash3d.scene.gaussian_ply import read_point_cloud_ply, write_point_cloud_ply
from hash3d.scene.gaussians import GaussianLRConfig, GaussianModel
from hash3d.scene.gaussian_density import GaussianDensifyStrategy
from hash3d.scene.shape_prior import grow_points, shap_e_to_world
from hash3d.systems.gaussiandreamer import NEGATIVE_PROMPT
from hash3d.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
FRONT = REPO / "gaussian-dreamer-hash3d"
CONFIGS = FRONT / "configs"
PLAIN, HASHED = CONFIGS / "gaussiandreamer-sd.yaml", CONFIGS / "gaussiandreamer-sd_hash3d.yaml"

# hits need repeated cells: every call tries the cache and the cells are wide
HIT_FRIENDLY = (
    "system.guidance.cache.policy.probability=1.0",
    "system.guidance.cache.adaptive=false",
    "system.guidance.cache.cell_size=[180,360,10,1000]",
)


@pytest.fixture(autouse=True)
def own_log_handlers():
    """The launcher installs its stderr log handler once per process, on the stderr of the moment; drop the ones
    made here so later tests (which read stderr with capsys) get their own."""
    logger = logging.getLogger("hash3d")
    before = list(logger.handlers)
    yield
    for handler in [h for h in logger.handlers if h not in before]:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def shap_e_model(tmp_path_factory) -> str:
    from hash3d.testing.shap_e import write_shap_e

    return str(write_shap_e(tmp_path_factory.mktemp("models") / "shap-e-tiny"))


@pytest.fixture(scope="module")
def cloud_ply(tmp_path_factory) -> Path:
    """A small coloured point cloud (a ring of points on a sphere of radius 0.5)."""
    rng = np.random.default_rng(3)
    p = rng.normal(size=(150, 3))
    p = 0.5 * p / np.linalg.norm(p, axis=1, keepdims=True)
    path = tmp_path_factory.mktemp("clouds") / "cloud.ply"
    write_point_cloud_ply(path, p, 0.5 + 0.5 * p)
    return path


def overrides(out: Path, sd: str, shap_e: str, steps: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        f"exp_root_dir={out}",
        "use_timestamp=false",
        'system.prompt_processor.prompt="a fox playing a violin"',
        f"system.guidance.pretrained_model_name_or_path={sd}",
        "system.guidance.dtype=fp32",
        f"system.init.shap_e.pretrained_model_name_or_path={shap_e}",
        "system.init.shap_e.mesh_grid_size=16",
        "system.init.shap_e.grow_samples=20000",
        "system.init.sphere.num_points=200",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=0",
        "trainer.enable_progress_bar=false",
        f"checkpoint.every_n_train_steps={steps}",
        "data.batch_size=2",
        "data.height=32",
        "data.width=32",
        "data.eval_height=32",
        "data.eval_width=32",
        "data.n_test_views=3",
        *extra,
    ]


def train(config: Path, out: Path, *args: str) -> Path:
    assert main(["--config", str(config), "--train", *args]) == 0
    (trial,) = sorted(p for p in out.glob("*/*") if p.is_dir())
    return trial


def metrics(trial: Path) -> list[dict[str, str]]:
    with open(trial / "csv_logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ configs


def test_twin_configs_differ_only_in_the_cache():
    assert twin_differences(PLAIN, HASHED) == []
    plain, _ = load_config(PLAIN, [])
    hashed, _ = load_config(HASHED, [])
    assert not plain.system.guidance.cache.enabled and hashed.system.guidance.cache.enabled
    assert hashed.name == "gaussiandreamer-sd-hash3d"


def test_defaults_follow_gaussiandreamer():
    cfg, _ = load_config(PLAIN, [])
    s, d, g = cfg.system, cfg.data, cfg.system.guidance
    assert cfg.trainer.max_steps == 1200 and cfg.trainer.val_check_interval == 100
    assert cfg.checkpoint.every_n_train_steps == 1200 and cfg.checkpoint.save_last
    assert (d.batch_size, d.height, d.width, d.eval_height, d.eval_width) == (4, 1024, 1024, 1024, 1024)
    assert tuple(d.camera_distance_range) == (1.5, 4.0) and d.eval_camera_distance == 4.0
    assert tuple(d.elevation_range) == (-10.0, 60.0) and tuple(d.fovy_range) == (40.0, 70.0)
    assert (d.camera_perturb, d.center_perturb, d.up_perturb) == (0.0, 0.0, 0.0)
    assert g.pretrained_model_name_or_path == "stabilityai/stable-diffusion-2-1-base" and g.guidance_scale == 100.0
    assert schedule_value(g.min_step_percent, 0) == 0.02
    assert schedule_value(g.max_step_percent, 500) == 0.98 and schedule_value(g.max_step_percent, 501) == 0.55
    assert schedule_value(g.grad_clip, 0) == 1.5 and schedule_value(g.grad_clip, 1000) == 2.0
    assert g.loss_reduction == "batch_mean" and g.weighting == "sds"
    assert s.prompt_processor.negative_prompt == NEGATIVE_PROMPT
    assert to_data(s.lr) == to_data(GaussianLRConfig.gaussiandreamer())
    assert to_data(s.densify) == to_data(GaussianDensifyStrategy.gaussiandreamer())
    # a partial block keeps GaussianDreamer's values for the keys it leaves out
    partial, _ = load_config(PLAIN, ["system.lr={feature_lr: 0.02}", "system.densify={min_opacity: 0.1}"])
    assert partial.system.lr.position_lr_init == 0.00005 and partial.system.lr.feature_lr == 0.02
    assert partial.system.densify.grad_threshold == 0.0002 and partial.system.densify.min_opacity == 0.1
    assert tuple(s.background_color) == (0.0, 0.0, 0.0) and s.init.kind == "shap_e"
    sh = s.init.shap_e
    assert (sh.guidance_scale, sh.num_inference_steps, sh.grow_samples, sh.grow_radius, sh.scale) == (
        15.0, 64, 1_000_000, 0.01, 1.6)  # fmt: skip


# ------------------------------------------------------------------------------------------------ pieces


def test_grow_points_keeps_noisy_neighbours_of_the_vertices():
    rng = np.random.default_rng(0)
    verts = rng.uniform(-1, 1, size=(50, 3)).astype(np.float32)
    colors = rng.uniform(0, 0.5, size=(50, 3)).astype(np.float32)
    points, grown_colors = grow_points(verts, colors, 200_000, 0.05, 0.2, np.random.default_rng(1))
    n_new = len(points) - len(verts)
    assert n_new > 50 and np.allclose(points[n_new:], verts) and np.allclose(grown_colors[n_new:], colors)
    d = np.linalg.norm(points[:n_new, None] - verts[None], axis=-1)
    nearest = d.argmin(1)
    assert (d.min(1) < 0.05).all()
    offset = grown_colors[:n_new] - colors[nearest]
    assert (offset >= 0).all() and (offset < 0.2).all() and offset.max() > 0.15  # positive-only, not clipped


def test_shap_e_front_faces_the_threestudio_front_view():
    # Shap-E's front (-y) must face +x, threestudio's azimuth-0 camera; z stays up
    assert np.allclose(shap_e_to_world(np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])), [[1, 0, 0], [0, 0, 1]])


@pytest.mark.slow
def test_tiny_shap_e_decodes_a_closed_coloured_surface(shap_e_model):
    from diffusers import ShapEPipeline

    pipe = ShapEPipeline.from_pretrained(shap_e_model)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    out = pipe("a chair", num_inference_steps=4, guidance_scale=15.0, generator=generator, output_type="mesh")
    mesh = out.images[0]
    radius = mesh.verts.norm(dim=-1)
    assert len(mesh.faces) > 100 and (radius - 0.45).abs().max() < 0.1
    assert set(mesh.vertex_channels) == {"R", "G", "B"} and float(mesh.vertex_channels["R"].std()) > 0.01
    # the computed marching-cubes tables close every surface, facing outwards, whatever the field
    decoder = pipe.shap_e_renderer.mesh_decoder
    field = torch.randn(12, 12, 12, generator=generator)
    field[[0, -1]], field[:, [0, -1]], field[:, :, [0, -1]] = -1.0, -1.0, -1.0
    noisy = decoder(field, torch.full((3,), -1.0), torch.full((3,), 2.0))
    for m in (mesh, noisy):
        surface = trimesh.Trimesh(m.verts.numpy(), m.faces.numpy(), process=False)
        assert surface.is_watertight and surface.is_winding_consistent and surface.volume > 0


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize(
    "kind,cache",
    [("shap_e", "on"), ("shap_e", "off"), ("ply", "on"), ("ply", "off"), ("sphere", "on"), ("sphere", "off")],
)
@pytest.mark.slow
def test_train_from_each_init_kind(written_models, shap_e_model, cloud_ply, tmp_path, kind, cache):
    extra = [f"system.init.kind={kind}", f"system.init.ply.path={cloud_ply}", *(HIT_FRIENDLY if cache == "on" else ())]
    config = HASHED if cache == "on" else PLAIN
    trial = train(config, tmp_path, *overrides(tmp_path, written_models["sd"], shap_e_model, 3, tuple(extra)))
    assert trial.parent.name == ("gaussiandreamer-sd-hash3d" if cache == "on" else "gaussiandreamer-sd")
    assert trial.name == "a_fox_playing_a_violin"
    save = trial / "save"

    frames = imageio.mimread(save / "it3-test.mp4")
    assert len(frames) == 3 and frames[0].shape[:2] == (32, 32)
    assert len(list((save / "it3-test").glob("*.png"))) == 3

    shape_points, shape_colors = read_point_cloud_ply(save / "shape.ply")
    expected = {"ply": 150, "sphere": 200}.get(kind)
    assert shape_colors is not None and len(shape_points) == (expected or len(shape_points)) and len(shape_points) > 100
    if kind == "ply":
        source, _ = read_point_cloud_ply(cloud_ply)
        assert np.allclose(shape_points, source, atol=1e-6)

    # last_3dgs.ply is the checkpoint's Gaussians, every attribute
    gaussians = GaussianModel.from_ply(save / "last_3dgs.ply")
    state = load_checkpoint(trial / "ckpts" / "last.ckpt")["state_dict"]
    assert gaussians.num_gaussians == state["gaussians.params.means"].shape[0] == len(shape_points)
    for name, value in gaussians.params.items():
        assert torch.equal(value, state[f"gaussians.params.{name}"].float()), name
    color_points, _ = read_point_cloud_ply(save / "it3-test-color.ply")
    assert len(color_points) == gaussians.num_gaussians

    rows = metrics(trial)
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and np.isfinite(float(rows[-1]["train/loss"]))
    if cache == "on":
        assert float(rows[-1]["cache/hits"]) > 0 and float(rows[-1]["cache/unet_calls_saved"]) > 0
    else:
        assert not rows[-1].get("cache/hits")

    if kind == "sphere" and cache == "off":  # --export and --test from the checkpoint (no Shap-E, no guidance needed)
        parsed, last = trial / "configs" / "parsed.yaml", trial / "ckpts" / "last.ckpt"
        assert main(["--config", str(parsed), "--export", f"resume={last}"]) == 0
        exported = GaussianModel.from_ply(save / "it3-export" / "last_3dgs.ply")
        assert exported.num_gaussians == gaussians.num_gaussians


DENSIFY_EVERY_STEP = (
    "system.densify.grad_threshold=0.0",
    "system.densify.refine_start=1",
    "system.densify.refine_every=2",
    "system.densify.max_gaussians=600",
    "system.init.sphere.num_points=150",
    "system.init.kind=sphere",
    "trainer.test_after_fit=false",
)


@pytest.mark.parametrize("cache", ["off", "on"])
@pytest.mark.slow
def test_resume_restores_a_changed_gaussian_count_exactly(written_models, shap_e_model, tmp_path, cache):
    """Densification grows the set at steps 2 and 4; a run stopped at 3 and resumed to 5 ends like one run of 5.
    With the cache on, the checkpoint holds its table and policy stream, so hits fall on the same steps."""
    config = HASHED if cache == "on" else PLAIN
    sometimes = HIT_FRIENDLY[1:] + ("system.guidance.cache.policy.probability=0.6",)  # the policy's stream is used
    extra = DENSIFY_EVERY_STEP + (sometimes if cache == "on" else ())
    args = overrides(tmp_path / "full", written_models["sd"], shap_e_model, 5, extra)
    full = train(config, tmp_path / "full", *args)
    part_args = overrides(tmp_path / "part", written_models["sd"], shap_e_model, 3, extra)
    part = train(config, tmp_path / "part", *part_args)
    counts = [int(float(r["train/num_gaussians"])) for r in metrics(full)]
    assert counts[0] == 150 and counts[-1] > counts[0]  # the count changed before the resume point
    status = main([
        "--config", str(part / "configs" / "parsed.yaml"), "--train", f"resume={part / 'ckpts' / 'last.ckpt'}",
        "trainer.max_steps=5", "checkpoint.every_n_train_steps=5",
    ])  # fmt: skip
    assert status == 0
    assert [int(r["step"]) for r in metrics(part)] == [1, 2, 3, 4, 5]
    a = GaussianModel.from_ply(full / "save" / "last_3dgs.ply")
    b = GaussianModel.from_ply(part / "save" / "last_3dgs.ply")
    assert a.num_gaussians == b.num_gaussians == counts[-1]
    for name in a.params:
        torch.testing.assert_close(a.params[name], b.params[name], rtol=1e-5, atol=1e-6, msg=name)
    assert metrics(full)[-1]["train/loss"] == metrics(part)[-1]["train/loss"]
    if cache == "on":
        columns = ("cache/hits", "cache/inserts", "cache/entries", "cache/calls", "cache/tried")
        assert [metrics(full)[-1][c] for c in columns] == [metrics(part)[-1][c] for c in columns]
        assert float(metrics(full)[-1]["cache/hits"]) > 0


def test_outputs_land_in_the_trial_save_folder(written_models, shap_e_model, tmp_path, monkeypatch):
    """The loop hands the system its trial's save/ folder (System.set_save_dir) before every stage: shape.ply,
    last_3dgs.ply and it{N}-test-color.ply land there whatever the working folder, for --train and for --test
    from a checkpoint (named by the checkpoint's step); a system used outside the loop writes no files."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "out"
    extra = ("system.init.kind=sphere", "trainer.test_after_fit=false")
    trial = train(PLAIN, out, *overrides(out, written_models["sd"], shap_e_model, 2, extra))
    save = trial / "save"
    assert {p.name for p in save.glob("*.ply")} == {"shape.ply", "last_3dgs.ply"}
    parsed, last = trial / "configs" / "parsed.yaml", trial / "ckpts" / "last.ckpt"
    assert main(["--config", str(parsed), "--test", f"resume={last}"]) == 0
    assert (save / "it2-test-color.ply").is_file() and (save / "it2-test.mp4").is_file()
    assert not list(elsewhere.rglob("*")) and {p.name for p in out.iterdir()} == {trial.parent.name}

    from hash3d.config import build

    cfg, _ = load_config(parsed, [])
    system = build("system", cfg.system_type, cfg.system, device=torch.device("cpu"))
    assert system.save_dir is None
    system.initialise()
    system.on_test_start(None)
    system.on_fit_end()
    assert not list(elsewhere.rglob("*"))


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_inputs_fail_before_writing(written_models, shap_e_model, tmp_path, capsys):
    base = overrides(tmp_path / "out", written_models["sd"], shap_e_model)
    cfg = str(HASHED)

    def fails(*extra: str) -> str:
        assert main(["--config", cfg, "--train", *base, *extra]) == 2
        return capsys.readouterr().err

    assert "prompt is empty" in fails('system.prompt_processor.prompt=""')
    err = fails("system.init.kind=cube")
    assert "system.init.kind" in err and "'sphere'" in err
    missing = tmp_path / "nowhere.ply"
    assert "not found" in fails("system.init.kind=ply", f"system.init.ply.path={missing}")
    broken = tmp_path / "broken.ply"
    broken.write_text("this is not a ply file\n")
    err = fails("system.init.kind=ply", f"system.init.ply.path={broken}")
    assert "cannot read" in err and "broken.ply" in err
    assert "ply.path" in fails("system.init.kind=ply")  # no path given
    layout = tmp_path / "not-shap-e"
    layout.mkdir()
    assert "ShapEPipeline layout" in fails(f"system.init.shap_e.pretrained_model_name_or_path={layout}")
    assert not (tmp_path / "out").exists()  # no trial folder for any of them


@pytest.mark.slow
def test_headline_command_runs_as_typed(written_models, shap_e_model, tmp_path):
    """The README's command from the front-end folder in a fresh process (shrunk to 1 tiny step)."""
    cmd = [sys.executable, "launch.py", "--config", "configs/gaussiandreamer-sd_hash3d.yaml", "--train", "--gpu", "0",
           'system.prompt_processor.prompt="a fox playing a violin"',
           *overrides(tmp_path, written_models["sd"], shap_e_model, 1)]  # fmt: skip
    done = subprocess.run(cmd, cwd=FRONT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    save = tmp_path / "gaussiandreamer-sd-hash3d" / "a_fox_playing_a_violin" / "save"
    assert (save / "it1-test.mp4").is_file() and (save / "last_3dgs.ply").is_file() and (save / "shape.ply").is_file()
    assert "running on the CPU" in done.stderr


def test_offline_shap_e_message_names_the_cause_not_a_stacktrace(monkeypatch):
    """diffusers ends its offline error with "see the root cause in the stacktrace above", which a one-line error
    does not show: the message names the cause instead."""
    import diffusers

    from hash3d.scene.shape_prior import ShapEPriorConfig, ShapePriorError, load_shap_e

    def offline(*args, **kwargs):
        try:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        except ConnectionError as cause:
            raise OSError(
                "Cannot load model openai/shap-e: the model is not fully cached locally (no file) and an error occurred "
                "while trying to fetch metadata from the Hub. Please check out the root cause in the stacktrace above."
            ) from cause

    monkeypatch.setattr(diffusers.ShapEPipeline, "from_pretrained", offline)
    with pytest.raises(ShapePriorError) as err:
        load_shap_e(ShapEPriorConfig(), torch.device("cpu"))
    text = str(err.value)
    assert "stacktrace" not in text and "above" not in text
    assert "fetch metadata from the Hub" in text and "caused by ConnectionError: Failed to resolve 'huggingface.co'" in text
    assert "system.init.kind=sphere" in text


def test_a_batch_worker_keeps_the_shap_e_model_loaded(shap_e_model):
    """Inside `keep_loaded` (a Ray worker running item after item) Shap-E is read from disk once, then copied."""
    from hash3d.diffusion.resident import ResidentModels, keep_loaded
    from hash3d.scene.shape_prior import ShapEPriorConfig, load_shap_e

    cfg = ShapEPriorConfig(pretrained_model_name_or_path=shap_e_model, local_files_only=True)
    models = ResidentModels()
    with keep_loaded(models):
        first = load_shap_e(cfg, torch.device("cpu"))
        second = load_shap_e(cfg, torch.device("cpu"))
    assert (models.loads, models.reuses) == (1, 1)
    assert first.prior is not second.prior
    a, b = first.prior.state_dict(), second.prior.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(load_shap_e(cfg, torch.device("cpu")), type(first)) and models.loads == 1  # outside: from disk
