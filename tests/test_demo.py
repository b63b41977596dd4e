"""The main job (`python -m hash3d.demo`) and the `*-mini` configs of both front-ends: the configs follow the
mini model's card and differ from their `_hash3d` twins only in the cache block; the demo's command line runs
(tiny steps, cache off and on) and leaves an orbit video, a textured mesh and its report."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import pytest
import torch
import trimesh
from PIL import Image

from hash3d.cache.config import CacheConfig
from hash3d.config import flatten, load_config, twin_differences
from hash3d.config.loader import load_yaml
from hash3d.config.typed import to_data
from hash3d.demo import main
from hash3d.shipped import DG_CONFIGS, EXAMPLE_INPUT, MINI_MODEL, TS_CONFIGS
from hash3d.systems.dreamgaussian import load_options

# a few CPU seconds per run: 4 + 2 steps, a small Gaussian cloud, mesh, texture and video
TINY = ["--steps", "4", "--refine-steps", "2", "--no-progress", "num_pts=200", "mesh_resolution=24",
        "texture_size=32", "video_frames=4", "video_size=32"]


def test_dreamgaussian_mini_twins_differ_only_in_the_cache_block():
    a_raw, b_raw = dict(load_yaml(DG_CONFIGS / "image_mini.yaml")), dict(load_yaml(DG_CONFIGS / "image_mini_hash3d.yaml"))
    assert b_raw.pop("cache")["enabled"] is True
    a_raw.pop("cache", None)
    assert a_raw == b_raw
    la = flatten(to_data(load_options(DG_CONFIGS / "image_mini.yaml")))
    lb = flatten(to_data(load_options(DG_CONFIGS / "image_mini_hash3d.yaml")))
    diff = sorted(k for k in set(la) | set(lb) if la.get(k) != lb.get(k))
    assert diff and all(k.startswith("cache.") for k in diff), diff


def test_threestudio_mini_twins_differ_only_in_the_cache_block():
    plain, hashed = TS_CONFIGS / "stable-zero123-mini.yaml", TS_CONFIGS / "stable-zero123-mini_hash3d.yaml"
    assert twin_differences(plain, hashed) == []
    a, _ = load_config(plain, [])
    b, _ = load_config(hashed, [])
    assert not a.system.guidance.cache.enabled and b.system.guidance.cache.enabled


def test_mini_configs_set_a_cache_budget_sized_for_a_cpu():
    """The mini configs run on CPUs: their cache budget is their own (not the 4 GB GPU-sized default) and at most
    1 GB; the table only grows to it as entries come."""
    dg = load_options(DG_CONFIGS / "image_mini_hash3d.yaml")
    ts, _ = load_config(TS_CONFIGS / "stable-zero123-mini_hash3d.yaml", [])
    default = CacheConfig().max_memory_mb
    for cache in (dg.cache, ts.system.guidance.cache):
        assert cache.enabled and cache.max_memory_mb is not None
        assert cache.max_memory_mb < default and cache.max_memory_mb <= 1024


def test_mini_configs_follow_the_model_card():
    dg = load_options(DG_CONFIGS / "image_mini.yaml")
    assert (dg.radius, dg.fovy, dg.stable_zero123, dg.ref_size) == (3.8, 20.0, True, 64)
    assert set(dg.render_resolutions) == {64} and dg.refine_resolution == 64 and dg.invert_bg_prob == 0
    ts, _ = load_config(TS_CONFIGS / "stable-zero123-mini.yaml", [])
    rc = ts.data.random_camera
    assert (ts.data.default_camera_distance, ts.data.default_fovy_deg, ts.data.height) == (3.8, 20.0, 64)
    assert rc.camera_distance_range == (3.8, 3.8) and rc.fovy_range == (20.0, 20.0) and rc.height == 64
    assert ts.system.guidance.camera_embedding == "stable"
    # the model and example paths are relative to the front-end folders and name the shipped files
    for front, model, image in (
        (DG_CONFIGS.resolve().parent, dg.guidance.pretrained_model_name_or_path, dg.input),
        (TS_CONFIGS.resolve().parent, ts.system.guidance.pretrained_model_name_or_path, ts.data.image_path),
    ):
        assert (front / model).resolve() == MINI_MODEL.resolve()
        assert (front / image).resolve() == EXAMPLE_INPUT.resolve()
    assert EXAMPLE_INPUT.stat().st_size < 20_000


@pytest.mark.slow
def test_demo_runs_cache_off_and_on_and_writes_video_mesh_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--cache", "both", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "cache off" in printed and "cache on" in printed and "hit rate" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "dreamgaussian" and Path(report["model"]).resolve() == MINI_MODEL.resolve()
    assert [r["run"] for r in report["runs"]] == ["cache off", "cache on"]
    for run in report["runs"]:
        folder = out / run["run"].replace(" ", "-")
        assert Path(run["folder"]) == folder
        assert run["steps"] == 6 and run["unet_calls"] == 6  # 4 stage-1 + 2 stage-2 steps, one view each
        assert run["unet_calls_run"] + run["unet_calls_saved"] == run["unet_calls"]
        assert 0 <= run["hit_rate"] <= 1 and run["it_per_s"] > 0 and run["total_time_s"] > 0
        frames = imageio.mimread(run["video"])
        assert len(frames) == 4
        files = {Path(p).suffix: Path(p) for p in run["mesh"]}
        assert {".obj", ".mtl", ".png"} <= set(files) and all(p.parent == folder for p in files.values())
        mesh = trimesh.load(files[".obj"], force="mesh")
        assert len(mesh.faces) > 0
    assert report["runs"][0]["unet_calls_saved"] == 0 and "speedup_train" in report


@pytest.mark.slow
def test_demo_single_run_writes_into_the_output_folder(tmp_path):
    out = tmp_path / "one"
    assert main(["--out", str(out), "--cache", "off", "--refine-steps", "0", *TINY[:2], *TINY[4:]]) == 0
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"]
    assert run["run"] == "cache off" and Path(run["folder"]) == out and Path(run["video"]).parent == out
    assert run["steps"] == 4 and (out / "object_mesh.obj").is_file()


def test_demo_bad_input_exits_with_status_2(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "missing.png"), "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "input image not found" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x"), "nonsense_option=1", *TINY]) == 2
    assert "nonsense_option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--steps", "0"])


@pytest.mark.slow
def test_demo_threestudio_pipeline_trains_tests_and_exports(tmp_path):
    out = tmp_path / "ts"
    small = ["data.random_camera.batch_size=1", "data.random_camera.n_test_views=3", "data.random_camera.eval_height=32",
             "data.random_camera.eval_width=32", "system.renderer.num_samples_per_ray=32",
             "system.geometry.isosurface_resolution=24", "system.geometry.isosurface_threshold=5",
             "system.exporter.texture_size=32"]
    assert main(["--pipeline", "threestudio", "--out", str(out), "--steps", "2", "--no-progress", *small]) == 0
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"]
    assert report["pipeline"] == "threestudio" and run["run"] == "cache on" and run["steps"] == 2
    assert Path(run["video"]).name == "it2-test.mp4" and len(imageio.mimread(run["video"])) == 3
    assert {Path(p).suffix for p in run["mesh"]} >= {".obj", ".mtl", ".png"}


def test_demo_help_is_usage_and_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m hash3d.demo") and "--input" in text and "--out" in text
    assert "PSNR" not in text and "object_refined.mp4" not in text  # the module docstring stays out of --help
    assert len(text.splitlines()) < 40


def test_demo_own_input_errors_are_one_line_and_leave_no_folder(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cases = [
        (["--out", str(a_file / "x")], f"{a_file} is a file; name another --out"),
        (["--out", str(a_file)], "is a file; name a folder"),
        (["--input", str(tmp_path / "typo.png"), "--out", str(tmp_path / "o1")],
         f"input image not found: {tmp_path / 'typo.png'} (check the --input path)"),
        (["--input", str(tmp_path), "--out", str(tmp_path / "o2")], "--input must be an image file"),
        (["--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "o3")], "model folder not found"),
    ]
    for args, message in cases:
        assert main([*args, *TINY]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "pip install" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]

    rgb = tmp_path / "rgb.png"  # rejected inside the pipeline (no alpha, no rembg): the folder made for it goes
    Image.new("RGB", (64, 64), (200, 30, 30)).save(rgb)
    out = tmp_path / "new" / "out"
    assert main(["--input", str(rgb), "--out", str(out), *TINY]) == 2
    assert "alpha" in capsys.readouterr().err and not (tmp_path / "new").exists()

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    assert main(["--out", str(tmp_path / "locked" / "x"), *TINY]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_demo_text_runs_dreamgaussian_text_with_the_shipped_mini_sd(tmp_path, capsys):
    from hash3d.shipped import MINI_SD_MODEL

    out = tmp_path / "text"
    assert main(["--text", "a red sphere on a blue cube", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr()
    assert "text-to-3D of 'a red sphere on a blue cube'" in printed.out and "never seen" not in printed.err
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "text" and report["prompt"] == "a red sphere on a blue cube" and "input" not in report
    assert Path(report["model"]).resolve() == MINI_SD_MODEL.resolve()
    (run,) = report["runs"]
    assert run["run"] == "cache on" and run["steps"] == 6 and run["unet_calls"] == 6  # 4 + 2 steps, one view each
    assert run["cache_config"]["mode"] == "noise" and len(imageio.mimread(run["video"])) == 4
    assert {Path(p).suffix for p in run["mesh"]} >= {".obj", ".mtl", ".png"}
    stage1 = json.loads((out / "object_report.json").read_text())
    assert stage1["steps"] == 4


def test_demo_text_errors_and_unknown_words(tmp_path, capsys):
    for args, message in ((["--pipeline", "threestudio"], "--text runs a text pipeline"),
                          (["--input", "x.png"], "--input and --elevation are for image to 3D")):
        with pytest.raises(SystemExit):
            main(["--text", "a red cone", *args])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--pipeline", "dreamfusion-sd"])
    assert "is text to 3D: give --text PROMPT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--pipeline", "bogus"])
    assert "unknown --pipeline bogus: image to 3D runs dreamgaussian or threestudio, --text runs dreamgaussian, " \
           "dreamfusion-sd" in capsys.readouterr().err
    assert main(["--text", "  ", "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "--text is empty" in capsys.readouterr().err and not (tmp_path / "o").exists()
    from hash3d.demo import unknown_words

    assert unknown_words("A red sphere, a fox playing a violin") == ["fox", "playing", "violin"]
    assert unknown_words("a red and blue striped sphere on a grey cube, overhead view") == []


def test_demo_text_runs_a_launcher_recipe_and_exports(tmp_path):
    out = tmp_path / "gd"
    assert main(["--text", "a green cone", "--pipeline", "gaussiandreamer-sd", "--out", str(out), "--steps", "2",
                 "--no-progress", "data.n_test_views=3", "system.init.sphere.num_points=200"]) == 0
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"]
    assert report["pipeline"] == "gaussiandreamer-sd" and report["prompt"] == "a green cone" and run["steps"] == 2
    assert Path(run["video"]).name == "it2-test.mp4" and len(imageio.mimread(run["video"])) == 3
    assert "last_3dgs.ply" in {Path(p).name for p in run["mesh"]}  # what --export writes for Gaussians
