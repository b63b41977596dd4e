"""system.loggers: Weights & Biases and TensorBoard get the logged scalars and validation images when installed and
enabled (fake modules stand in for the packages here); a missing package gives one notice; CSV is always written."""

from __future__ import annotations

import csv
import sys
import types
from pathlib import Path

import pytest
import torch

from hash3d.config import load_config, smoke_overrides
from hash3d.launch import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "data" / "foreign_configs" / "hash3d" / "threestudio-hash3d" / "dreamfusion-sd_hash3d.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeRun:
    def __init__(self, calls, **kwargs):
        self.calls = calls
        calls.append(("init", kwargs))

    def log(self, values, step):
        self.calls.append(("log", step, dict(values)))

    def finish(self):
        self.calls.append(("finish",))


def fake_wandb(calls):
    module = types.ModuleType("wandb")
    module.init = lambda **kwargs: FakeRun(calls, **kwargs)
    module.Image = lambda frame: ("image", frame.shape)
    return module


def fake_tensorboard(calls):
    module = types.ModuleType("torch.utils.tensorboard")

    class SummaryWriter:
        def __init__(self, log_dir):
            calls.append(("tb", log_dir))

        def add_scalar(self, key, value, step):
            calls.append(("scalar", key, step))

        def add_image(self, tag, frame, step, dataformats):
            calls.append(("image", tag, step, frame.shape, dataformats))

        def close(self):
            calls.append(("close",))

    module.SummaryWriter = SummaryWriter
    return module


def run(models, out, *extra):
    base = [
        f"system.guidance.pretrained_model_name_or_path={models['sd']}",
        f"system.prompt_processor.pretrained_model_name_or_path={models['sd']}",
        'system.prompt_processor.prompt="a hamburger"',
    ]
    cfg, _ = load_config(CONFIG, base)
    args = [*base, *smoke_overrides(cfg, steps=2, size=24), f"exp_root_dir={out}", "use_timestamp=false",
            "trainer.test_after_fit=false", "trainer.val_check_interval=2", "system.guidance.dtype=fp32",
            "system.renderer.num_samples_per_ray=16", "system.geometry.pos_encoding_config.n_levels=4", *extra]  # fmt: skip
    assert main(["--config", str(CONFIG), "--train", *args]) == 0
    (trial,) = [p for p in Path(out).glob("*/*") if p.is_dir()]
    with open(trial / "csv_logs" / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)][-1] == 2  # CSV always
    return trial


def test_wandb_and_tensorboard_get_scalars_and_validation_images(written_models, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake_tensorboard(calls))
    trial = run(written_models, tmp_path, "system.loggers.wandb.enable=true", "system.loggers.wandb.project=p",
                "system.loggers.tensorboard.enable=true")  # fmt: skip
    init = next(c for c in calls if c[0] == "init")[1]
    assert init["project"] == "p" and init["name"] == trial.name  # threestudio's name: None -> the trial name
    assert init["config"]["system"]["loggers"]["wandb"]["enable"] is True
    logged = [c for c in calls if c[0] == "log"]
    scalars = [c for c in logged if "train/loss" in c[2]]
    assert [c[1] for c in scalars] == [1, 2] and "lr" in scalars[0][2] and "cache/hits" in scalars[0][2]
    images = [c for c in logged if "val" in c[2]]
    assert images and images[0][1] == 2 and images[0][2]["val"][0][0] == "image"
    assert ("tb", str(trial / "tb_logs")) in calls
    assert ("scalar", "train/loss", 2) in calls and any(c[0] == "image" and c[1] == "val/0" for c in calls)
    assert calls[-1] in {("finish",), ("close",)} and ("finish",) in calls and ("close",) in calls


def test_a_missing_logger_package_gives_one_notice(written_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails as if not installed
    run(written_models, tmp_path, "system.loggers.wandb.enable=true")
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "wandb is not installed" in line]
    assert len(notes) == 1 and "pip install wandb" in notes[0] and "csv_logs" in notes[0]
