"""Magic3D and Magic123 (coarse NeRF -> DMTet refine) end to end on tiny written models, the conversion, the
empty-threshold error, and Magic123's two-guidance loss."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from hash3d.config import build, load_config, smoke_overrides
from hash3d.launch import main
from hash3d.scene import HashGridConfig, ImplicitVolume, ImplicitVolumeConfig, MLPConfig, extract_mesh
from hash3d.scene.tetrahedra_sdf_grid import TetrahedraSDFGrid, TetrahedraSDFGridConfig
from hash3d.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
FRONT = REPO / "threestudio-hash3d"
CONFIGS = FRONT / "configs"
SMALL_GRID = ("system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12")


@pytest.fixture(autouse=True)
def in_front_end(monkeypatch):
    monkeypatch.chdir(FRONT)  # the Magic123 configs' ./load/images/dog1_rgba.png is relative to the front-end folder


def overrides(config: str, models: dict, out: Path, steps: int, extra=()) -> list[str]:
    cfg, _ = load_config(CONFIGS / config, ["system.geometry_convert_from=x"] if "refine" in config else [])
    args = [
        *smoke_overrides(cfg, steps=steps, size=32, test_views=2),
        f"exp_root_dir={out}",
        "use_timestamp=false",
        f"system.guidance.pretrained_model_name_or_path={models['sd']}",
        "system.guidance.dtype=fp32",
        "trainer.precision=32",
        "system.exporter.texture_size=64",
        *SMALL_GRID,
    ]
    if "magic123" in config:
        args += [f"system.guidance_3d.pretrained_model_name_or_path={models['zero123']}", "system.guidance_3d.dtype=fp32"]
    if "coarse" in config:
        args += ["system.renderer.num_samples_per_ray=48", "system.geometry.isosurface_resolution=24"]
    else:
        args += ["system.geometry.isosurface_resolution=16"]
    return [*args, *extra]


def train(config: str, models: dict, out: Path, steps: int = 2, extra=()) -> Path:
    assert main(["--config", str(CONFIGS / config), "--train", *overrides(config, models, out, steps, extra)]) == 0
    (trial,) = [p for p in out.glob("*/*") if p.is_dir()]
    return trial


def metrics(trial: Path) -> list[dict[str, str]]:
    with open(trial / "csv_logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def export(trial: Path, step: int) -> trimesh.Trimesh:
    ckpt = trial / "ckpts" / "last.ckpt"
    assert main(["--config", str(trial / "configs" / "parsed.yaml"), "--export", f"resume={ckpt}"]) == 0
    folder = trial / "save" / f"it{step}-export"
    assert (folder / "model.mtl").is_file() and (folder / "model_albedo.png").is_file()
    return trimesh.load(folder / "model.obj", force="mesh")


@pytest.fixture(scope="module")
def coarse_runs(written_models, tmp_path_factory):
    """One trained coarse trial per method (2 steps, cache on), shared by the refine tests."""
    out = {}
    for method, extra in (("magic3d", ()), ("magic123", ())):
        root = tmp_path_factory.mktemp(f"{method}-coarse")
        mp = pytest.MonkeyPatch()
        mp.chdir(FRONT)
        try:
            out[method] = train(f"{method}-coarse-sd_hash3d.yaml", written_models, root, steps=2, extra=extra)
        finally:
            mp.undo()
    return out


@pytest.mark.parametrize("method", ["magic3d", "magic123"])
def test_coarse_trains_and_exports(coarse_runs, method):
    trial = coarse_runs[method]
    rows = metrics(trial)
    assert [r["step"] for r in rows] == ["1", "2"] and np.isfinite(float(rows[-1]["train/loss"]))
    if method == "magic3d":
        assert float(rows[-1]["train/loss_orient"]) >= 0 and float(rows[-1]["train/loss_sparsity"]) > 0
    else:
        assert all(float(rows[-1][f"train/loss_{k}"]) != 0 for k in ("rgb", "mask", "sd", "3d_sd"))
    assert (trial / "save" / "it2-test.mp4").is_file()
    assert len(export(trial, 2).faces) > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["magic3d", "magic123"])
def test_refine_from_the_coarse_checkpoint_trains_resumes_exactly_and_exports(coarse_runs, written_models, tmp_path, method):
    config = f"{method}-refine-sd_hash3d.yaml"
    coarse = coarse_runs[method]
    # LAST: the newest trial folder of the coarse experiment whose name starts with the given prefix
    convert = f"system.geometry_convert_from={coarse.parent / 'LAST'}/ckpts/last.ckpt"
    hits = ("system.guidance.cache.policy.probability=1.0", "system.guidance.cache.adaptive=false",
            "system.guidance.cache.cell_size=[180,360,10,1000]")  # fmt: skip
    extra = (convert, "trainer.test_after_fit=false", *hits)
    full = train(config, written_models, tmp_path / "full", steps=4, extra=extra)
    part = train(config, written_models, tmp_path / "part", steps=2, extra=extra)
    hidden = coarse.parent.with_name(coarse.parent.name + "-hidden")
    coarse.parent.rename(hidden)  # a resume takes its state from its own checkpoint: the coarse run is not read again
    try:
        assert main([
            "--config", str(part / "configs" / "parsed.yaml"), "--train", f"resume={part / 'ckpts' / 'last.ckpt'}",
            "trainer.max_steps=4", "checkpoint.every_n_train_steps=4",
        ]) == 0  # fmt: skip
    finally:
        hidden.rename(coarse.parent)
    a, b = metrics(full), metrics(part)
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["1", "2", "3", "4"]
    for ra, rb in zip(a, b):
        assert ra["train/loss"] == rb["train/loss"], ra["step"]
    assert float(a[-1]["train/loss_normal_consistency"]) > 0
    assert float(a[-1]["cache/hits"]) > 0
    wa = load_checkpoint(full / "ckpts" / "last.ckpt")["state_dict"]
    wb = load_checkpoint(part / "ckpts" / "last.ckpt")["state_dict"]
    assert wa.keys() == wb.keys() and "geometry.sdf" in wa and "geometry.deformation" in wa
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    mesh = export(full, 4)
    assert len(mesh.faces) > 0
    ckpt = full / "ckpts" / "last.ckpt"
    assert main(["--config", str(full / "configs" / "parsed.yaml"), "--export", f"resume={ckpt}",
                 "system.exporter.fmt=glb"]) == 0  # fmt: skip
    assert len(trimesh.load(full / "save" / "it4-export" / "model.glb", force="mesh").faces) == len(mesh.faces)


def test_empty_threshold_names_the_override(coarse_runs, written_models, tmp_path, capsys):
    config = "magic3d-refine-sd.yaml"
    extra = (f"system.geometry_convert_from={coarse_runs['magic3d'] / 'ckpts' / 'last.ckpt'}",
             "system.geometry_convert_override.isosurface_threshold=1e9")  # fmt: skip
    assert main(["--config", str(CONFIGS / config), "--train", *overrides(config, written_models, tmp_path, 1, extra)]) == 2
    err = capsys.readouterr().err
    assert "system.geometry_convert_override.isosurface_threshold=" in err and "no surface" in err


def test_refine_without_a_coarse_checkpoint_is_a_clear_error(written_models, tmp_path, capsys):
    config = "magic3d-refine-sd.yaml"
    args = [a for a in overrides(config, written_models, tmp_path, 1) if not a.startswith("system.geometry_convert_from")]
    assert main(["--config", str(CONFIGS / config), "--train", *args]) == 2
    assert "system.geometry_convert_from=" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_original_hyphenated_file_names_are_accepted():
    a, _ = load_config(CONFIGS / "magic3d-coarse-sd-hash3d.yaml", [])
    b, _ = load_config(CONFIGS / "magic3d-coarse-sd_hash3d.yaml", [])
    assert a == b and a.system.guidance.cache.enabled


def test_conversion_keeps_the_coarse_surface_and_texture():
    torch.manual_seed(0)
    small = HashGridConfig(n_levels=4, log2_hashmap_size=12, init_scale=0.5)
    mlp = MLPConfig(n_neurons=16, n_hidden_layers=1)
    volume = ImplicitVolume(ImplicitVolumeConfig(radius=1.0, pos_encoding_config=small, mlp_network_config=mlp))
    dmtet = TetrahedraSDFGrid(TetrahedraSDFGridConfig(radius=1.0, isosurface_resolution=32, pos_encoding_config=small,
                                                      mlp_network_config=mlp))  # fmt: skip
    threshold = dmtet.initialize_from_density(volume, "auto", copy_net=True)
    mesh = dmtet.extract_mesh()
    reference = extract_mesh(volume, resolution=33, threshold=threshold, coarse_to_fine=False, with_colors=False)
    lo, hi = dmtet.isosurface_bbox
    cell = float(((hi - lo) / 16).norm())  # a cube of the tetrahedral grid, corner to corner
    nearest = torch.cdist(mesh.vertices, reference.vertices).min(1).values
    assert nearest.max() < cell
    # the refine box holds the surface and lies inside the scene
    assert (mesh.vertices >= lo).all() and (mesh.vertices <= hi).all() and (lo >= -1).all() and (hi <= 1).all()
    points = torch.rand(64, 3) * 2 - 1
    assert torch.equal(dmtet(points).albedo, volume(points).albedo)


def test_magic123_loss_is_the_weighted_sum_of_its_parts(written_models, tmp_path):
    config = "magic123-coarse-sd_hash3d.yaml"
    cfg, _ = load_config(CONFIGS / config, overrides(config, written_models, tmp_path, 1, ("system.loss.lambda_rgb=7",
                                                                                           "system.loss.lambda_3d_sd=0.5")))  # fmt: skip
    data = build("data", cfg.data_type, cfg.data, seed=0)
    data.setup()
    system = build("system", cfg.system_type, cfg.system, device="cpu")
    system.on_fit_start(data)
    assert system.guidance.cache is not None and system.guidance_3d.cache is not None
    assert system.guidance.cache is not system.guidance_3d.cache  # one table per model: keys never mix

    seen: dict[str, list] = {"render": [], "sd": [], "zero123": []}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen[name].append(out)
            return out
        return wrapped

    system.render = spy("render", system.render)
    system.guidance.forward = spy("sd", system.guidance.forward)
    system.guidance_3d.forward = spy("zero123", system.guidance_3d.forward)
    batch = data.train_batch(0)
    out = system.training_step(batch, 0)

    assert len(seen["sd"]) == 1 and len(seen["zero123"]) == 1  # each guidance once, Zero123's SDS counted once
    ref_out = seen["render"][0]
    mask = batch.ref.mask.float()
    target = batch.ref.rgb * mask + torch.ones(3) * (1 - mask)
    expected = {
        "rgb": 7 * torch.nn.functional.mse_loss(ref_out.rgb, target),
        "mask": 100 * torch.nn.functional.binary_cross_entropy(ref_out.opacity.clamp(1e-5, 1 - 1e-5), mask),
        "sd": 0.025 * seen["sd"][0].loss,
        "3d_sd": 0.5 * seen["zero123"][0].loss,
    }
    for name, value in expected.items():
        assert torch.allclose(out[f"loss_{name}"], value.detach()), name
    parts = {k[len("loss_"):]: v for k, v in out.items() if k.startswith("loss_")}
    assert set(parts) == {"rgb", "mask", "sd", "3d_sd", "normal_smooth"}
    assert torch.allclose(out["loss"].detach(), sum(parts.values()))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["magic3d", "magic123"])
def test_coarse_resume_is_exact(written_models, tmp_path, method):
    """Both caches (Magic123: two tables), the environment map and the light sampling resume exactly."""
    config = f"{method}-coarse-sd_hash3d.yaml"
    hits = ["system.guidance.cache.policy.probability=0.7", "system.guidance.cache.cell_size=[180,360,10,1000]",
            "system.guidance.cache.adaptive=false", "trainer.test_after_fit=false"]  # fmt: skip
    if method == "magic123":
        hits += [h.replace("system.guidance.", "system.guidance_3d.") for h in hits[:3]]
    full = train(config, written_models, tmp_path / "full", steps=3, extra=hits)
    part = train(config, written_models, tmp_path / "part", steps=1, extra=hits)
    assert main([
        "--config", str(part / "configs" / "parsed.yaml"), "--train", f"resume={part / 'ckpts' / 'last.ckpt'}",
        "trainer.max_steps=3", "checkpoint.every_n_train_steps=3",
    ]) == 0  # fmt: skip
    a, b = metrics(full), metrics(part)
    assert [r["train/loss"] for r in a] == [r["train/loss"] for r in b] and len(a) == 3
    assert [r.get("cache/hits") for r in a] == [r.get("cache/hits") for r in b]
    wa = load_checkpoint(full / "ckpts" / "last.ckpt")["state_dict"]
    wb = load_checkpoint(part / "ckpts" / "last.ckpt")["state_dict"]
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.mark.parametrize("normal_type", ["analytic", "finite_difference"])
def test_evaluation_renders_build_no_autograd_graph_and_match_a_render_with_it(normal_type):
    # the loop renders val/test views under no_grad; analytic normals are forward values, so nothing needs autograd
    cfg, _ = load_config(FRONT / "configs" / "stable-zero123.yaml", [
        *SMALL_GRID, "system.renderer.num_samples_per_ray=48", f"system.geometry.normal_type={normal_type}",
        "data.random_camera.eval_height=12", "data.random_camera.eval_width=12", "data.random_camera.n_test_views=2"])
    data = build("data", cfg.data_type, cfg.data, seed=0)
    data.setup()
    system = build("system", cfg.system_type, cfg.system, device="cpu")
    system.eval()
    batch = next(iter(data.test_batches()))
    with torch.enable_grad():
        out = system.render(batch, system.material.shading(system.global_step, False, batch.light_positions))
    grad_modes = []
    system.geometry.register_forward_pre_hook(lambda *args: grad_modes.append(torch.is_grad_enabled()))
    with torch.no_grad():
        images = system.test_step(batch, 0)
    assert grad_modes and not any(grad_modes)
    assert set(images) == {"rgb", "normal", "opacity"}
    assert not any(t.requires_grad or t.grad_fn is not None for t in images.values())
    torch.testing.assert_close(images["rgb"], out.rgb.detach())
    torch.testing.assert_close(images["normal"], out.normal_vis.detach())
    torch.testing.assert_close(images["opacity"], out.opacity.detach())
    assert images["opacity"].max() > 0.01  # the blob is in view: the comparison covers real samples
