"""threestudio-hash3d end to end on tiny written models: train, test video, export, resume, cache hits, bad input."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from hash3d.config import load_config, smoke_overrides, to_data, twin_differences
from hash3d.launch import main
from hash3d.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
FRONT = REPO / "threestudio-hash3d"
CONFIGS = FRONT / "configs"
TWINS = ["stable-zero123", "zero123", "dreamfusion-sd", "magic3d-coarse-sd", "magic3d-refine-sd", "magic123-coarse-sd",
         "magic123-refine-sd", "magic123-coarse-sd-mini"]


def overrides(config: Path, model: str, out: Path, steps: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    cfg, _ = load_config(config, [])
    return [
        *smoke_overrides(cfg, steps=steps, size=32, test_views=3),
        f"exp_root_dir={out}",
        "use_timestamp=false",
        f"system.guidance.pretrained_model_name_or_path={model}",
        "system.guidance.dtype=fp32",
        "system.renderer.num_samples_per_ray=48",
        "system.geometry.isosurface_resolution=24",
        "system.geometry.isosurface_threshold=5",
        *extra,
    ]


def run(config: str, model: str, out: Path, *args: str, steps: int = 2, extra: tuple[str, ...] = ()) -> Path:
    path = CONFIGS / config
    status = main(["--config", str(path), *args, *overrides(path, model, out, steps, extra)])
    assert status == 0
    trials = sorted(p for p in out.glob("*/*") if p.is_dir())
    assert len(trials) == 1
    return trials[0]


def metrics(trial: Path) -> list[dict[str, str]]:
    with open(trial / "csv_logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", TWINS)
def test_twin_configs_differ_only_in_the_cache(name):
    assert twin_differences(CONFIGS / f"{name}.yaml", CONFIGS / f"{name}_hash3d.yaml") == []
    plain, _ = load_config(CONFIGS / f"{name}.yaml", [])
    hashed, _ = load_config(CONFIGS / f"{name}_hash3d.yaml", [])
    assert not plain.system.guidance.cache.enabled and hashed.system.guidance.cache.enabled


# hits need repeated cells: every try goes to the cache and the cells are wide
HIT_FRIENDLY = (
    "system.guidance.cache.policy.probability=1.0",
    "system.guidance.cache.adaptive=false",
    "system.guidance.cache.cell_size=[180,360,10,1000]",
)


@pytest.mark.parametrize("cache", ["off", "on"])
@pytest.mark.slow
def test_image_to_3d_train_test_export(written_models, tmp_path, monkeypatch, cache):
    monkeypatch.chdir(FRONT)  # the config's ./load/images/dog1_rgba.png is relative to the front-end folder
    config = "stable-zero123.yaml" if cache == "off" else "stable-zero123_hash3d.yaml"
    extra = ("system.exporter.texture_size=64", *(HIT_FRIENDLY if cache == "on" else ()))  # a small texture to bake
    trial = run(config, written_models["zero123"], tmp_path, "--train", steps=3, extra=extra)

    video = trial / "save" / "it3-test.mp4"
    frames = imageio.mimread(video)
    assert len(frames) == 3 and frames[0].shape[0] == 32 and frames[0].shape[1] == 32 * 3  # rgb | normal | opacity
    parsed = trial / "configs" / "parsed.yaml"
    again, _ = load_config(parsed, [])
    original, _ = load_config(CONFIGS / config, overrides(CONFIGS / config, written_models["zero123"], tmp_path, 3, extra))
    assert to_data(again)["system"] == to_data(original)["system"]
    rows = metrics(trial)
    assert rows and np.isfinite(float(rows[-1]["train/loss"]))
    if cache == "on":
        assert float(rows[-1]["cache/hits"]) > 0 and float(rows[-1]["cache/unet_calls_saved"]) > 0
    else:
        assert "cache/hits" not in rows[-1] or float(rows[-1]["cache/hits"] or 0) == 0

    assert main(["--config", str(parsed), "--export", f"resume={trial / 'ckpts' / 'last.ckpt'}"]) == 0
    obj = trial / "save" / "it3-export" / "model.obj"
    mesh = trimesh.load(obj, force="mesh")
    assert len(mesh.faces) > 0 and (trial / "save" / "it3-export" / "model.mtl").is_file()


def test_resume_continues_from_the_saved_step(written_models, tmp_path, monkeypatch):
    monkeypatch.chdir(FRONT)
    trial = run("stable-zero123.yaml", written_models["zero123"], tmp_path, "--train", steps=2,
                extra=("trainer.test_after_fit=false",))
    parsed = trial / "configs" / "parsed.yaml"
    status = main([
        "--config", str(parsed), "--train", f"resume={trial / 'ckpts' / 'last.ckpt'}",
        "trainer.max_steps=4", "checkpoint.every_n_train_steps=4", "trainer.test_after_fit=false",
    ])
    assert status == 0
    steps = [int(r["step"]) for r in metrics(trial)]
    assert steps[-1] == 4 and 3 in steps and (trial / "ckpts" / "epoch=0-step=4.ckpt").is_file()


# the policy draws from its own stream (probability < 1), cells are wide enough for hits, two keys a step
CACHE_RESUME = (
    "system.guidance.cache.policy.probability=0.6",
    "system.guidance.cache.cell_size=[180,360,10,1000]",
    "system.guidance.cache.adaptive=false",
    "data.random_camera.batch_size=2",
    "trainer.test_after_fit=false",
)
CACHE_COLUMNS = ("cache/queries", "cache/hits", "cache/inserts", "cache/entries", "cache/calls", "cache/tried",
                 "cache/full_samples", "cache/cached_samples")  # fmt: skip


@pytest.mark.slow
def test_resume_with_the_cache_on_is_exact(written_models, tmp_path, monkeypatch):
    """6 steps in one go end exactly like 3 steps + resume to 6: weights, losses and cache statistics (the table,
    the policy's random stream and the guidance's generator are in the checkpoint)."""
    monkeypatch.chdir(FRONT)
    config, model = "stable-zero123_hash3d.yaml", written_models["zero123"]
    full = run(config, model, tmp_path / "full", "--train", steps=6, extra=CACHE_RESUME)
    part = run(config, model, tmp_path / "part", "--train", steps=3, extra=CACHE_RESUME)
    saved = torch.load(part / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)["guidance_state"]
    assert saved["guidance"]["cache"]["table"]["pool_values"] is not None  # the entries are in the checkpoint
    status = main([
        "--config", str(part / "configs" / "parsed.yaml"), "--train", f"resume={part / 'ckpts' / 'last.ckpt'}",
        "trainer.max_steps=6", "checkpoint.every_n_train_steps=6",
    ])  # fmt: skip
    assert status == 0

    a, b = metrics(full), metrics(part)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [str(s) for s in range(1, 7)]
    assert float(a[-1]["cache/hits"]) > float(a[2]["cache/hits"]) > 0  # hits before and after the resume point
    for ra, rb in zip(a, b):
        assert ra["train/loss"] == rb["train/loss"], ra["step"]
        assert [ra[c] for c in CACHE_COLUMNS] == [rb[c] for c in CACHE_COLUMNS], ra["step"]
    wa = load_checkpoint(full / "ckpts" / "last.ckpt")["state_dict"]
    wb = load_checkpoint(part / "ckpts" / "last.ckpt")["state_dict"]
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_cached_checkpoint_adds_only_its_live_entries(written_models, tmp_path, monkeypatch):
    """The cache's share of a checkpoint is its live entries plus a small index, not its whole capacity."""
    monkeypatch.chdir(FRONT)
    model = written_models["zero123"]
    plain = run("stable-zero123.yaml", model, tmp_path / "off", "--train", steps=3, extra=CACHE_RESUME)
    cached = run("stable-zero123_hash3d.yaml", model, tmp_path / "on", "--train", steps=3, extra=CACHE_RESUME)
    table = torch.load(cached / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)["guidance_state"]
    table = table["guidance"]["cache"]["table"]
    live = int(table["live"])
    assert 0 < live == table["pool_slots"].numel() == table["pool_values"].shape[0]
    entry_bytes = sum(table[k][0].numel() * table[k].element_size() for k in ("pool_latents", "pool_values"))
    capacity = table["pool_capacity"]
    assert capacity > 10 * live  # a table of full capacity would dwarf the live entries
    extra = (cached / "ckpts" / "last.ckpt").stat().st_size - (plain / "ckpts" / "last.ckpt").stat().st_size
    assert live * entry_bytes <= extra <= live * entry_bytes + 2 * 2**20, (extra, live, entry_bytes)


