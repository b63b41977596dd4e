"""threestudio-3dgs systems in the launcher on tiny written models: densification counts against a hand-computed
case, the max_num cap, exponential learning rates, backgrounds, train / resume exactly / export, the twin configs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh

from hash3d.config import load_config, twin_differences
from hash3d.launch import main
from hash3d.render.gaussian_raster import RasterMeta
from hash3d.scene.gaussian_ply import read_ply
from hash3d.scene.gaussian_splatting import GaussianSplattingConfig
from hash3d.scene.gaussians import GaussianModel
from hash3d.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
FRONT = REPO / "threestudio-hash3d"
CONFIGS = FRONT / "configs"


def metrics(trial: Path) -> list[dict[str, str]]:
    with open(trial / "csv_logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ densification by hand


def _model(scales, opacities) -> GaussianModel:
    n = len(scales)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    return GaussianModel(
        torch.arange(n * 3, dtype=torch.float32).reshape(n, 3), torch.zeros(n, 1, 3), torch.zeros(n, 0, 3),
        torch.logit(torch.tensor(opacities)), torch.log(torch.tensor(scales))[:, None].repeat(1, 3), quats,
    )  # fmt: skip


def _meta(grads, visible) -> RasterMeta:
    """2 views of 2x2 pixels (pixel gradient x (W/2, H/2) = the NDC gradient itself)."""
    means2d = torch.zeros(2, len(grads[0]), 2, requires_grad=True)
    means2d.grad = torch.tensor([[[g, 0.0] for g in view] for view in grads])
    radii = torch.tensor(visible, dtype=torch.int32)[..., None].repeat(1, 1, 2) * 3
    z = torch.zeros(2, len(grads[0]))
    return RasterMeta(torch.zeros(2, 2, 2, 1), means2d, radii, z, torch.zeros(2, len(grads[0]), 3), 2, 2, "torch")


def test_densification_counts_match_a_hand_computed_case():
    """threshold 0.01 on the mean gradient over the views that saw a Gaussian; clone when the norm of the scales
    <= 0.02 (split_thresh; 0.01 on each axis: 0.017), else split into 2; prune opacity < 0.005; all at step 100 (interval 100)."""
    cfg = GaussianSplattingConfig(densification_interval=100, prune_interval=100, densify_until_iter=1000,
                                  prune_until_iter=1000)  # fmt: skip
    strategy = cfg.densify_strategy()
    model = _model(scales=[0.01, 0.05, 0.01, 0.01, 0.01, 0.05], opacities=[0.5, 0.5, 0.5, 0.001, 0.5, 0.5])
    grads = [[0.02, 0.03, 0.015, 0.0, 0.012, 0.011],
             [0.02, 0.0, 0.001, 0.0, 0.5, 0.008]]  # fmt: skip
    visible = [[1, 1, 1, 1, 1, 1],
               [1, 0, 1, 1, 0, 1]]  # fmt: skip
    # mean over seeing views: g0 0.02 clone | g1 0.03 split (view 1 did not see it) | g2 0.008 keep |
    # g3 0 pruned (opacity) | g4 0.012 clone (its view-1 gradient is not counted) | g5 0.0095 keep
    optimizer = torch.optim.Adam([{"params": [p], "name": k} for k, p in model.params.items()], lr=0.01)
    state = strategy.initialize_state()
    before = model.params["means"].detach().clone()
    report = strategy.step_post_backward(model.params, optimizer, state, 99, _meta(grads, visible))
    assert not report.refined and report.num_gaussians == 6  # statistics only (99 is not a densification step)
    report = strategy.step_post_backward(model.params, optimizer, state, 100, None)
    assert (report.cloned, report.split, report.pruned) == (2, 1, 1)
    assert model.num_gaussians == 6 + 2 + 2 - 1 - 1
    means, scales = model.params["means"].detach(), model.scales.detach()
    kept = [0, 2, 4, 5]  # the originals left, in order, then 2 clones, then 2 children of g1
    assert torch.equal(means[:4], before[kept]) and torch.equal(means[4:6], before[[0, 4]])
    assert torch.allclose(scales[6:], torch.full((2, 3), 0.05 / 1.6))
    assert (means[6:] - before[1]).abs().max() < 0.05 / 2 * 6  # drawn from N(0, scale / 2)
    assert state.grad2d.shape == (8,) and float(state.grad2d.abs().sum()) == 0.0  # statistics restart


def test_max_num_keeps_a_random_subset():
    cfg = GaussianSplattingConfig(max_num=10)
    strategy = cfg.densify_strategy()
    model = _model(scales=[0.01] * 110, opacities=[0.5] * 110)
    optimizer = torch.optim.Adam([{"params": [p], "name": k} for k, p in model.params.items()], lr=0.01)
    report = strategy.step_post_backward(model.params, optimizer, strategy.initialize_state(), 5, None,
                                         torch.Generator().manual_seed(0))  # fmt: skip
    assert model.num_gaussians == 10 and report.pruned == 100
    assert all(v.shape[0] == 10 for s in optimizer.state.values() for v in s.values() if v.dim() > 0)
    model = _model(scales=[0.01] * 109, opacities=[0.5] * 109)  # below max_num + 100: untouched
    strategy.step_post_backward(model.params, None, strategy.initialize_state(), 5, None)
    assert model.num_gaussians == 109


def test_opacity_reset_scales_by_0_9_at_prune_steps_only():
    """threestudio-3dgs: at a prune step (0 < s < 13, s % 2 == 0) that is a multiple of opacity_reset_interval (3),
    after the pruning, opacity <- 0.9 * opacity and Adam's moments of the opacities restart at zero (its step count
    and the other groups' moments are kept). Other multiples of 3 (9: no prune step; 15: past prune_until_iter) and
    the other prune steps leave the opacities alone."""
    cfg = GaussianSplattingConfig(opacity_reset_interval=3, prune_interval=2, prune_from_iter=0, prune_until_iter=13,
                                  densify_until_iter=0, min_opac_prune=0.0)  # fmt: skip
    strategy = cfg.densify_strategy()
    model = _model(scales=[0.01, 0.05, 0.01], opacities=[0.5, 0.2, 0.9])
    optimizer = torch.optim.Adam([{"params": [p], "name": k} for k, p in model.params.items()], lr=0.0)
    state = strategy.initialize_state()
    want = torch.tensor([0.5, 0.2, 0.9])
    resets = []
    for step in range(1, 17):
        for p in model.params.values():
            p.grad = torch.ones_like(p)
        optimizer.step()  # rate 0: the moments grow, the values stay
        report = strategy.step_post_backward(model.params, optimizer, state, step, None)
        opacity_state = optimizer.state[model.params["opacities"]]
        if report.opacity_reset:
            resets.append(step)
            want = want * 0.9
            assert float(opacity_state["exp_avg"].abs().sum()) == 0.0 and float(opacity_state["exp_avg_sq"].sum()) == 0.0
            assert float(optimizer.state[model.params["means"]]["exp_avg"].min()) > 0.0
        else:
            assert float(opacity_state["exp_avg"].min()) > 0.0
        assert float(opacity_state["step"]) == step
        assert torch.allclose(model.opacities, want, rtol=1e-6, atol=0), step
    assert resets == [6, 12] and model.num_gaussians == 3


def test_isotropic_gaussians_stay_isotropic_through_clone_and_split(tmp_path):
    """sphere: one log scale per Gaussian; a clone copies it, a split gives 2 children of scale / 1.6 whose positions
    are drawn in 3D; clone or split by the norm of the three scales, as upstream (0.015: norm 0.026 > 0.02, split);
    rendering reads 3 equal scales; the .ply holds 3 equal scale columns and loads back."""
    cfg = GaussianSplattingConfig(densification_interval=100, prune_interval=100, densify_until_iter=1000,
                                  prune_until_iter=1000, sphere=True)  # fmt: skip
    strategy = cfg.densify_strategy()
    model = _model(scales=[0.01, 0.05, 0.015], opacities=[0.5, 0.5, 0.5]).to_isotropic()
    assert model.isotropic and model.params["scales"].shape == (3, 1)
    optimizer = torch.optim.Adam([{"params": [p], "name": k} for k, p in model.params.items()], lr=0.01)
    state = strategy.initialize_state()
    before = model.params["means"].detach().clone()
    strategy.step_post_backward(model.params, optimizer, state, 99, _meta([[0.02] * 3, [0.02] * 3], [[1] * 3] * 2))
    report = strategy.step_post_backward(model.params, optimizer, state, 100, None, torch.Generator().manual_seed(0))
    assert (report.cloned, report.split) == (1, 2) and model.num_gaussians == 3 + 1 + 4 - 2
    raw = model.params["scales"].detach()
    assert raw.shape == (6, 1) and all(s["exp_avg"].shape[0] == 6 for s in optimizer.state.values())
    want = torch.tensor([0.01, 0.01, 0.05 / 1.6, 0.015 / 1.6, 0.05 / 1.6, 0.015 / 1.6])  # g0, its clone, 2 x (g1, g2)
    assert torch.allclose(torch.exp(raw[:, 0]), want, rtol=1e-5)
    assert torch.equal(model.scales, torch.exp(raw).repeat(1, 3))
    offsets = model.params["means"].detach()[[2, 4]] - before[1]
    assert (offsets[:, 0] != offsets[:, 1]).all() and (offsets[:, 1] != offsets[:, 2]).all()  # 3D samples

    model.save_ply(tmp_path / "iso.ply")
    v = read_ply(tmp_path / "iso.ply")["vertex"].properties
    assert all(np.array_equal(v["scale_0"], v[f"scale_{i}"]) for i in (1, 2))
    assert np.array_equal(v["scale_0"], raw[:, 0].numpy())
    loaded = GaussianModel.from_ply(tmp_path / "iso.ply")  # a viewer's reading: anisotropic layout, equal columns
    assert torch.equal(loaded.scales, model.scales.detach()) and torch.equal(loaded.to_isotropic().params["scales"], raw)


def test_learning_rates_follow_exponential_schedules():
    cfg = GaussianSplattingConfig(position_lr=(0, 0.001, 0.00002, 1000), scale_lr=(0, 0.01, 0.001, 1000))
    assert cfg.learning_rates(0)["means"] == pytest.approx(0.001)
    assert cfg.learning_rates(500)["means"] == pytest.approx(math.sqrt(0.001 * 0.00002))
    assert cfg.learning_rates(5000)["means"] == pytest.approx(0.00002)
    assert cfg.learning_rates(500)["scales"] == 0.005  # scale_lr is read by nothing (as upstream)
    assert cfg.learning_rates(0)["shN"] == pytest.approx(0.01 / 20)


# ------------------------------------------------------------------------------------------ zero123 system

ZERO123 = "gaussian_splatting_zero123"


def zero123_overrides(model: str, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        f"trainer.max_steps={steps}", "trainer.val_check_interval=0", "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0", f"checkpoint.every_n_train_steps={steps}", "use_timestamp=false",
        f"exp_root_dir={out}", "data.height=32", "data.width=32", "data.resolution_milestones=[]",
        "data.random_camera.height=32", "data.random_camera.width=32", "data.random_camera.batch_size=2",
        "data.random_camera.eval_height=24", "data.random_camera.eval_width=24", "data.random_camera.n_test_views=2",
        f"system.guidance.pretrained_model_name_or_path={model}", "system.guidance.dtype=fp32",
        "system.geometry.init_num_pts=200", "system.geometry.densification_interval=2",
        "system.geometry.prune_interval=2", "system.geometry.densify_until_iter=100",
        "system.geometry.prune_until_iter=100", "system.geometry.densify_grad_threshold=0.0001",
        "system.exporter.resolution=32", "system.exporter.texture_size=64", *extra,
    ]  # fmt: skip


def run_zero123(config: str, model: str, out: Path, steps: int, *extra: str) -> Path:
    assert main(["--config", str(CONFIGS / config), "--train", *zero123_overrides(model, out, steps, *extra)]) == 0
    (trial,) = [p for p in out.glob("*/*") if p.is_dir()]
    return trial


@pytest.mark.parametrize("name", [ZERO123])
def test_twin_configs_differ_only_in_the_cache(name):
    assert twin_differences(CONFIGS / f"{name}.yaml", CONFIGS / f"{name}_hash3d.yaml") == []
    hashed, _ = load_config(CONFIGS / f"{name}_hash3d.yaml")
    assert hashed.system.guidance.cache.enabled


def test_zero123_backgrounds_white_in_training_black_at_evaluation():
    from hash3d.config import build

    cfg, _ = load_config(CONFIGS / f"{ZERO123}.yaml")
    system = build("system", cfg.system_type, cfg.system)
    assert torch.equal(system.background_color(3, training=True), torch.ones(3, 3))
    assert torch.equal(system.background_color(2, training=False), torch.zeros(2, 3))
    assert cfg.system.guidance.guidance_scale == 5.0 and cfg.trainer.max_steps == 1000


@pytest.mark.slow
def test_zero123_trains_resumes_exactly_and_exports(written_models, tmp_path, monkeypatch):
    monkeypatch.chdir(FRONT)  # ./load/images/dog1_rgba.png
    model = written_models["zero123"]
    hit_friendly = ("system.guidance.cache.policy.probability=1.0", "system.guidance.cache.adaptive=false",
                    "system.guidance.cache.cell_size=[180,360,10,1000]")  # fmt: skip
    full = run_zero123(f"{ZERO123}_hash3d.yaml", model, tmp_path / "full", 4, *hit_friendly)
    part = run_zero123(f"{ZERO123}_hash3d.yaml", model, tmp_path / "part", 2, *hit_friendly, "trainer.test_after_fit=false")
    assert main(["--config", str(part / "configs" / "parsed.yaml"), "--train", f"resume={part / 'ckpts' / 'last.ckpt'}",
                 "trainer.max_steps=4", "checkpoint.every_n_train_steps=4", "trainer.test_after_fit=false"]) == 0  # fmt: skip
    a, b = metrics(full), metrics(part)
    counts = [int(float(r["train/num_gaussians"])) for r in a]
    assert counts[0] == 200 and counts[-1] != counts[0]  # densification changed the count before the resume point
    for column in ("train/loss", "train/num_gaussians", "lr", "cache/hits"):
        assert [r[column] for r in a] == [r[column] for r in b], column
    assert float(a[-1]["cache/hits"]) > 0
    wa, wb = (load_checkpoint(t / "ckpts" / "last.ckpt")["state_dict"] for t in (full, part))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) if torch.is_tensor(wa[k]) else wa[k] == wb[k] for k in wa)

    frames = imageio.mimread(full / "save" / "it4-test.mp4")
    assert len(frames) == 2 and frames[0].shape[:2] == (24, 48)  # rgb | opacity
    assert frames[0][0, 0].max() < 8  # the evaluation background is black

    assert main(["--config", str(full / "configs" / "parsed.yaml"), "--export", f"resume={full / 'ckpts' / 'last.ckpt'}"]) == 0
    out = full / "save" / "it4-export"
    n = wa["gaussians.params.means"].shape[0]
    assert GaussianModel.from_ply(out / "model_3dgs.ply").num_gaussians == n
    assert len(trimesh.load(out / "model.obj", force="mesh").faces) > 0


@pytest.mark.slow
def test_zero123_sphere_with_opacity_reset_resumes_exactly_and_exports(written_models, tmp_path, monkeypatch, capsys):
    """sphere: true with densification and an opacity reset inside the run (prune steps 2, 4, ...; reset interval 2:
    the reset falls at step 2, after the resume point): the resumed run equals the uninterrupted one, every Gaussian
    keeps one scale, the exported .ply has 3 equal scale columns; a sphere checkpoint refuses sphere=false even when
    the config comparison is off."""
    monkeypatch.chdir(FRONT)
    model = written_models["zero123"]
    extra = ("system.geometry.sphere=true", "system.geometry.opacity_reset_interval=2", "trainer.test_after_fit=false")
    resets = lambda: [x for x in capsys.readouterr().err.splitlines() if "opacities reset" in x]  # noqa: E731
    full = run_zero123(f"{ZERO123}.yaml", model, tmp_path / "full", 4, *extra)
    assert resets() == ["[INFO] step 2: opacities reset (x0.9)"]
    part = run_zero123(f"{ZERO123}.yaml", model, tmp_path / "part", 2, *extra)
    assert resets() == []
    assert main(["--config", str(part / "configs" / "parsed.yaml"), "--train", f"resume={part / 'ckpts' / 'last.ckpt'}",
                 "trainer.max_steps=4", "checkpoint.every_n_train_steps=4"]) == 0  # fmt: skip
    assert resets() == ["[INFO] step 2: opacities reset (x0.9)"]
    a, b = metrics(full), metrics(part)
    counts = [int(float(r["train/num_gaussians"])) for r in a]
    assert counts[0] == 200 and len(set(counts)) > 1  # densification acted
    for column in ("train/loss", "train/num_gaussians", "lr"):
        assert [r[column] for r in a] == [r[column] for r in b], column
    ca, cb = (load_checkpoint(t / "ckpts" / "last.ckpt") for t in (full, part))
    wa, wb = ca["state_dict"], cb["state_dict"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) if torch.is_tensor(wa[k]) else wa[k] == wb[k] for k in wa)
    n = wa["gaussians.params.means"].shape[0]
    assert wa["gaussians.params.scales"].shape == (n, 1)

    assert main(["--config", str(full / "configs" / "parsed.yaml"), "--export", f"resume={full / 'ckpts' / 'last.ckpt'}"]) == 0
    v = read_ply(full / "save" / "it4-export" / "model_3dgs.ply")["vertex"].properties
    assert len(v["scale_0"]) == n and all(np.array_equal(v["scale_0"], v[f"scale_{i}"]) for i in (1, 2))
    assert np.array_equal(v["scale_0"], wa["gaussians.params.scales"][:, 0].numpy())

    capsys.readouterr()
    assert main(["--config", str(full / "configs" / "parsed.yaml"), "--export", f"resume={full / 'ckpts' / 'last.ckpt'}",
                 "system.geometry.sphere=false", "checkpoint.check_config=false"]) == 2  # past the config comparison
    assert "pass system.geometry.sphere=true" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ shading system

SHADING = "gaussian_splatting_shading"


def shading_overrides(model: str, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        f"trainer.max_steps={steps}", "trainer.val_check_interval=0", "trainer.enable_progress_bar=false",
        f"checkpoint.every_n_train_steps={steps}", "use_timestamp=false", f"exp_root_dir={out}",
        "data.height=32", "data.width=32", "data.batch_size=2", "data.eval_height=24", "data.eval_width=24",
        "data.n_test_views=2", f"system.guidance.pretrained_model_name_or_path={model}", "system.guidance.dtype=fp32",
        "system.geometry.init_num_pts=200", "system.geometry.densify_from_iter=0", "system.geometry.prune_from_iter=0",
        "system.geometry.densification_interval=2", "system.geometry.prune_interval=2",
        "system.geometry.densify_until_iter=100", "system.geometry.prune_until_iter=100",
        "system.geometry.densify_grad_threshold=1e-12", "system.material.ambient_only_steps=1",
        "system.exporter.resolution=32", "system.exporter.texture_size=64", *extra,
    ]  # fmt: skip


def run_shading(config: str, model: str, out: Path, steps: int, *extra: str) -> Path:
    assert main(["--config", str(CONFIGS / config), "--train", *shading_overrides(model, out, steps, *extra)]) == 0
    (trial,) = [p for p in out.glob("*/*") if p.is_dir()]
    return trial


def test_shading_twins_and_scale_lr_comment():
    assert twin_differences(CONFIGS / f"{SHADING}.yaml", CONFIGS / f"{SHADING}_hash3d.yaml") == []
    cfg, _ = load_config(CONFIGS / f"{SHADING}_hash3d.yaml")
    assert cfg.system.guidance.cache.enabled and "unfocused" in cfg.system.prompt_processor.negative_prompt
    line = next(x for x in (CONFIGS / f"{SHADING}.yaml").read_text().splitlines() if "scale_lr:" in x)
    assert "scaling_lr" in line  # the comment names the key that acts


def test_black_white_background_augmentation_draws_flat_views():
    from hash3d.render.env_map_aug import AugmentedEnvironmentMapBackground, AugmentedEnvironmentMapConfig

    bg = AugmentedEnvironmentMapBackground(AugmentedEnvironmentMapConfig(random_aug=True, random_aug_prob=1.0))
    dirs = torch.randn(16, 4, 4, 3)
    out = bg.train()(dirs)
    flat = out.reshape(16, -1)
    assert set(flat.unique().tolist()) == {0.0, 1.0}  # every view is pure black or pure white, both drawn
    assert (flat.min(1).values == flat.max(1).values).all()
    assert not torch.equal(bg.eval()(dirs), out)  # evaluation shows the environment map


def test_shading_normal_of_a_rendered_plane_is_its_geometric_normal():
    """Flat Gaussians tiling a tilted plane through the origin, seen head-on-ish: the depth-derived shading normal
    of the covered pixels equals the plane's normal (facing the camera)."""
    from hash3d.config import build
    from hash3d.data.batches import CameraBatch
    from hash3d.data.cameras import orbit_c2w
    from hash3d.splatting import quat_to_rotmat

    cfg, _ = load_config(CONFIGS / f"{SHADING}.yaml", ["system.renderer.rasterizer=torch"])
    system = build("system", cfg.system_type, cfg.system)
    n = torch.nn.functional.normalize(torch.tensor([1.0, 0.3, -0.2]), dim=0)
    axis = torch.linalg.cross(torch.tensor([1.0, 0.0, 0.0]), n)  # rotate the Gaussians' x axis onto n
    angle = torch.acos(n[0])
    quat = torch.cat([torch.cos(angle / 2)[None], torch.sin(angle / 2) * axis / axis.norm()])
    rot = quat_to_rotmat(quat)
    u, v = torch.meshgrid(torch.linspace(-1, 1, 41), torch.linspace(-1, 1, 41), indexing="ij")
    means = u.reshape(-1, 1) * rot[:, 1] + v.reshape(-1, 1) * rot[:, 2]
    N = means.shape[0]
    model = GaussianModel(
        means, torch.zeros(N, 1, 3), torch.zeros(N, 0, 3), torch.full((N,), 6.0),
        torch.log(torch.tensor([1e-3, 0.06, 0.06])).repeat(N, 1), quat.repeat(N, 1),
    )  # fmt: skip
    system.gaussians, system.initialised = model, True
    c2w = orbit_c2w(torch.tensor([5.0]), torch.tensor([10.0]), torch.tensor([3.0]))
    cams = CameraBatch(c2w, torch.tensor([5.0]), torch.tensor([10.0]), torch.tensor([3.0]), torch.tensor([40.0]),
                       c2w[:, :3, 3], torch.zeros(1, 3), 32, 32)  # fmt: skip
    out = system.render_shaded(cams, system.shading(cams, training=False))
    inner = out.alpha[0, 4:-4, 4:-4, 0] > 0.99
    assert inner.sum() > 300  # the plane covers the middle of the image
    normals = out.normal[0, 4:-4, 4:-4][inner]
    assert (normals @ n).min() > 0.999


