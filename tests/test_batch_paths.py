"""python -m hash3d.batch from any folder: a config's relative paths are read from its front-end folder, overrides'
from where the command runs, every local path is checked before anything runs (also with --dry-run); offline, the
default CLIP score is skipped with one note naming --clip-model, and the batch completes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hash3d.batch.cli import main
from hash3d.batch.errors import BatchError
from hash3d.batch.jobs import read_job_list

ROOT = Path(__file__).resolve().parents[1]
DG = ROOT / "dreamgaussian-hash3d"
MINI = "configs/image_mini_hash3d.yaml"  # guidance.pretrained_model_name_or_path: ../models/hash3d-mini-zero123
SMALL = ["iters=2", "num_pts=200", "save_video=false", "mesh_resolution=16", "texture_size=32"]


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(ROOT / "assets" / "mini_heldout_rgba.png", folder / "mini_heldout_rgba.png")
    return folder


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_batch_run_elsewhere_reads_config_paths_from_the_front_end_folder_and_skips_clip_offline(
    tmp_path, images, offline, monkeypatch, capsys
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # no --clip-model: the default (bigG) cannot be had offline
    code = main(["--front-end", "dreamgaussian-hash3d", "--config", MINI, "--images", "../imgs", "--out", "out",
                 "--views", "2", "--view-size", "32", *SMALL])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert Path.cwd() == elsewhere  # the job ran in the front-end folder and came back
    out = elsewhere / "out"
    item = out / "image_mini_hash3d" / "mini_heldout_rgba"
    assert json.loads((item / "job.json").read_text())["workdir"] == str(DG)
    assert json.loads((item / "result.json").read_text())["steps"] == 2
    assert len(list((item / "views").glob("*.png"))) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_complete"] == 1 and summary["metrics"] == []  # no empty CLIP column
    clip_notes = [n for n in summary["notes"] if "CLIP" in n]
    assert len(clip_notes) == 1 and clip_notes[0].startswith("CLIP score skipped")
    assert "--clip-model DIR" in clip_notes[0] and "pass `--model" not in clip_notes[0]
    assert "laion/CLIP-ViT-bigG-14" in clip_notes[0]
    assert captured.out.count("CLIP score skipped") == 1  # said once
    assert "CLIP" not in (out / "summary.md").read_text().split("Notes:")[0]


def test_a_named_clip_model_that_cannot_load_still_fails_the_batch(tmp_path, images, offline, monkeypatch):
    """Only the default model is optional: a model asked for by name and not scored is exit status 1."""
    from hash3d.batch.config import ScoreConfig
    from hash3d.batch.scoring import Scorer

    missing = str(tmp_path / "no_clip_here")
    scorer = Scorer(ScoreConfig(clip_model=missing))
    assert scorer._embedder() is None and not scorer.clip_skipped and scorer.metric_names == ["clip"]
    assert "as --clip-model" in scorer.notes[0]
    optional = Scorer(ScoreConfig(clip_model="openai/no-such-clip-model", clip_optional=True))
    assert optional._embedder() is None and optional.clip_skipped and optional.metric_names == []
    # no offline flag, but no network either: skipped at once, without a download's minute of retries
    import hash3d.batch.scoring as scoring

    monkeypatch.delenv("HF_HUB_OFFLINE")
    asked = []
    monkeypatch.setattr(scoring, "hub_reachable", lambda name: asked.append(name) or False)
    unreachable = Scorer(ScoreConfig(clip_model="bigG-14", clip_optional=True))
    assert unreachable._embedder() is None and unreachable.clip_skipped
    assert asked == ["laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"] and "the hub cannot be reached" in unreachable.notes[0]


def test_dry_run_from_the_repository_root_checks_every_path(tmp_path, images, offline, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    base = ["--front-end", "dreamgaussian-hash3d", "--config", MINI, "--images", str(images), "--dry-run"]

    # the command: passes, and the job will run in the front-end folder (where ../models/… is)
    assert main([*base, "--out", str(tmp_path / "a"), "iters=10"]) == 0
    err = capsys.readouterr().err
    (job,) = read_job_list(tmp_path / "a" / "jobs.json")
    assert job.workdir == str(DG) and (DG / "../models/hash3d-mini-zero123").resolve().is_dir()
    # the CLIP score it will skip offline, said in advance with the right flag
    assert "CLIP: the model 'laion/CLIP-ViT-bigG-14-laion2B-39B-b160k' is not in the local Hugging Face cache" in err
    assert "pass --clip-model DIR" in err and "is skipped (the batch still completes)" in err

    # a missing model folder: one clear error naming the key, the value and where it was looked for
    assert main([*base, "--out", str(tmp_path / "b"), "guidance.pretrained_model_name_or_path=../models/nope"]) == 2
    err = capsys.readouterr().err
    assert "guidance.pretrained_model_name_or_path: no file or folder at '../models/nope'" in err
    assert str(ROOT / "models" / "nope") in err and f"front-end folder {DG}" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()

    # a relative path in an override is read from where the command runs (here the root), made absolute
    model = "models/hash3d-mini-zero123"
    assert main([*base, "--out", str(tmp_path / "c"), f"guidance.pretrained_model_name_or_path={model}"]) == 0
    (job,) = read_job_list(tmp_path / "c" / "jobs.json")
    assert job.overrides == (f"guidance.pretrained_model_name_or_path={ROOT / model}",)

    # a hub model that is not in the local cache, offline: every run would fail, so the plan does
    assert main([*base, "--out", str(tmp_path / "d"), "guidance.pretrained_model_name_or_path=someone/uncached-zero123"]) == 2
    assert "'someone/uncached-zero123' is not in the local Hugging Face cache and offline mode is on" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert main([*base, "--out", str(tmp_path / "d"), "guidance.pretrained_model_name_or_path=someone/uncached-zero123",
                 "--clip-model", "none"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "each run downloads it first" in err and "CLIP" not in err


def test_shipped_configs_name_only_paths_that_exist():
    """Every local path in every shipped config resolves from its front-end folder (what the batch checks)."""
    from hash3d.batch.frontends import PLACEHOLDER, get_front_end
    from hash3d.batch.paths import front_end_workdir, named_paths

    checked = 0
    for name in ("threestudio-hash3d", "dreamgaussian-hash3d", "gaussian-dreamer-hash3d"):
        front_end = get_front_end(name)
        for config in sorted((ROOT / name / "configs").glob("*.yaml")):
            try:
                info = front_end.inspect(config, ())
            except BatchError:  # a config the batch cannot take as it is (a required value to give): not checked
                continue
            workdir = front_end_workdir(config, name, None)
            assert workdir == ROOT / name
            for named in named_paths(info.data, workdir, front_end.reserved, (PLACEHOLDER,)):
                assert named.hub or named.path.exists(), (config.name, named)
                checked += not named.hub
    assert checked >= 2  # the mini configs' ../models/hash3d-mini-zero123 at least
    assert os.path.isdir(ROOT / "models" / "hash3d-mini-zero123")