@pytest.mark.slow
def test_resume_refuses_a_cache_state_of_another_layout(written_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(FRONT)
    part = run("stable-zero123_hash3d.yaml", written_models["zero123"], tmp_path, "--train", steps=2,
               extra=CACHE_RESUME)  # fmt: skip
    base = ["--config", str(part / "configs" / "parsed.yaml"), "--train", f"resume={part / 'ckpts' / 'last.ckpt'}",
            "trainer.max_steps=3", "checkpoint.check_config=false"]  # fmt: skip
    assert main([*base, "system.guidance.cache.cell_size=[90,360,10,1000]"]) == 2
    err = capsys.readouterr().err
    assert "cell_sizes" in err and "resume with the same cache config" in err and "save_in_checkpoint=false" in err
    assert main([*base, "system.guidance.cache.mode=features"]) == 2
    assert "mode: 'noise' saved, 'features' now" in capsys.readouterr().err
    # the fix the message names: resume with an empty table (the checkpoint config check ignores this key)
    assert main([*base[:-1], "system.guidance.cache.save_in_checkpoint=false"]) == 0
    assert [int(r["step"]) for r in metrics(part)][-1] == 3


@pytest.mark.parametrize("cache", ["off", "on"])
@pytest.mark.slow
def test_text_to_3d_train(written_models, tmp_path, cache):
    config = "dreamfusion-sd.yaml" if cache == "off" else "dreamfusion-sd_hash3d.yaml"
    extra = ('system.prompt_processor.prompt="a small red chair"',) + (HIT_FRIENDLY if cache == "on" else ())
    trial = run(config, written_models["sd"], tmp_path, "--train", steps=3, extra=extra)
    assert trial.parent.name.startswith("dreamfusion-sd") and trial.name.startswith("a_small_red_chair")
    assert len(imageio.mimread(trial / "save" / "it3-test.mp4")) == 3
    if cache == "on":
        assert float(metrics(trial)[-1]["cache/hits"]) > 0


@pytest.mark.slow
def test_text_to_3d_with_zero_sds_weight_never_calls_the_diffusion_model(written_models, tmp_path):
    extra = ('system.prompt_processor.prompt="a small red chair"', "system.loss.lambda_sds=0") + HIT_FRIENDLY
    trial = run("dreamfusion-sd_hash3d.yaml", written_models["sd"], tmp_path, "--train", steps=2, extra=extra)
    last = metrics(trial)[-1]
    assert int(float(last["step"])) == 2
    assert float(last["cache/calls"]) == 0 and float(last["cache/queries"]) == 0


def test_bad_inputs_fail_before_writing(written_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(FRONT)
    base = overrides(CONFIGS / "stable-zero123.yaml", written_models["zero123"], tmp_path)
    cfg = str(CONFIGS / "stable-zero123.yaml")
    assert main(["--config", cfg, "--train", *base, "data.image_path=./load/images/missing.png"]) == 2
    assert "missing.png" in capsys.readouterr().err
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(rgb)
    assert main(["--config", cfg, "--train", *base, f"data.image_path={rgb}"]) == 2
    assert "alpha" in capsys.readouterr().err
    assert main(["--config", cfg, "--train", *base, "system.guidance.guidance_scal=3"]) == 2
    assert "guidance_scale" in capsys.readouterr().err
    assert main(["--config", str(CONFIGS / "dreamfusion-sd.yaml"), "--train",
                 *overrides(CONFIGS / "dreamfusion-sd.yaml", written_models["sd"], tmp_path),
                 'system.prompt_processor.prompt=""']) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["rgb.png"]  # no trial folder was made for any of them


@pytest.mark.slow
def test_headline_command_runs_as_typed(written_models, tmp_path):
    """The README's command, from the front-end folder, in a fresh process (shrunk to 1 tiny step)."""
    config = CONFIGS / "stable-zero123_hash3d.yaml"
    cmd = [sys.executable, "launch.py", "--config", "configs/stable-zero123_hash3d.yaml", "--train", "--gpu", "0",
           "data.image_path=./load/images/dog1_rgba.png", *overrides(config, written_models["zero123"], tmp_path, 1)]
    done = subprocess.run(cmd, cwd=FRONT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(tmp_path.glob("zero123-sai-hash3d/*/save/it1-test.mp4"))


def test_failures_leave_no_folders_behind(written_models, tmp_path, monkeypatch, capsys):
    """A model that does not load leaves no trial folder; an export that finds no surface leaves no export folder,
    and its message names the full config key to change."""
    monkeypatch.chdir(FRONT)
    config = CONFIGS / "stable-zero123.yaml"
    missing = tmp_path / "no-model"
    out = tmp_path / "failed"
    assert main(["--config", str(config), "--train", *overrides(config, str(missing), out)]) == 2
    assert "No folder at" in capsys.readouterr().err
    assert not out.exists()  # not even the exp_root_dir this run would have made

    trial = run("stable-zero123.yaml", written_models["zero123"], tmp_path / "ok", "--train", steps=2,
                extra=("trainer.test_after_fit=false",))
    before = sorted(p.relative_to(trial) for p in trial.rglob("*"))
    status = main(["--config", str(trial / "configs" / "parsed.yaml"), "--export",
                   f"resume={trial / 'ckpts' / 'last.ckpt'}", "system.geometry.isosurface_threshold=1e9"])
    assert status == 2
    err = capsys.readouterr().err
    assert "no surface at isosurface threshold 1e+09" in err and "try system.geometry.isosurface_threshold=" in err
    assert sorted(p.relative_to(trial) for p in trial.rglob("*")) == before  # no it2-export/ left