@pytest.mark.slow
def test_shading_trains_resumes_exactly_exports_and_densifies_from_sds_only(written_models, tmp_path):
    model = written_models["sd"]
    full = run_shading(f"{SHADING}_hash3d.yaml", model, tmp_path / "full", 4)
    part = run_shading(f"{SHADING}_hash3d.yaml", model, tmp_path / "part", 2, "trainer.test_after_fit=false")
    assert main(["--config", str(part / "configs" / "parsed.yaml"), "--train", f"resume={part / 'ckpts' / 'last.ckpt'}",
                 "trainer.max_steps=4", "checkpoint.every_n_train_steps=4", "trainer.test_after_fit=false"]) == 0  # fmt: skip
    a, b = metrics(full), metrics(part)
    counts = [int(float(r["train/num_gaussians"])) for r in a]
    assert counts[0] == 200 and counts[-1] > counts[0]
    for column in ("train/loss", "train/loss_tv", "train/num_gaussians", "lr"):
        assert [r[column] for r in a] == [r[column] for r in b], column
    wa, wb = (load_checkpoint(t / "ckpts" / "last.ckpt")["state_dict"] for t in (full, part))
    assert wa.keys() == wb.keys() and any(k.startswith("background.") for k in wa)
    assert all(torch.equal(wa[k], wb[k]) if torch.is_tensor(wa[k]) else wa[k] == wb[k] for k in wa)
    frames = imageio.mimread(full / "save" / "it4-test.mp4")
    assert len(frames) == 2 and frames[0].shape[:2] == (24, 72)  # rgb | normal | opacity

    assert main(["--config", str(full / "configs" / "parsed.yaml"), "--export", f"resume={full / 'ckpts' / 'last.ckpt'}"]) == 0
    out = full / "save" / "it4-export"
    assert GaussianModel.from_ply(out / "model_3dgs.ply").num_gaussians == wa["gaussians.params.means"].shape[0]
    assert (out / "model.obj").is_file()

    # without SDS the regularisers still move the projected centres, but the statistics see no gradient: no growth
    still = run_shading(SHADING + ".yaml", model, tmp_path / "nosds", 3, "system.loss.lambda_sds=0",
                        "trainer.test_after_fit=false")  # fmt: skip
    rows = metrics(still)
    assert {int(float(r["train/num_gaussians"])) for r in rows} == {200} and float(rows[-1]["train/loss_tv"]) > 0


