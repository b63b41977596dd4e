"""bench/batch_backends.py's options, without running a batch: --size and --device defaults, overrides after
--backends, clear errors, and a command that `python -m hash3d.batch` and DreamGaussian's config accept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hash3d.batch.cli import build_parser, to_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(load_bench):
    return load_bench("batch_backends")


@pytest.mark.parametrize("cuda, device, size", [(False, "cpu", "tiny"), (True, "cuda", "full")])
def test_device_and_size_follow_cuda_by_default(bench, monkeypatch, cuda, device, size):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    args = bench.parse_args(["--items", "4", "--backends", "local", "ray", "iters=3", "num_pts=100"])
    assert (args.device, args.size, args.items) == (device, size, 4)
    assert args.backends == ["local", "ray"] and args.extra == ["iters=3", "num_pts=100"]
    assert bench.parse_args(["--device", "cpu"]).size == "tiny"
    assert bench.parse_args(["--device", "cpu", "--size", "full"]).size == "full"


def test_bad_options_are_clear_errors(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, message in [
        (["--device", "cuda"], "--device cuda: torch sees no CUDA device here"),
        (["--backends", "local", "dask"], "--backends local dask: give local, ray or both"),
        (["--backends", "iters=3"], "--backends: give local, ray or both"),
        (["--items", "0"], "--items 0: must be at least 1"),
        (["iters"], "'iters': overrides are key=value"),
    ]:
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err


def test_tiny_command_is_one_the_batch_and_dreamgaussian_accept(bench, monkeypatch, tmp_path):
    from hash3d.systems.dreamgaussian.config import load_options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = bench.parse_args(["--backends", "ray", "--jobs", "1", "iters=3"])
    cmd = bench.batch_command("ray", tmp_path / "images", tmp_path / "out", tmp_path / "model", args)
    assert cmd[1:3] == ["-m", "hash3d.batch"]
    config = to_config(build_parser().parse_intermixed_args(cmd[3:]))
    assert (config.backend, config.address, config.jobs, config.score.clip_model) == ("ray", "local", 1, None)
    assert (config.n_views, config.view_size) == (2, 32)
    assert config.overrides[0] == f"guidance.pretrained_model_name_or_path={tmp_path / 'model'}"
    options = load_options(ROOT / "dreamgaussian-hash3d" / bench.CONFIG, config.overrides)  # unknown keys: an error
    assert (options.ref_size, options.num_pts, options.texture_size) == (32, 200, 32)
    assert options.iters == 3  # the user's override comes after the size's own, and wins
    assert bench.batch_env(args)["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setenv("PYTHONPATH", "/opt/extra-packages")  # kept after the checkout's src, not replaced
    assert bench.batch_env(args)["PYTHONPATH"].split(os.pathsep) == [str(ROOT / "src"), "/opt/extra-packages"]
    monkeypatch.delenv("PYTHONPATH")
    assert bench.batch_env(args)["PYTHONPATH"] == str(ROOT / "src")

    local = bench.batch_command("local", tmp_path / "images", tmp_path / "out", tmp_path / "model", args)
    assert "--address" not in local
    full = bench.parse_args(["--device", "cpu", "--size", "full", "iters=300"])
    assert bench.item_args(full) == ["iters=300"]


def test_a_record_is_written_after_each_backend(bench, monkeypatch, tmp_path):
    import json

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "rows.json"
    args = bench.parse_args(["--items", "4", "--out", str(out)])
    local = {"backend": "local", "jobs": None, "items": 4, "wall_s": 20.0, "wall_per_item_s": 5.0, "job_s_mean": 4.0,
             "train_s_mean": 3.0, "models_reused": 0}  # fmt: skip
    bench.write_record(args, ["--items", "4"], "CPU", [local])
    record = json.loads(out.read_text())
    assert record["rows"] == [local] and record["ray_overhead_per_item_s"] is None  # only one backend ran so far
    ray = {**local, "backend": "ray", "wall_s": 26.0, "models_reused": 3}
    bench.write_record(args, ["--items", "4"], "CPU", [local, ray])
    assert json.loads(out.read_text())["ray_overhead_per_item_s"] == 1.5  # (26 - 20) / 4
    assert bench.row_line(ray) == "| ray | 4 | default | 26.0 | 5.0 | 4.0 | 3.0 | 3 of 4 |"
