"""The launcher and the training loop end to end with the DummySystem: outputs, resume, errors before any output."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest
import torch

import hash3d.testing.dummy_system  # noqa: F401 - registers 'dummy-system'
from hash3d.config import load_config, to_yaml
from hash3d.launch import LaunchError, main, select_device
from hash3d.training import Trainer, TrialDir, build_optimizer, load_checkpoint, resolve_precision
from hash3d.training.system import OptimizerConfig, ParamGroupConfig

REPO = Path(__file__).resolve().parents[1]
DOG = REPO / "threestudio-hash3d" / "load" / "images" / "dog1_rgba.png"

CONFIG = f"""
name: dummy
tag: "${{data.random_camera.height}}_${{rmspace:${{basename:${{data.image_path}}}},_}}"
seed: 0
data_type: single-image-datamodule
data:
  image_path: {DOG}
  height: [32, 48]
  width: [32, 48]
  resolution_milestones: [3]
  default_elevation_deg: 5.0
  default_azimuth_deg: 0.0
  default_camera_distance: 3.8
  default_fovy_deg: 20.0
  random_camera:
    height: 16
    width: 16
    batch_size: [2, 3]
    resolution_milestones: [3]
    eval_height: 32
    eval_width: 32
    n_val_views: 2
    n_test_views: 5
    eval_elevation_deg: ${{data.default_elevation_deg}}
    eval_camera_distance: ${{data.default_camera_distance}}
    eval_fovy_deg: ${{data.default_fovy_deg}}
system_type: dummy-system
system:
  hidden: 8
trainer:
  max_steps: 6
  val_check_interval: 3
  enable_progress_bar: false
checkpoint:
  every_n_train_steps: 2