def test_bad_inputs_name_the_problem(written_models, tmp_path, capsys):
    sd, zero123 = written_models["sd"], written_models["zero123"]
    args = shading_overrides(sd, tmp_path / "a", 1, 'system.prompt_processor.prompt=""')
    assert main(["--config", str(CONFIGS / f"{SHADING}.yaml"), "--train", *args]) == 2
    assert "prompt is empty" in capsys.readouterr().err


def test_color_clip_clamps_the_rendered_dc_colour_only():
    """threestudio-3dgs' color_clip: the DC coefficients the rasteriser sees are clamped to ±clip (gradient zero where
    clamped); the stored parameters and the higher SH bands are untouched."""
    model = GaussianModel(
        torch.zeros(3, 3), torch.tensor([[[3.0, -0.5, -4.0]], [[1.0, 2.5, 0.0]], [[-2.0, 0.0, 0.2]]]),
        torch.full((3, 3, 3), 5.0), torch.zeros(3), torch.zeros(3, 3), torch.tensor([[1.0, 0, 0, 0]] * 3),
    )  # fmt: skip
    model.active_sh_degree = 1
    model.params["sh0"].requires_grad_(True)
    splats = model.splats(dc_clip=2.0)
    want = torch.tensor([[[2.0, -0.5, -2.0]], [[1.0, 2.0, 0.0]], [[-2.0, 0.0, 0.2]]])
    assert torch.equal(splats.colors[:, :1], want)
    assert torch.equal(splats.colors[:, 1:], torch.full((3, 3, 3), 5.0))
    assert torch.equal(model.splats().colors[:, :1], model.params["sh0"])  # no clip: the parameters as stored
    splats.colors[:, 0].sum().backward()
    assert torch.equal(model.params["sh0"].grad, torch.tensor([[[0.0, 1, 0]], [[1.0, 0, 1]], [[1.0, 1, 1]]]))
