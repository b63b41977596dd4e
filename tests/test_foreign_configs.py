"""Config files of other projects run unchanged: the corpus in tests/data/foreign_configs (threestudio, the original
Hash3D's three forks, DreamGaussian, GaussianDreamer) loads, maps and trains; the mapping table key by key; errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from hash3d.config import (
    ConfigError,
    config_file,
    load_config,
    load_config_report,
    load_yaml,
    lookup,
    read_experiment,
    resolve,
    smoke_overrides,
    twins,
)
from hash3d.config.foreign import TYPE_NAMES
from hash3d.config.foreign.rules import get_path
from hash3d.config.foreign.schedules import at_epoch_zero, c_max
from hash3d.config.foreign.systems import SYSTEM_RULES
from hash3d.config.foreign.threestudio import RULES
from hash3d.config.schema import ExperimentConfig
from hash3d.launch import main

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "foreign_configs"
IMAGE = REPO / "threestudio-hash3d" / "load" / "images" / "dog1_rgba.png"
EXPERIMENTS = sorted(
    p for p in CORPUS.rglob("*.yaml") if "dreamgaussian" not in p.parent.name
)  # threestudio layout
FLAT = sorted(p for p in CORPUS.rglob("*.yaml") if "dreamgaussian" in p.parent.name)
FLAT_IMAGE = [p for p in FLAT if p.stem.startswith("image_sai") or p.stem == "image"]  # Zero123 modes
ZERO123_CKPT = {"stable-zero123.yaml", "zero123.yaml"}  # threestudio's own: LDM checkpoints, refused until pointed away


def ids(paths):
    return [str(p.relative_to(CORPUS)) for p in paths]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def system_type(path: Path) -> str:
    return str(OmegaConf.load(path).system_type)


def model_overrides(path: Path, models: dict[str, str], coarse: str = "coarse/ckpts/last.ckpt") -> list[str]:
    """Point the file's model ids at the tiny local models (what the README tells a user to do offline); a refine
    stage also gets its coarse checkpoint (the `???` its file leaves to the command line)."""
    return [*_models(path, models), *([f"system.geometry_convert_from={coarse}"] if is_refine(path) else [])]


def is_refine(path: Path) -> bool:
    return OmegaConf.load(path).system.get("refinement", False) is True


def _models(path: Path, models: dict[str, str]) -> list[str]:
    kind = system_type(path)
    if kind in ("zero123-system", "gaussian-splatting-zero123-system"):
        return [f"system.guidance.pretrained_model_name_or_path={models['zero123']}", f"data.image_path={IMAGE}"]
    if kind == "magic123-system":
        return [f"system.guidance_3d.pretrained_model_name_or_path={models['zero123']}", f"data.image_path={IMAGE}",
                f"system.guidance.pretrained_model_name_or_path={models['sd']}",
                f"system.prompt_processor.pretrained_model_name_or_path={models['sd']}", 'system.prompt_processor.prompt="a dog"']
    out = [
        f"system.guidance.pretrained_model_name_or_path={models['sd']}",
        f"system.prompt_processor.pretrained_model_name_or_path={models['sd']}",
        'system.prompt_processor.prompt="a hamburger"',
    ]
    if kind == "gaussiandreamer-system":
        out += ["system.init.kind=sphere", "system.init.sphere.num_points=200"]
    return out


def read(path: Path, overrides=()) -> tuple[dict, object]:
    data = resolve(OmegaConf.merge(load_yaml(path), OmegaConf.from_dotlist(list(overrides))))
    return read_experiment(data, ExperimentConfig)


# ---------------------------------------------------------------- the corpus


def test_corpus_holds_the_upstream_files_with_their_source():
    names = set(ids(EXPERIMENTS + FLAT))
    assert {
        "threestudio/stable-zero123.yaml", "threestudio/zero123.yaml", "threestudio/dreamfusion-sd.yaml",
        "hash3d/threestudio-hash3d/stable-zero123_hash3d.yaml", "hash3d/threestudio-hash3d/dreamfusion-sd_hash3d.yaml",
        "hash3d/dreamgaussian-hash3d/image_sai_hash3d.yaml", "dreamgaussian/image_sai.yaml",
        "hash3d/gaussiandreamer-hash3d/gaussiandreamer-sd-hash3d.yaml", "gaussiandreamer/gaussiandreamer-sd.yaml",
    } <= names  # fmt: skip
    for path in EXPERIMENTS + FLAT:
        assert path.read_text().startswith("# Source: github.com/"), path


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_each_threestudio_layout_file_loads_and_maps(path, written_models):
    overrides = model_overrides(path, written_models)
    cfg, _, report = load_config_report(path, overrides)
    assert report.dialect == "threestudio"
    assert report.no_effect_line().startswith("accepted, no effect here: ")
    assert not report.of("refused")
    guidance = cfg.system.guidance
    assert guidance.loss_reduction == "batch_mean"  # threestudio's reduction, filled in where the file is silent
    original_cache = path.stem.endswith(("_hash3d", "-hash3d"))
    assert guidance.cache.enabled == original_cache
    if original_cache:
        assert tuple(guidance.cache.cell_size) == (20.0, 20.0, 0.1, 10.0) and guidance.cache.n_buckets == 200
        assert guidance.cache.bucket_size == 3 and not guidance.cache.adaptive
        assert guidance.cache.mode == "features"
        expected_p = {"gaussiandreamer-system": 0.3}.get(cfg.system_type, 0.1)
        assert guidance.cache.policy.probability == expected_p


def test_original_stable_zero123_maps_every_changed_key(written_models):
    path = CORPUS / "hash3d" / "threestudio-hash3d" / "stable-zero123_hash3d.yaml"
    cfg, _, report = load_config_report(path, model_overrides(path, written_models))
    s = cfg.system
    assert cfg.system_type == "zero123-system" and s.guidance_type == "zero123-guidance"
    assert s.material_type == "diffuse-with-point-light" and s.geometry.mlp_network_config.activation == "relu"
    assert s.geometry.albedo_activation == "sigmoid" and s.guidance.guidance_scale == 3.0
    assert s.guidance.dtype == "fp16"  # the unified guidance's half_precision_weights default
    assert list(s.guidance.min_step_percent) == [50, 0.7, 0.3, 200]
    assert cfg.data.height == [128, 256] and cfg.data.random_camera.batch_size == [1, 1, 1]
    assert cfg.trainer.max_steps == 1000 and cfg.trainer.val_check_interval == 1000
    no_effect = {r.key for r in report.of("no effect")}
    assert {"system.freq.guidance_eval", "system.loss.lambda_depth", "system.prompt_processor_type",
            "system.guidance.cond_image_path", "system.renderer.return_comp_normal"} <= no_effect  # fmt: skip


def test_original_gaussian_zero123_reads_as_our_gaussian_zero123_system(written_models):
    path = CORPUS / "hash3d" / "threestudio-hash3d" / "gaussian_splatting_zero123_hash3d.yaml"
    cfg, _, report = load_config_report(path, model_overrides(path, written_models))
    s = cfg.system
    assert cfg.system_type == "gaussian-splatting-zero123-system" and s.guidance_type == "zero123-guidance"
    assert s.renderer.invert_bg_prob == 1.0 and tuple(s.renderer.back_ground_color) == (1.0, 1.0, 1.0)
    assert list(s.loss.lambda_rgb) == [100, 500.0, 1000.0, 400] and s.loss.lambda_mask == 50.0
    assert s.guidance.guidance_scale == 5.0 and s.guidance.cache.mode == "features"
    assert s.geometry.densification_interval == 100 and s.geometry.densify_until_iter == 1000
    no_effect = {r.key for r in report.of("no effect")}
    assert {"system.renderer_type", "system.renderer.debug", "system.material_type", "system.material",
            "system.background_type", "system.loss.lambda_normal_smooth", "system.loss.lambda_3d_normal_smooth"} <= no_effect  # fmt: skip


def test_original_gaussian_shading_reads_as_our_shading_system():
    path = CORPUS / "threestudio-3dgs" / "gaussian_splatting_shading.yaml"
    cfg, _, report = load_config_report(path, BASE_OVERRIDES)
    s = cfg.system
    assert cfg.system_type == "gaussian-splatting-system" and s.guidance_type == "stable-diffusion-guidance"
    assert s.material.ambient_only_steps == 2000 and s.material.soft_shading
    assert tuple(s.material.diffuse_light_color) == (0.0, 0.0, 0.0)
    assert s.background_type == "gaussian-mvdream-neural-environment-map-background" and s.background.random_aug_prob == 0.8
    assert s.guidance.weighting == "sds" and list(s.guidance.max_step_percent) == [2000, 0.98, 0.5, 2001]
    assert s.geometry.densification_interval == 300 and s.optimizer.params["background"].lr == 0.001
    assert {"data.rays_d_normalize", "system.renderer_type", "system.material_type"} <= {r.key for r in report.of("no effect")}
    with pytest.raises(ConfigError, match="'system.renderer_type': 'diff-gaussian-rasterizer-advanced': gaussian-splatting-"
                                          "system has the renderer 'diff-gaussian-rasterizer-shading' built in and no "
                                          "other; remove the key or set it to 'diff-gaussian-rasterizer-shading'"):  # fmt: skip
        load_config(path, [*BASE_OVERRIDES, "system.renderer_type=diff-gaussian-rasterizer-advanced"])
    with pytest.raises(ConfigError, match="'data.rays_d_normalize': only False is supported"):
        load_config(path, [*BASE_OVERRIDES, "data.rays_d_normalize=true"])


def test_original_refine_files_take_threestudios_dmtet_defaults():
    path = CORPUS / "hash3d" / "threestudio-hash3d" / "magic3d-refine-sd-hash3d.yaml"
    cfg, _, report = load_config_report(path, [*BASE_OVERRIDES, "system.geometry_convert_from=c/ckpts/last.ckpt"])
    g = cfg.system.geometry
    assert g.mlp_network_config.n_hidden_layers == 1 and g.radius == 2.0  # the upstream module default; the file's own
    assert cfg.system.refinement and cfg.system.geometry_convert_inherit_texture
    assert {r.key for r in report.of("default")} >= {"system.geometry.mlp_network_config.n_hidden_layers"}


def test_a_refine_network_unlike_the_coarse_one_is_a_config_error(written_models, coarse_trials, tmp_path_factory,
                                                                   tmp_path, capsys):  # fmt: skip
    path = CORPUS / "hash3d" / "threestudio-hash3d" / "magic3d-refine-sd-hash3d.yaml"
    coarse = coarse_of(path, written_models, coarse_trials, tmp_path_factory)
    args = [*tiny_run_overrides(path, written_models, tmp_path, coarse), "system.geometry.mlp_network_config.n_hidden_layers=2"]
    capsys.readouterr()
    assert main(["--config", str(path), "--train", *args]) == 2
    err = capsys.readouterr().err
    assert "cannot inherit the coarse stage's feature_network: its shapes differ; give system.geometry.mlp_network_config" in err
    assert "internal error" not in err


def test_gaussiandreamer_original_gets_what_its_code_hard_codes():
    path = CORPUS / "gaussiandreamer" / "gaussiandreamer-sd.yaml"
    cfg, _, report = load_config_report(path, BASE_OVERRIDES)
    s, d = cfg.system, cfg.data
    assert s.init.kind == "shap_e" and s.init.shap_e.scale == pytest.approx(1.6)  # load_type 0, radius 4 x 0.4
    assert list(s.guidance.max_step_percent) == [500, 0.98, 0.55, 501] and s.guidance.min_step_percent == 0.02
    assert list(s.guidance.grad_clip) == [0, 1.5, 2.0, 1000] and s.guidance.weighting == "sds"
    assert d.light_sample_strategy == "dreamfusion" and tuple(d.elevation_range) == (-10.0, 60.0)
    assert tuple(d.camera_distance_range) == (1.5, 4.0) and d.eval_camera_distance == 4.0  # the file's own values
    assert (d.camera_perturb, d.center_perturb, d.up_perturb) == (0.0, 0.0, 0.0)  # GaussianDreamer's sampler
    assert s.prompt_processor.negative_prompt.startswith("ugly, bad anatomy")
    defaults = {r.key for r in report.of("default")}
    assert "data.elevation_range" in defaults and "data.camera_distance_range" not in defaults


def test_unified_guidance_files_map_their_loss_and_guidance():
    path = CORPUS / "threestudio" / "experimental" / "unified-guidance" / "dreamfusion-sd.yaml"
    cfg, _, report = load_config_report(path, BASE_OVERRIDES)
    assert cfg.system.guidance_type == "stable-diffusion-guidance" and cfg.system.loss.lambda_sds == 1.0
    assert cfg.system.guidance.weighting == "sds"  # 'dreamfusion' weighting = 1 - alpha_bar
    (reading,) = [r for r in report.readings if r.key == "system.loss.lambda_sd"]
    assert reading.verdict == "mapped"


def test_threestudio_zero123_checkpoint_paths_are_refused_with_the_diffusers_id():
    with pytest.raises(ConfigError, match="diffusers layout: pass system.guidance.pretrained_model_name_or_path="
                                          "ashawkey/stable-zero123-diffusers"):  # fmt: skip
        load_config(CORPUS / "threestudio" / "stable-zero123.yaml", [f"data.image_path={IMAGE}"])
    cfg, _ = load_config(
        CORPUS / "threestudio" / "stable-zero123.yaml",
        [f"data.image_path={IMAGE}", "system.guidance.pretrained_model_name_or_path=ashawkey/stable-zero123-diffusers"],
    )
    assert cfg.system.guidance.dtype == "fp32" and cfg.system.guidance.guidance_scale == 3.0


def tiny_run_overrides(path: Path, models: dict[str, str], out: Path, coarse: str = "") -> list[str]:
    base = model_overrides(path, models, coarse)
    cfg, _ = load_config(path, base)
    extra = [
        f"exp_root_dir={out}",
        "use_timestamp=false",
        "trainer.test_after_fit=false",
        "system.guidance.dtype=fp32",
    ]
    renderer = getattr(cfg.system, "renderer_type", "")
    if renderer in ("nerf-volume-renderer", "nvdiff-rasterizer"):  # the refine stage's grid must match its coarse one
        extra += ["system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12"]
    if renderer == "nerf-volume-renderer":
        extra += ["system.renderer.num_samples_per_ray=32"]
    if renderer == "nvdiff-rasterizer":
        # a two-step coarse density stays far below upstream's threshold 25: take the surface at a percentile
        extra += ["system.geometry.isosurface_resolution=16", "system.geometry_convert_override.isosurface_threshold=auto"]
    if system_type(path).startswith("gaussian-splatting"):
        extra += ["system.geometry.init_num_pts=100", "system.renderer.rasterizer=torch"]
    return [*base, *smoke_overrides(cfg, steps=2, size=24), *extra]


@pytest.fixture(scope="module")
def coarse_trials() -> dict[str, Path]:
    """Coarse file name -> its two-step trial, filled by the coarse files' own training test (the corpus order trains
    a coarse file before its refine partner) for the refine files to start from."""
    return {}


def coarse_of(refine: Path, models, trials: dict[str, Path], tmp_path_factory) -> str:
    """The checkpoint of the refine file's own upstream coarse partner, trained here when no earlier test did."""
    coarse = refine.with_name(refine.name.replace("-refine-", "-coarse-"))
    if coarse.name not in trials:
        out = tmp_path_factory.mktemp("coarse")
        assert main(["--config", str(coarse), "--train", *tiny_run_overrides(coarse, models, out)]) == 0
        (trials[coarse.name],) = [p for p in out.glob("*/*") if p.is_dir()]
    return str(trials[coarse.name] / "ckpts" / "last.ckpt")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_each_threestudio_layout_file_trains_two_steps(path, written_models, tmp_path, capsys, coarse_trials,
                                                       tmp_path_factory):  # fmt: skip
    coarse = coarse_of(path, written_models, coarse_trials, tmp_path_factory) if is_refine(path) else ""
    capsys.readouterr()
    args = tiny_run_overrides(path, written_models, tmp_path, coarse)
    assert main(["--config", str(path), "--train", *args]) == 0
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if "accepted, no effect here:" in line]
    assert len(notices) == 1 and "system.prompt_processor_type" in notices[0]
    (trial,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    with open(trial / "csv_logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows][-1] == 2 and np.isfinite(float(rows[-1]["train/loss"]))
    assert (trial / "ckpts" / "last.ckpt").is_file() == OmegaConf.load(path).checkpoint.save_last
    # the parsed config is ours: it loads back without any foreign reading
    again, _, report = load_config_report(trial / "configs" / "parsed.yaml", [])
    assert report.dialect == "hash3d" and again.system_type == system_type(path)
    if path.with_name(path.name.replace("-coarse-", "-refine-")).is_file():
        coarse_trials[path.name] = trial


@pytest.mark.parametrize("path", [p for p in FLAT if p not in FLAT_IMAGE], ids=ids([p for p in FLAT if p not in FLAT_IMAGE]))
def test_each_dreamgaussian_text_or_multiview_file_loads(path):
    from hash3d.systems.dreamgaussian.config import load_options

    cfg = load_options(path, ["save_path=run", 'prompt="a cat"', "input=x_rgba.png"])
    modes = {"text": (False, False), "text_mv": (True, False), "imagedream": (False, True)}
    assert (cfg.mvdream, cfg.imagedream) == modes[path.stem] and cfg.lambda_sd == 1.0 and not cfg.cache.enabled
    cfg.check_supported()


@pytest.mark.parametrize("path", FLAT_IMAGE, ids=ids(FLAT_IMAGE))
def test_each_dreamgaussian_file_trains_stage_one(path, written_models, tmp_path):
    from hash3d.systems.dreamgaussian.config import load_options
    from hash3d.systems.dreamgaussian.stage1 import run_stage1

    example = REPO / "dreamgaussian-hash3d" / "data"
    image = next(iter(sorted(example.glob("*_rgba.png"))))
    cfg = load_options(path, [
        f"input={image}", "save_path=run", f"outdir={tmp_path}", f"guidance.pretrained_model_name_or_path="
        f"{written_models['zero123']}", "iters=2", "num_pts=100", "ref_size=24", "render_resolutions=[24,24,24]",
        "mesh_resolution=16", "texture_size=16", "density_thresh=0.05",
    ])  # fmt: skip
    original_hash3d = path.stem.endswith("_hash3d")
    assert cfg.cache.enabled == original_hash3d
    if original_hash3d:
        assert cfg.cache.policy.probability == 0.5 and tuple(cfg.cache.cell_size) == (20.0, 20.0, 0.1, 20.0)
        assert cfg.grad_clip == 3.0 and cfg.train_geo and cfg.guidance.guidance_scale == 5.0
    run_stage1(cfg, progress=False)
    assert (tmp_path / "run_model.ply").is_file()


def test_dreamgaussian_grad_clip_must_not_be_negative():
    from hash3d.systems.dreamgaussian.config import load_options

    with pytest.raises(ConfigError, match="'grad_clip' must be >= 0"):
        load_options(CORPUS / "hash3d" / "dreamgaussian-hash3d" / "image_sai_hash3d.yaml", ["save_path=x", "grad_clip=-1"])


def test_dreamgaussian_lists_what_has_no_effect():
    from hash3d.config import load_config_report
    from hash3d.config.foreign import read_dreamgaussian
    from hash3d.systems.dreamgaussian.config import DreamGaussianConfig

    path = CORPUS / "hash3d" / "dreamgaussian-hash3d" / "image_sai_hash3d.yaml"
    _, _, report = load_config_report(path, ["save_path=x", "gui=true"], DreamGaussianConfig, read_dreamgaussian)
    assert report.no_effect_line() == "accepted, no effect here: gui, force_cuda_rast, lambda_depth"
    _, _, plain = load_config_report(REPO / "dreamgaussian-hash3d" / "configs" / "image_sai.yaml", [],
                                     DreamGaussianConfig, read_dreamgaussian)  # fmt: skip
    assert plain.no_effect_line() is None and plain.dialect == "hash3d"


def test_dreamgaussian_refuses_a_depth_loss_and_suggests_misspelt_options():
    from hash3d.systems.dreamgaussian.config import load_options

    path = CORPUS / "hash3d" / "dreamgaussian-hash3d" / "image_sai_hash3d.yaml"
    with pytest.raises(ConfigError, match="'lambda_depth'.*depth smoothness loss is not implemented"):
        load_options(path, ["save_path=x", "lambda_depth=0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'cache_pp' — did you mean 'cache_p'"):
        load_options(path, ["save_path=x", "cache_pp=0.3"])


# ---------------------------------------------------------------- the mapping table


@pytest.mark.parametrize("entry", TYPE_NAMES, ids=[f"{t.kind}:{t.upstream}" for t in TYPE_NAMES])
def test_every_type_name_maps_to_a_registered_component_that_takes_its_defaults(entry):
    if entry.ours is None:
        assert entry.kind == "prompt_processor" or entry.missing
        return
    config = lookup(entry.kind, entry.ours).config
    block: dict = {}
    for key, value in {**entry.defaults, **entry.sets}.items():
        node = block
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    from hash3d.config import validate

    built = validate(config, block)
    for key, value in {**entry.defaults, **entry.sets}.items():
        got = built
        for part in key.split("."):
            got = getattr(got, part)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


BASES = {
    "dreamfusion": CORPUS / "threestudio" / "dreamfusion-sd.yaml",
    "zero123": CORPUS / "hash3d" / "threestudio-hash3d" / "stable-zero123_hash3d.yaml",
    "gaussiandreamer": CORPUS / "gaussiandreamer" / "gaussiandreamer-sd.yaml",
    "magic123": CORPUS / "hash3d" / "threestudio-hash3d" / "magic123-coarse-sd-hash3d.yaml",
    "gs_zero123": CORPUS / "hash3d" / "threestudio-hash3d" / "gaussian_splatting_zero123_hash3d.yaml",
    "gs_shading": CORPUS / "hash3d" / "threestudio-hash3d" / "gaussian_splatting_shading_hash3d.yaml",
}
BASE_OVERRIDES = ['system.prompt_processor.prompt="a cat"']

# (base, key, value, verdict, (path in the translated tree, expected) or None)
KEY_CASES = [
    # trainer (Lightning)
    ("dreamfusion", "trainer.devices", 1, "no effect", None),
    ("dreamfusion", "trainer.accelerator", "gpu", "no effect", None),
    ("dreamfusion", "trainer.strategy", "auto", "no effect", None),
    ("dreamfusion", "trainer.num_nodes", 2, "refused", None),
    ("dreamfusion", "trainer.logger", False, "no effect", None),
    ("dreamfusion", "trainer.callbacks", [], "no effect", None),
    ("dreamfusion", "trainer.enable_checkpointing", True, "no effect", None),
    ("dreamfusion", "trainer.enable_model_summary", False, "no effect", None),
    ("dreamfusion", "trainer.benchmark", True, "as is", None),
    ("dreamfusion", "trainer.deterministic", True, "no effect", None),
    ("dreamfusion", "trainer.detect_anomaly", False, "no effect", None),
    ("dreamfusion", "trainer.check_val_every_n_epoch", 1, "no effect", None),
    ("dreamfusion", "trainer.max_epochs", 5, "no effect", None),
    ("dreamfusion", "trainer.accumulate_grad_batches", 4, "refused", None),
    ("dreamfusion", "trainer.gradient_clip_algorithm", "value", "refused", None),
    ("dreamfusion", "trainer.fast_dev_run", True, "refused", None),
    ("dreamfusion", "trainer.limit_train_batches", 0.5, "refused", None),
    ("dreamfusion", "trainer.reload_dataloaders_every_n_epochs", 0, "no effect", None),
    # checkpoint (ModelCheckpoint)
    ("dreamfusion", "checkpoint.dirpath", "x", "no effect", None),
    ("dreamfusion", "checkpoint.filename", "x", "no effect", None),
    ("dreamfusion", "checkpoint.monitor", "loss", "no effect", None),
    ("dreamfusion", "checkpoint.mode", "min", "no effect", None),
    ("dreamfusion", "checkpoint.verbose", True, "no effect", None),
    ("dreamfusion", "checkpoint.save_weights_only", True, "no effect", None),
    ("dreamfusion", "checkpoint.every_n_epochs", 1, "no effect", None),
    ("dreamfusion", "checkpoint.auto_insert_metric_name", False, "no effect", None),
    ("dreamfusion", "checkpoint.save_on_train_epoch_end", False, "no effect", None),
    # system
    ("dreamfusion", "system.prompt_processor_type", "stable-diffusion-prompt-processor", "no effect", None),
    ("zero123", "system.prompt_processor", {"prompt": ""}, "no effect", None),
    ("dreamfusion", "system.geometry_convert_from", "outputs/x/ckpts/last.ckpt", "refused", None),
    ("dreamfusion", "system.geometry_convert_inherit_texture", True, "no effect", None),
    ("dreamfusion", "system.geometry_convert_override", {}, "no effect", None),
    ("zero123", "system.freq.ref_only_steps", 100, "refused", None),
    ("zero123", "system.freq.guidance_eval", 200, "no effect", None),
    ("zero123", "system.loss.lambda_depth", 0.05, "refused", None),
    ("zero123", "system.loss.lambda_depth_rel", [0, 0, 0.05, 100], "refused", None),
    ("zero123", "system.loss.lambda_normal", [100, 0.0, 0.0, 200], "no effect", None),
    ("zero123", "system.loss.lambda_rgb_tv", 0.0, "no effect", None),
    ("zero123", "system.loss.lambda_z_variance", 1.0, "refused", None),
    ("dreamfusion", "system.loss.lambda_sd", 0.5, "no effect", ("system.loss.lambda_sds", 1.0)),  # the file's own wins
    # prompt processor
    ("dreamfusion", "system.prompt_processor.pretrained_model_name_or_path", "other/model", "refused", None),
    ("dreamfusion", "system.prompt_processor.use_cache", False, "no effect", None),
    ("dreamfusion", "system.prompt_processor.spawn", False, "no effect", None),
    ("dreamfusion", "system.prompt_processor.use_perp_neg", True, "refused", None),
    ("dreamfusion", "system.prompt_processor.front_threshold", 30.0, "mapped", ("system.guidance.front_threshold", 30.0)),
    ("dreamfusion", "system.prompt_processor.back_threshold", 30.0, "mapped", ("system.guidance.back_threshold", 30.0)),
    ("dreamfusion", "system.prompt_processor.overhead_threshold", 50.0, "mapped",
     ("system.guidance.overhead_threshold", 50.0)),
    ("dreamfusion", "system.prompt_processor.view_dependent_prompting", False, "mapped",
     ("system.guidance.view_dependent_prompting", False)),
    # geometry
    ("dreamfusion", "system.geometry.n_input_dims", 3, "no effect", None),
    ("dreamfusion", "system.geometry.isosurface", False, "refused", None),
    ("dreamfusion", "system.geometry.isosurface_method", "mc-cpu", "refused", None),
    ("dreamfusion", "system.geometry.isosurface_chunk", 0, "no effect", None),
    ("dreamfusion", "system.geometry.isosurface_deformable_grid", True, "refused", None),
    ("dreamfusion", "system.geometry.isosurface_remove_outliers", True, "no effect", None),
    ("dreamfusion", "system.geometry.isosurface_outlier_n_faces_threshold", 0.02, "mapped",
     ("system.geometry.isosurface_outlier_fraction", 0.02)),
    ("dreamfusion", "system.geometry.anneal_density_blob_std_config", None, "no effect", None),
    # material / background / renderer
    ("dreamfusion", "system.material.albedo_activation", "none", "mapped", ("system.geometry.albedo_activation", "none")),
    ("dreamfusion", "system.background.share_aug_bg", True, "refused", None),
    ("dreamfusion", "system.background.share_aug_bg", False, "no effect", None),
    ("dreamfusion", "system.renderer.radius", 1.0, "refused", None),
    ("dreamfusion", "system.renderer.return_comp_normal", True, "no effect", None),
    ("dreamfusion", "system.renderer.return_normal_perturb", True, "no effect", None),
    ("dreamfusion", "system.renderer.randomized", False, "mapped", ("system.renderer.stratified", False)),
    ("dreamfusion", "system.renderer.far_plane", 1e10, "no effect", None),
    ("dreamfusion", "system.renderer.estimator", "proposal", "refused", None),
    ("dreamfusion", "system.renderer.grid_prune", False, "refused", None),
    ("dreamfusion", "system.renderer.proposal_network_config", None, "no effect", None),
    ("dreamfusion", "system.renderer.prop_optimizer_config", None, "no effect", None),
    ("dreamfusion", "system.renderer.prop_scheduler_config", None, "no effect", None),
    ("dreamfusion", "system.renderer.num_samples_per_ray_proposal", 64, "no effect", None),
    ("dreamfusion", "system.renderer.num_samples_per_ray_importance", 64, "no effect", None),
    # guidance: the original Hash3D cache
    ("zero123", "system.guidance.cache_mode", "noise", "mapped", ("system.guidance.cache.mode", "noise")),
    ("zero123", "system.guidance.cache_mode", "half", "refused", None),
    ("zero123", "system.guidance.cache_p", 0.25, "mapped", ("system.guidance.cache.policy.probability", 0.25)),
    ("zero123", "system.guidance.delta_c", [30, 30, 0.2], "mapped", ("system.guidance.cache.cell_size", [30.0, 30.0, 0.2, 10.0])),
    ("zero123", "system.guidance.delta_t", 40, "mapped", ("system.guidance.cache.cell_size", [20.0, 20.0, 0.1, 40.0])),
    ("zero123", "system.guidance.max_queue_length", 5, "mapped", ("system.guidance.cache.bucket_size", 5)),
    ("zero123", "system.guidance.hash_table_size", 400, "mapped", ("system.guidance.cache.n_buckets", 400)),
    ("zero123", "system.guidance.hash_table", "Adaptive", "mapped", ("system.guidance.cache.adaptive", True)),
    ("zero123", "system.guidance.hash_table", "Key", "refused", None),
    ("zero123", "system.guidance.N", [1, 2, 3, 4], "no effect", None),
    ("zero123", "system.guidance.cache_layer_id", 0, "no effect", None),
    ("zero123", "system.guidance.cache_block_id", 1, "refused", None),
    ("zero123", "system.guidance.use_global_noise", True, "refused", None),
    # guidance: threestudio options
    ("dreamfusion", "system.guidance.weighting_strategy", "uniform", "mapped", ("system.guidance.weighting", "uniform")),
    ("dreamfusion", "system.guidance.half_precision_weights", False, "mapped", ("system.guidance.dtype", "fp32")),
    ("zero123", "system.guidance.guidance_type", "vsd", "refused", None),
    ("zero123", "system.guidance.pretrained_config", "x.yaml", "no effect", None),
    ("zero123", "system.guidance.vram_O", True, "no effect", None),
    ("dreamfusion", "system.guidance.enable_memory_efficient_attention", True, "no effect", None),
    ("dreamfusion", "system.guidance.enable_sequential_cpu_offload", False, "no effect", None),
    ("dreamfusion", "system.guidance.enable_attention_slicing", False, "no effect", None),
    ("dreamfusion", "system.guidance.enable_channels_last_format", False, "no effect", None),
    ("dreamfusion", "system.guidance.token_merging", True, "refused", None),
    ("dreamfusion", "system.guidance.token_merging_params", {}, "no effect", None),
    ("dreamfusion", "system.guidance.use_sjc", True, "refused", None),
    ("dreamfusion", "system.guidance.var_red", False, "refused", None),
    ("dreamfusion", "system.guidance.anneal_start_step", 5000, "refused", None),
    ("dreamfusion", "system.guidance.max_step_percent_annealed", 0.5, "no effect", None),
    ("dreamfusion", "system.guidance.max_items_eval", 4, "no effect", None),
    ("zero123", "system.guidance.return_rgb_1step_orig", True, "no effect", None),
    ("zero123", "system.guidance.return_rgb_multistep_orig", True, "no effect", None),
    ("zero123", "system.guidance.n_rgb_multistep_orig_steps", 4, "no effect", None),
    ("zero123", "system.guidance.cond_image_path", "other.png", "refused", None),
    ("dreamfusion", "system.guidance.use_img_loss", True, "refused", None),
    ("dreamfusion", "system.guidance.use_img_loss", False, "no effect", None),
    ("dreamfusion", "system.guidance.sqrt_anneal", True, "refused", None),
    ("dreamfusion", "system.guidance.trainer_max_steps", 25000, "no effect", None),
    ("dreamfusion", "system.guidance.controlnet_model_name_or_path", "x", "refused", None),
    ("dreamfusion", "system.guidance.preprocessor", None, "no effect", None),
    ("dreamfusion", "system.guidance.control_scale", 1.0, "no effect", None),
    ("dreamfusion", "system.guidance.lora_model_name_or_path", None, "no effect", None),
    ("dreamfusion", "system.exporter.save_uv", False, "mapped", ("system.exporter.save_texture", False)),
    ("dreamfusion", "system.exporter.save_normal", True, "refused", None),
    ("dreamfusion", "system.exporter.texture_format", "png", "no effect", None),
    ("dreamfusion", "system.exporter.xatlas_chart_options", {}, "no effect", None),
    ("dreamfusion", "system.exporter.xatlas_pack_options", {"padding": 2}, "refused", None),
    ("dreamfusion", "system.exporter.context_type", "cuda", "no effect", None),
    ("zero123", "system.guidance.vsd_phi_model_name_or_path", None, "no effect", None),
    ("zero123", "system.guidance.vsd_guidance_scale_phi", 1.0, "no effect", None),
    ("zero123", "system.guidance.vsd_use_lora", True, "no effect", None),
    ("zero123", "system.guidance.vsd_lora_cfg_training", False, "no effect", None),
    ("zero123", "system.guidance.vsd_lora_n_timestamp_samples", 1, "no effect", None),
    ("zero123", "system.guidance.vsd_use_camera_condition", True, "no effect", None),
    ("zero123", "system.guidance.vsd_camera_condition_type", "extrinsics", "no effect", None),
    # GaussianDreamer
    ("gaussiandreamer", "system.load_type", 1, "refused", None),
    ("gaussiandreamer", "system.load_path", "x.obj", "no effect", None),
    ("gaussiandreamer", "system.radius", 5.0, "mapped", ("system.init.shap_e.scale", 2.0)),
    ("gaussiandreamer", "data.load_type", 0, "no effect", None),
    ("gaussiandreamer", "system.optimizer", {"name": "Adam"}, "no effect", None),
    # the original fork's Magic123
    ("magic123", "system.loss.lambda_sds", 0.025, "no effect", None),
    ("magic123", "system.loss.lambda_sds", 0.5, "refused", None),
    ("magic123", "system.loss.lambda_3d_sds", 1.0, "no effect", None),
    ("magic123", "system.loss.lambda_sd_img", 0.1, "refused", None),
    ("magic123", "system.loss.lambda_normal_smoothness_2d", 10.0, "mapped", ("system.loss.lambda_normal_smooth", 10.0)),
    # threestudio-3dgs: the rasterisers and the shading material are built into our two Gaussian systems
    ("gs_zero123", "system.renderer_type", "diff-gaussian-rasterizer-advanced", "no effect", None),
    ("gs_zero123", "system.renderer_type", "diff-gaussian-rasterizer-shading", "refused", None),
    ("gs_shading", "system.renderer_type", "diff-gaussian-rasterizer-shading", "no effect", None),
    ("gs_shading", "system.renderer_type", "diff-gaussian-rasterizer-advanced", "refused", None),
    ("gs_shading", "system.material_type", "gaussian-diffuse-with-point-light-material", "no effect", None),
    ("gs_shading", "system.material_type", "no-material", "refused", None),
    ("dreamfusion", "system.renderer_type", "diff-gaussian-rasterizer-shading", "refused", None),
    ("gs_zero123", "system.material_type", "diffuse-with-point-light-material", "no effect", None),  # ignored upstream
    ("gs_zero123", "system.material", {"n_output_dims": 3}, "no effect", None),
    ("gs_zero123", "system.background_type", "neural-environment-map-background", "no effect", None),
    ("gs_zero123", "system.background", {"color": [0.5, 0.5, 0.5]}, "no effect", None),
    ("gs_zero123", "system.renderer.debug", True, "no effect", None),
    ("gs_shading", "system.renderer.debug", True, "no effect", None),
    ("gs_zero123", "system.loss.lambda_normal_smooth", 0.0, "no effect", None),
    ("gs_zero123", "system.loss.lambda_normal_smooth", 2.0, "refused", None),
    ("gs_zero123", "system.loss.lambda_3d_normal_smooth", 5.0, "no effect", None),
    ("gs_shading", "data.rays_d_normalize", False, "no effect", None),
    ("gs_shading", "data.rays_d_normalize", True, "refused", None),
    ("dreamfusion", "data.rays_d_normalize", True, "no effect", None),
    ("dreamfusion", "data.rays_d_normalize", False, "refused", None),
]


def case_id(case):
    return f"{case[0]}:{case[1]}={case[2]!r}"


@pytest.mark.parametrize("case", KEY_CASES, ids=[case_id(c) for c in KEY_CASES])
def test_mapping_table_key_by_key(case):
    base, key, value, verdict, expect = case
    path = BASES[base]
    extra = [f"data.image_path={IMAGE}"] if base == "magic123" else []
    data = resolve(OmegaConf.merge(load_yaml(path), OmegaConf.from_dotlist([*BASE_OVERRIDES, *extra])))
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    out, report = read_experiment(data, ExperimentConfig)
    readings = [r for r in report.readings if r.key == key]
    assert readings and readings[-1].verdict == verdict, (readings, report.of("refused"))
    if verdict == "refused":
        with pytest.raises(ConfigError, match=key.rpartition(".")[2]):
            report.raise_refusals()
    if expect is not None:
        target, expected = expect
        assert get_path(out, target) == expected


def test_upstream_spellings_of_our_values_are_mapped():
    data, report = read(BASES["dreamfusion"], [*BASE_OVERRIDES, "system.geometry.density_activation=trunc_exp",
                                              "data.light_sample_strategy=dreamfusion3dgs", "system.geometry.normal_type=null"])  # fmt: skip
    assert data["system"]["geometry"]["normal_type"] == "none"
    assert data["system"]["geometry"]["density_activation"] == "exp"
    assert data["data"]["light_sample_strategy"] == "dreamfusion"
    mapped = {r.key for r in report.of("mapped")}
    assert {"system.geometry.density_activation", "data.light_sample_strategy"} <= mapped


def test_every_rule_has_a_key_case():
    covered = {c[1] for c in KEY_CASES}
    shared = RULES["system.guidance"]  # the same table serves every guidance block (system.guidance_3d too)
    rule_keys = {
        f"{path}.{key}" if path else key
        for path, rules in RULES.items()
        if rules is not shared or path == "system.guidance"
        for key in rules
    }
    rule_keys |= {f"{path}.{key}" for per in SYSTEM_RULES.values() for path, rules in per.items() for key in rules}
    assert rule_keys <= covered, sorted(rule_keys - covered)


def test_own_files_read_unchanged():
    own = [*(REPO / "threestudio-hash3d" / "configs").glob("*.yaml"), *(REPO / "gaussian-dreamer-hash3d" / "configs").glob("*.yaml")]
    for path in sorted(own):
        tree = load_yaml(path)
        for key in OmegaConf.missing_keys(tree):  # e.g. a refine stage's `weights: ???`
            OmegaConf.update(tree, key, "given")
        data = resolve(tree)
        out, report = read_experiment(data, ExperimentConfig)
        assert report.dialect == "hash3d" and out is data, (path, [r for r in report.readings if r.verdict != "as is"])


def test_a_setting_in_our_spelling_wins_over_the_upstream_one():
    path = BASES["zero123"]
    _, _, report = load_config_report(path, ["system.guidance.cache.policy.probability=0.7"])
    cfg, _ = load_config(path, ["system.guidance.cache.policy.probability=0.7"])
    assert cfg.system.guidance.cache.policy.probability == 0.7
    (reading,) = [r for r in report.readings if r.key == "system.guidance.cache_p"]
    assert reading.verdict == "no effect" and "wins" in reading.detail


# ---------------------------------------------------------------- schedules and resolvers


def test_epoch_schedules_become_their_epoch_zero_constant():
    assert at_epoch_zero([0, 10.0, 1000.0, 5000.0]) == 10.0
    assert at_epoch_zero([-10, 0.0, 20.0, 10.0]) == 10.0  # halfway at epoch 0
    data, report = read(BASES["dreamfusion"], [*BASE_OVERRIDES, "system.loss.lambda_orient=[0,10.0,1000.0,5000.0]"])
    assert data["system"]["loss"]["lambda_orient"] == 10.0
    steps, _ = read(BASES["dreamfusion"], BASE_OVERRIDES)
    assert steps["system"]["loss"]["lambda_orient"] == [0, 10.0, 1000.0, 5000]  # integer end step: steps, kept


def test_c_max_and_the_resolvers_follow_threestudio():
    assert c_max(3.0) == 3.0 and c_max([100, 0.0, 0.0, 200]) == 0.0 and c_max([0.2, 0.5, 100]) == 0.5
    assert c_max([100, 7.0, 5.0, 150, 10.0, 200]) == 10.0
    cfg = OmegaConf.create({
        "a": [100, 0.0, 0.0, 200], "b": 0.0, "c": [0, 0.0, 0.05, 100],
        "x": "${cmaxgt0:${a}}", "y": "${cmaxgt0orcmaxgt0:${a},${b}}", "z": "${cmaxgt0orcmaxgt0:${a},${c}}",
        "n": "${not:${cmaxgt0:${a}}}", "t": "${rmspace:a b c,_}", "d": "${idiv:7,2}",
    })  # fmt: skip
    out = resolve(cfg)
    assert (out["x"], out["y"], out["z"], out["n"], out["t"], out["d"]) == (False, False, True, True, "a_b_c", 3)


def test_lightning_trainer_keys_that_change_a_run_are_read():
    cfg, _ = load_config(BASES["dreamfusion"], [*BASE_OVERRIDES, "trainer.precision=bf16", "trainer.max_steps=7",
                                               "trainer.log_every_n_steps=3", "trainer.gradient_clip_val=0.5"])  # fmt: skip
    t = cfg.trainer
    assert (t.precision, t.max_steps, t.log_every_n_steps, t.gradient_clip_val, t.val_check_interval) == (
        "bf16-mixed", 7, 3, 0.5, 200)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "override, message",
    [
        ("system.guidance.cache_pp=0.3", "unknown config key 'system.guidance.cache_pp' — did you mean 'cache_p'?"),
        ("system.freq.ref_only_step=3", "unknown config key 'system.freq.ref_only_step' — did you mean 'ref_only_steps'?"),
        ("system.geometry.pos_encoding_config.n_level=8",
         "unknown config key 'system.geometry.pos_encoding_config.n_level' — did you mean 'n_levels'?"),
        ("system.guidance_type=zero123-unified-guidance-cach", "did you mean 'zero123-unified-guidance-cache'?"),
        ("system.loss.lambda_depth=0.05", "'system.loss.lambda_depth': the depth loss is not implemented here"),
    ],
)
def test_bad_keys_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(BASES["zero123"], [override])
    assert message in str(info.value)


def test_a_required_value_names_the_key_to_give():
    path = CORPUS / "hash3d" / "threestudio-hash3d" / "dreamfusion-sd_hash3d.yaml"
    with pytest.raises(ConfigError, match=r"system.prompt_processor.prompt must be given \(\?\?\? in .*\): add e.g. "
                                          r"system.prompt_processor.prompt=VALUE"):  # fmt: skip
        load_config(path, [])


def test_explain_lists_each_key_and_refusals(tmp_path, capsys):
    path = BASES["zero123"]
    assert main(["--config", str(path), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "system.guidance.cache_p" in out and "-> system.guidance.cache.policy.probability = 0.1" in out
    assert "no effect" in out and "ok: the config loads" in out
    assert main(["--config", str(path), "--explain", "system.loss.lambda_depth=0.1", "system.freq.ref_only_steps=5"]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("refused") >= 2 and "system.freq.ref_only_steps" in captured.out
    assert (tmp_path / "outputs").exists() is False


def test_original_file_names_with_a_hyphen_are_accepted(tmp_path):
    (tmp_path / "latentnerf.yaml").write_text("name: a\n")
    (tmp_path / "latentnerf-hash3d.yaml").write_text("name: b\n")
    assert [(a.name, b.name) for a, b in twins(tmp_path)] == [("latentnerf.yaml", "latentnerf-hash3d.yaml")]
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "gaussiandreamer-sd_hash3d.yaml").write_text("name: c\n")
    assert config_file(tmp_path / "ours" / "gaussiandreamer-sd-hash3d.yaml").name == "gaussiandreamer-sd_hash3d.yaml"
    assert config_file(tmp_path / "latentnerf_hash3d.yaml").name == "latentnerf-hash3d.yaml"


# ---------------------------------------------------------------- the environment-map background


def test_spherical_harmonics_are_orthonormal_on_the_sphere():
    from hash3d.render.env_map import spherical_harmonics

    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=g, dtype=torch.float64), dim=-1)
    basis = spherical_harmonics(dirs, 3)  # [N, 9]
    gram = 4 * torch.pi * basis.T @ basis / dirs.shape[0]
    assert torch.allclose(gram, torch.eye(9, dtype=torch.float64), atol=0.02)


def test_environment_map_background_colours_each_ray_and_learns():
    from hash3d.render.env_map import NeuralEnvironmentMapBackground
    from hash3d.render.env_map import NeuralEnvironmentMapConfig as NeuralEnvironmentMapBackgroundConfig

    bg = NeuralEnvironmentMapBackground()
    dirs = torch.nn.functional.normalize(torch.randn(2, 5, 7, 3), dim=-1)
    colors = bg(dirs)
    assert colors.shape == (2, 5, 7, 3) and bool(((colors > 0) & (colors < 1)).all())
    assert not torch.allclose(colors[0, 0, 0], colors[1, 4, 6])  # depends on the direction
    colors.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bg.parameters())
    fixed = NeuralEnvironmentMapBackground(NeuralEnvironmentMapBackgroundConfig(eval_color=(0.2, 0.3, 0.4))).eval()
    assert torch.allclose(fixed(dirs), torch.tensor([0.2, 0.3, 0.4]).expand(2, 5, 7, 3))
    torch.manual_seed(0)
    aug = NeuralEnvironmentMapBackground(NeuralEnvironmentMapBackgroundConfig(random_aug=True, random_aug_prob=1.0))
    colors = aug(dirs)
    assert torch.allclose(colors[0], colors[0, 0, 0].expand(5, 7, 3)) and not torch.allclose(colors[0, 0, 0], colors[1, 0, 0])


def test_dreamfusion_original_trains_its_environment_map(written_models, tmp_path):
    path = CORPUS / "threestudio" / "dreamfusion-sd.yaml"
    assert main(["--config", str(path), "--train", *tiny_run_overrides(path, written_models, tmp_path)]) == 0
    (trial,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    state = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    weights = state["state_dict"] if "state_dict" in state else state
    assert any(k.startswith("background.network") for k in weights)


def test_original_dreamgaussian_command_names_run(monkeypatch, capsys):
    import runpy

    front = REPO / "dreamgaussian-hash3d"
    config = CORPUS / "hash3d" / "dreamgaussian-hash3d" / "image_sai_hash3d.yaml"
    for script in ("main_hash.py", "main2_hash.py"):
        monkeypatch.setattr("sys.argv", [script, "--config", str(config), "input=missing.png"])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(front / script), run_name="__main__")
        assert done.value.code == 2 and "save_path" in capsys.readouterr().err
