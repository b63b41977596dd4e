"""Magic123 (coarse stage) in the image quality harness (`bench/quality.py --pipeline magic123-coarse-sd`): the
shipped Hash3D-mini (Zero123, the 3D prior) and Hash3D-mini-sd (Stable Diffusion, the 2D prior, prompted with the
object's caption) drive threestudio-hash3d's `magic123-coarse-sd-mini*.yaml`; the floor's row swaps both for their
random-weight twins. The scored run is in docs/benchmarks.md (CPU); here a two-step run checks the plumbing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hash3d.config import load_config, twin_differences
from hash3d.config.errors import ConfigError
from hash3d.image_to_3d import HarnessConfig, Variant, make_case, parse_variant, run_harness
from hash3d.image_to_3d.pipeline import CONFIGS, guidance_blocks, run_pipeline, run_threestudio
from hash3d.mini.objects import HELD_OUT_ID_BASE
from hash3d.shipped import MINI_MODEL, MINI_SD_MODEL, TS_CONFIGS

TINY = ["trainer.max_steps=2", "checkpoint.every_n_train_steps=2", "system.renderer.num_samples_per_ray=32"]


def test_magic123_mini_configs_name_both_shipped_models_and_twins_differ_only_in_the_caches():
    plain, hashed = CONFIGS["magic123-coarse-sd"]
    assert twin_differences(plain, hashed) == []
    a, _ = load_config(plain, [])
    b, _ = load_config(hashed, [])
    assert guidance_blocks(a) == ["system.guidance", "system.guidance_3d"]
    for block in ("guidance", "guidance_3d"):
        assert not getattr(a.system, block).cache.enabled and getattr(b.system, block).cache.enabled, block
    front = TS_CONFIGS.resolve().parent  # the configs' paths are relative to threestudio-hash3d/
    sd, zero123 = a.system.guidance, a.system.guidance_3d
    assert (front / sd.pretrained_model_name_or_path).resolve() == MINI_SD_MODEL.resolve()
    assert (front / zero123.pretrained_model_name_or_path).resolve() == MINI_MODEL.resolve()
    assert zero123.camera_embedding == "stable" and a.system_type == "magic123-system"
    assert all(g.local_files_only and g.dtype == "fp32" for g in (sd, zero123))
    data, rc = a.data, a.data.random_camera
    assert (data.default_camera_distance, data.default_fovy_deg, data.height, data.width) == (3.8, 20.0, 64, 64)
    assert rc.camera_distance_range == (3.8, 3.8) and rc.fovy_range == (20.0, 20.0) and rc.eval_height == 64
    assert rc.elevation_range[0] >= -10 and tuple(a.system.background.color) == (1.0, 1.0, 1.0)


def test_magic123_pipeline_needs_a_prompt_and_a_one_guidance_config_takes_no_second_model(tmp_path):
    with pytest.raises(ConfigError, match="needs a prompt"):
        run_pipeline("magic123-coarse-sd", Variant(False), None, tmp_path)
    with pytest.raises(ConfigError, match="no system.guidance_3d"):
        run_threestudio(Variant(False), None, tmp_path, model_3d=MINI_MODEL)


def _parsed(tmp_path: Path, label: str, variant: str):
    (path,) = (tmp_path / "runs" / "magic123-coarse-sd" / label / variant).glob("object2000/*/*/configs/parsed.yaml")
    return yaml.safe_load(path.read_text())


def test_harness_runs_magic123_with_both_shipped_models_and_their_random_twins(tmp_path):
    """Two steps, two views: the trained rows load the shipped pair, the floor its random twins (weights differ from
    the shipped ones), each prompted with the object's caption; both guidances count their UNet calls and the
    noise@1 row sends every call of both to its cache."""
    result = run_harness(HarnessConfig(
        out=tmp_path, pipeline="magic123-coarse-sd", objects=1, n_views=2, label="mini+mini-sd", progress=False,
        variants=[Variant(False), parse_variant("noise@1")], overrides=TINY,
    ))
    rows = result["rows"]
    assert [(r["model"], r["variant"]) for r in rows] == [
        ("mini+mini-sd", "off"), ("mini+mini-sd", "noise@1"), ("random weights", "off")]
    caption = make_case(HELD_OUT_ID_BASE + 2000, n_views=2).caption
    assert result["settings"]["captions"] == [caption] and result["settings"]["sd_model"] == str(MINI_SD_MODEL)
    assert all(r["unet_calls"] == 2 * 2 for r in rows)  # 2 steps x (Stable Diffusion + Zero123), one view each
    off, on, floor = rows
    assert off["per_object"][0]["lookups"] == 0 and on["per_object"][0]["lookups"] == 4
    assert all(5 < r["psnr"] < 40 and 0 <= r["iou"] <= 1 and r["color_error"] >= 0 for r in rows)

    random_sd, random_zero123 = tmp_path / "random-mini-sd", tmp_path / "random-mini"
    for (label, variant), (sd, zero123), enabled in (
        (("mini+mini-sd", "off"), (MINI_SD_MODEL, MINI_MODEL), False),
        (("mini+mini-sd", "noise_eta1"), (MINI_SD_MODEL, MINI_MODEL), True),
        (("random-weights", "off"), (random_sd, random_zero123), False),
    ):
        system = _parsed(tmp_path, label, variant)["system"]
        assert Path(system["guidance"]["pretrained_model_name_or_path"]).resolve() == sd.resolve(), label
        assert Path(system["guidance_3d"]["pretrained_model_name_or_path"]).resolve() == zero123.resolve(), label
        assert system["guidance"]["cache"]["enabled"] is enabled and system["guidance_3d"]["cache"]["enabled"] is enabled
        assert system["prompt_processor"]["prompt"] == caption

    for twin, shipped in ((random_sd, MINI_SD_MODEL), (random_zero123, MINI_MODEL)):
        a = load_file(twin / "unet" / "diffusion_pytorch_model.safetensors")
        b = load_file(shipped / "unet" / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys() and not torch.equal(a["conv_in.weight"], b["conv_in.weight"]), twin


def test_bench_cli_offers_magic123_for_images_only(load_bench, capsys):
    quality = load_bench("quality")
    with pytest.raises(SystemExit):
        quality.main(["--task", "text", "--pipeline", "magic123-coarse-sd"])
    assert "runs a text pipeline" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--help"])
    assert "magic123-coarse-sd" in capsys.readouterr().out