"""


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "configs" / "dummy.yaml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    return path


def trials(root: Path) -> list[Path]:
    return sorted(p for p in (root / "dummy").glob("*@*") if p.is_dir()) if (root / "dummy").exists() else []


def train(config: Path, root: Path, *extra: str) -> Path:
    assert main(["--config", str(config), "--train", "--gpu", "0", f"exp_root_dir={root}", *extra]) == 0
    (trial,) = trials(root)
    return trial


def test_train_writes_the_threestudio_layout(config, tmp_path, capsys):
    root = tmp_path / "out"
    trial = train(config, root)
    err = capsys.readouterr().err
    assert "note: no CUDA GPU on this machine: running on the CPU" in err or torch.cuda.is_available()
    assert trial.name.startswith("16_dog1_rgba.png@")
    for rel in ("configs/parsed.yaml", "configs/raw.yaml", "cmd.txt", "ckpts/last.ckpt", "csv_logs/metrics.csv"):
        assert (trial / rel).is_file(), rel
    assert sorted(p.name for p in (trial / "ckpts").iterdir()) == [
        "epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "last.ckpt"]
    save = trial / "save"
    assert {p.name for p in save.glob("it*-*.png")} == {"it3-0.png", "it3-1.png", "it6-0.png", "it6-1.png"}
    frames = sorted((save / "it6-test").glob("*.png"))
    assert [p.name for p in frames] == [f"{i}.png" for i in range(5)]
    reader = imageio.get_reader(save / "it6-test.mp4")
    decoded = [f for f in reader]
    assert len(decoded) == 5 and decoded[0].shape == (32, 64, 3)  # rgb | opacity side by side
    assert (trial / "configs" / "raw.yaml").read_text() == CONFIG
    rows = list(csv.DictReader((trial / "csv_logs" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"train/loss", "lr", "it_per_s", "cache/hit_rate", "cache/unet_calls_saved"} <= set(rows[0])
    assert float(rows[-1]["cache/queries"]) == 2 * 3 + 3 * 3  # batch 2 before the milestone, 3 after
    # parsed.yaml round-trips: loading it gives the same config
    parsed, _ = load_config(trial / "configs" / "parsed.yaml")
    assert parsed.trial_dir == str(trial) and parsed.timestamp == trial.name.split("16_dog1_rgba.png")[1]
    assert to_yaml(parsed) == (trial / "configs" / "parsed.yaml").read_text()
    again, _ = load_config(trial / "configs" / "parsed.yaml")
    assert again == parsed
    ckpt = load_checkpoint(trial / "ckpts" / "last.ckpt")
    assert ckpt["global_step"] == 6 and ckpt["epoch"] == 0
    assert not any(k.startswith("guidance.") for k in ckpt["state_dict"])


def test_resume_is_exact(config, tmp_path):
    straight = train(config, tmp_path / "a")
    first = train(config, tmp_path / "b", "trainer.max_steps=3")
    parsed, last = first / "configs" / "parsed.yaml", first / "ckpts" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 3
    assert main(["--config", str(parsed), "--train", f"resume={last}", "trainer.max_steps=6"]) == 0
    assert trials(tmp_path / "b") == [first]  # continued in the same trial folder
    a, b = load_checkpoint(straight / "ckpts" / "last.ckpt"), load_checkpoint(last)
    assert b["global_step"] == 6
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i]["step"] == sb[i]["step"] == 6
        assert torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) and torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    rows = list(csv.DictReader((first / "csv_logs" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (first / "save" / "it6-test.mp4").is_file() and (first / "save" / "it3-test.mp4").is_file()
    # raw.yaml of the trial stays the original file, not the parsed.yaml used to resume
    assert (first / "configs" / "raw.yaml").read_text() == CONFIG


def test_test_validate_export_load_the_checkpoint(config, tmp_path):
    trial = train(config, tmp_path / "o", "trainer.test_after_fit=false")
    assert not (trial / "save" / "it6-test.mp4").exists()
    args = ["--config", str(trial / "configs" / "parsed.yaml"), f"resume={trial / 'ckpts' / 'epoch=0-step=4.ckpt'}"]
    assert main([*args, "--test", "data.random_camera.n_test_views=3"]) == 0  # output-only keys may change
    assert len(imageio.mimread(trial / "save" / "it4-test.mp4")) == 3
    assert main([*args, "--validate", "system.val_as_video=true"]) == 0
    assert (trial / "save" / "it4-val.mp4").is_file() and not (trial / "save" / "it4-val").exists()
    assert main([*args, "--export"]) == 0
    assert len((trial / "save" / "it4-export" / "colour.txt").read_text().split()) == 3


def _assert_error_without_output(argv, root, capsys, *patterns):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    for p in patterns:
        assert p in err, err
    assert not root.exists() or trials(root) == []
    return err


def test_bad_inputs_fail_before_any_output(config, tmp_path, capsys):
    root = tmp_path / "never"
    base = ["--config", str(config), "--train", f"exp_root_dir={root}"]
    _assert_error_without_output(["--config", str(tmp_path / "nope.yaml"), "--train"], root, capsys, "config file not found")
    _assert_error_without_output([*base, "system.hiden=4"], root, capsys,
                                 "unknown config key 'system.hiden' — did you mean 'hidden'?")
    _assert_error_without_output([*base, "trainer.max_steps=many"], root, capsys, "'trainer.max_steps' must be an integer")
    _assert_error_without_output([*base, "system_type=dumy-system"], root, capsys, "did you mean 'dummy-system'?")
    _assert_error_without_output([*base, f"data.image_path={tmp_path / 'none.png'}"], root, capsys,
                                 "data.image_path: image not found")
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "rgb.png")
    _assert_error_without_output([*base, f"data.image_path={tmp_path / 'rgb.png'}"], root, capsys,
                                 "has no alpha channel", "rembg")
    _assert_error_without_output([*base, f"resume={tmp_path / 'missing.ckpt'}"], root, capsys, "checkpoint not found")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    _assert_error_without_output([*base, f"resume={tmp_path / 'junk.ckpt'}"], root, capsys, "cannot read checkpoint")
    _assert_error_without_output([*base, "--gpu", "x"], root, capsys, "--gpu must be GPU indices")
    with pytest.raises(SystemExit):
        main(["--config", str(config)])  # no mode
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--train", "--test"])
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--train", "--fast"])


def test_checkpoint_of_another_config_is_refused(config, tmp_path, capsys):
    trial = train(config, tmp_path / "o", "trainer.max_steps=2", "trainer.val_check_interval=0", "trainer.test_after_fit=false")
    ckpt = trial / "ckpts" / "last.ckpt"
    other = tmp_path / "other"
    err = _assert_error_without_output(
        ["--config", str(config), "--train", f"exp_root_dir={other}", f"resume={ckpt}", "system.hidden=4"], other, capsys,
        "was made with another config (system.hidden: 8 in the checkpoint, 4 now)", "checkpoint.check_config=false")
    assert str(trial / "configs" / "parsed.yaml") in err
    _assert_error_without_output(
        ["--config", str(config), "--test", f"exp_root_dir={other}", f"resume={ckpt}", "system.hidden=16"], other, capsys,
        "system.hidden")
    # for training, the data counts too; with the check off, a shape mismatch is still a clear error
    _assert_error_without_output(
        ["--config", str(config), "--train", f"exp_root_dir={other}", f"resume={ckpt}", "data.default_fovy_deg=30"], other,
        capsys, "data.default_fovy_deg: 20.0 in the checkpoint, 30.0 now")
    _assert_error_without_output(
        ["--config", str(config), "--test", f"exp_root_dir={other}", f"resume={ckpt}", "system.hidden=4",
         "checkpoint.check_config=false"], other, capsys, "does not fit this system")


def test_gpu_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device, note = select_device("0")
    assert device.type == "cpu" and note == "no CUDA GPU on this machine: running on the CPU (--gpu 0 ignored)"
    device, note = select_device(None)  # --gpu not given: nothing to say was ignored
    assert device.type == "cpu" and note == "no CUDA GPU on this machine: running on the CPU"
    assert select_device("cpu") == (torch.device("cpu"), None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    with pytest.raises(LaunchError, match="no GPU with index 3; this machine has 2 visible GPUs, indices 0..1"):
        select_device("0,3")
    device, note = select_device("1,0")
    assert device == torch.device("cuda", 1) and "multi-GPU" in note
    with pytest.raises(LaunchError):
        select_device("-1")


def test_bad_gpu_on_a_gpu_machine_writes_nothing(config, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    root = tmp_path / "never"
    _assert_error_without_output(["--config", str(config), "--train", "--gpu", "2", f"exp_root_dir={root}"], root, capsys,
                                 "--gpu 2: no GPU with index 2")


def test_precision_falls_back_on_cpu():
    p, note = resolve_precision("16-mixed", torch.device("cpu"))
    assert p.name == "32" and p.dtype is None and "needs a GPU" in note
    assert resolve_precision("32", torch.device("cpu")) == (resolve_precision("32", torch.device("cpu"))[0], None)


def test_system_helpers():
    from hash3d.testing.dummy_system import DummySystem, DummySystemConfig

    system = DummySystem(DummySystemConfig())
    opt = build_optimizer(system, OptimizerConfig(params={"net.0": ParamGroupConfig(lr=0.5)}))
    assert [g["name"] for g in opt.param_groups] == ["net.0", "default"]
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[1]["lr"] == 0.01
    with pytest.raises(ValueError, match="no trainable parameters under 'geometry'"):
        build_optimizer(system, OptimizerConfig(params={"geometry": ParamGroupConfig(lr=1.0)}))
    system.update_step(7, 10)
    assert system.guidance.steps_seen == [7] and system.global_step == 7
    system.guidance.draw(4)
    stats = system.cache_stats()
    assert stats["queries"] == 4 and 0 <= stats["hit_rate"] <= 1
    assert list(system.generators()) == ["guidance.generator"]


def test_trainer_direct_use(tmp_path):
    """The loop without the launcher: a random-camera data module and the dummy system, precision fallback."""
    from hash3d.config import build

    cfg, _ = load_config(None, ["data_type=random-camera-datamodule", "system_type=dummy-system", "trainer.max_steps=2",
                                "trainer.precision=bf16-mixed", "trainer.enable_progress_bar=false",
                                "data.eval_height=16", "data.eval_width=16", "data.n_test_views=2"])
    dm = build("data", cfg.data_type, cfg.data, seed=0)
    system = build("system", cfg.system_type, cfg.system, device="cpu")
    trainer = Trainer(cfg, TrialDir(tmp_path / "t"), torch.device("cpu"))
    assert trainer.precision.name == "32"
    trainer.fit(system, dm)
    assert system.fit_started and trainer.global_step == 2
    assert trainer.test(system, dm) == tmp_path / "t" / "save" / "it2-test.mp4"


def _run_launcher(folder: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HASH3D_PLUGINS": "hash3d.testing.dummy_system", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, str(REPO / folder / "launch.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_launcher_as_users_run_it(config, tmp_path):
    """cd threestudio-hash3d && python launch.py --config … --train --gpu 0 data.image_path=./load/images/dog1_rgba.png"""
    out = tmp_path / "outputs"
    proc = _run_launcher("threestudio-hash3d", "--config", str(config), "--train", "--gpu", "0",
                         "data.image_path=./load/images/dog1_rgba.png", f"exp_root_dir={out}", "trainer.max_steps=2",
                         cwd=REPO / "threestudio-hash3d")
    assert proc.returncode == 0, proc.stderr
    (trial,) = trials(out)
    assert (trial / "save" / "it2-test.mp4").is_file() and (trial / "ckpts" / "last.ckpt").is_file()
    assert "launch.py" in (trial / "cmd.txt").read_text()
    proc = _run_launcher("gaussian-dreamer-hash3d", "--config", str(config), "--train", "system.hidden=oops",
                         cwd=REPO / "gaussian-dreamer-hash3d")
    assert proc.returncode == 2 and "'system.hidden' must be an integer" in proc.stderr


def test_ctrl_c_saves_stops_says_how_to_resume_and_exits_130(config, tmp_path, capsys, monkeypatch):
    """Ctrl-C at step 3 of 6: last.ckpt holds step 3, no test orbit is rendered, the message names the resume
    command, the exit status is 130; the command it names finishes the run."""
    from hash3d.testing.dummy_system import DummySystem

    root = tmp_path / "out"
    original = DummySystem.training_step

    def interrupted(self, batch, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(DummySystem, "training_step", interrupted)
    args = ["--config", str(config), "--train", f"exp_root_dir={root}", "checkpoint.every_n_train_steps=100",
            "checkpoint.save_last=false"]  # fmt: skip
    assert main(args) == 130
    (trial,) = trials(root)
    err = capsys.readouterr().err
    assert load_checkpoint(trial / "ckpts" / "last.ckpt")["global_step"] == 3  # saved although save_last is off
    assert not list((trial / "save").glob("it*-test*"))  # stopped: no test render
    assert err.strip().splitlines()[-1] == "launch.py: interrupted"
    hint = err.split("Resume with:")[1].strip().splitlines()[0]
    assert hint == f"python launch.py --config {trial / 'configs' / 'parsed.yaml'} --train resume={trial / 'ckpts' / 'last.ckpt'}"
    monkeypatch.setattr(DummySystem, "training_step", original)
    assert main(hint.split()[2:]) == 0
    assert (trial / "save" / "it6-test.mp4").is_file()
    rows = list(csv.DictReader((trial / "csv_logs" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_test_render_shows_a_progress_bar(config, tmp_path, capsys):
    root = tmp_path / "out"
    assert main(["--config", str(config), "--train", f"exp_root_dir={root}", "trainer.max_steps=1",
                 "trainer.enable_progress_bar=true", "trainer.val_check_interval=0"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "test: 100%" in err and "5/5" in err  # the data module's 5 test views
    assert "ignored" not in err  # --gpu was not given


class _NotAHash3DObject:
    pass


@pytest.mark.parametrize(
    "content,why",
    [
        (b"garbage\n", "not a file written by torch.save"),
        (b"", "the file is empty or cut short"),
        ({"state_dict": _NotAHash3DObject()}, "holds Python objects other than tensors"),
        ({"state_dict": {}}, "made by another tool or version"),
    ],
    ids=["text", "empty", "objects", "other-dict"],
)
def test_a_file_that_is_not_a_checkpoint_is_named_as_such(config, tmp_path, capsys, content, why):
    path = tmp_path / "garbage.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    root = tmp_path / "out"
    assert main(["--config", str(config), "--train", f"exp_root_dir={root}", f"resume={path}"]) == 2
    err = capsys.readouterr().err
    assert "is not a Hash3D checkpoint" in err and why in err and "resume from a ckpts/*.ckpt" in err
    assert "weights_only" not in err  # torch's advice, which a user of the launcher cannot act on
    assert not root.exists()


@pytest.mark.parametrize("flag", [True, False])
def test_trainer_benchmark_sets_cudnn_autotuning_for_the_run(config, tmp_path, monkeypatch, flag):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not flag)
    train(config, tmp_path / "out", f"trainer.benchmark={str(flag).lower()}", "trainer.max_steps=1")
    assert torch.backends.cudnn.benchmark is flag


@pytest.mark.parametrize("geometry, refused", [("tetrahedra-sdf-grid", True), ("implicit-volume", False)])
def test_isosurface_resolution_is_part_of_the_model_only_for_dmtet(geometry, refused):
    """DMTet's tetrahedral grid is its model (a resume at another resolution cannot load the SDF); for a volume the
    resolution only sets the exported mesh's detail."""
    from hash3d.training.checkpoint import config_differences

    def config(resolution):
        return {"system_type": "magic3d-system",
                "system": {"geometry_type": geometry, "geometry": {"isosurface_resolution": resolution}}}

    diffs = config_differences(config(16), config(24), "train")
    assert diffs == (["system.geometry.isosurface_resolution: 16 in the checkpoint, 24 now"] if refused else [])


def test_recompute_mlps_does_not_stop_a_resume():
    """Recomputing the field's MLPs changes the memory a step takes, not the model: a checkpoint written without it
    (or before the key existed) resumes with it on. Other geometry keys still count."""
    from hash3d.training.checkpoint import config_differences

    def config(**geometry):
        return {"system_type": "zero123-system", "system": {"geometry_type": "implicit-volume", "geometry": geometry}}

    assert config_differences(config(radius=2.0, recompute_mlps=False), config(radius=2.0, recompute_mlps=True), "train") == []
    assert config_differences(config(radius=2.0), config(radius=2.0, recompute_mlps=True), "train") == []
    assert config_differences(config(radius=2.0), config(radius=1.5, recompute_mlps=True), "train") == [
        "system.geometry.radius: 2.0 in the checkpoint, 1.5 now"]
