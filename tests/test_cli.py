"""One error path for every command line (`hash3d.cli.run_cli`): bad input is one line and exit status 2, a bug
shows its traceback and exits with status 1. Each entry point is tried both ways: a real bad input, and a bug
injected where its work starts."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from hash3d.cli import run_cli, setup_logging
from hash3d.config.errors import ConfigError, UserInputError
from hash3d.eval.errors import EvalError

ROOT = Path(__file__).resolve().parents[1]


class Bug(RuntimeError):
    pass


def _bug(*args, **kwargs):
    raise Bug("injected bug: this is not the user's fault")


def _root_module(name: str):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(name)


def _one_error_line(err: str, prog: str, fragment: str) -> None:
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"{prog}: error: ") and fragment in errors[0], err
    assert "Traceback" not in err, err


def _traceback_of_the_bug(err: str) -> None:
    assert "Traceback (most recent call last)" in err and "injected bug" in err, err
    assert ": error: " not in err, err


# ------------------------------------------------------------------------------------------------- run_cli itself


def test_run_cli_statuses(capsys):
    assert run_cli(lambda: None, "p") == 0
    assert run_cli(lambda: 1, "p") == 1

    def bad():
        raise ConfigError("unknown key 'x' — did you mean 'y'?")

    assert run_cli(bad, "p") == 2
    _one_error_line(capsys.readouterr().err, "p", "unknown key 'x'")
    assert run_cli(_bug, "p") == 1
    _traceback_of_the_bug(capsys.readouterr().err)

    def interrupted():
        raise KeyboardInterrupt

    assert run_cli(interrupted, "p", interrupted="interrupted: rerun to resume") == 130
    assert capsys.readouterr().err == "p: interrupted: rerun to resume\n"


@pytest.mark.parametrize("exc", [ValueError("bad value"), FileNotFoundError("no such file"), OSError("disk")])
def test_plain_value_and_os_errors_are_bugs_not_bad_input(exc, capsys):
    """Only a UserInputError means bad input; a ValueError or OSError from deep inside is shown in full."""

    def body():
        raise exc

    assert run_cli(body, "p") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and type(exc).__name__ in err


def test_verbose_adds_the_traceback_to_bad_input(capsys):
    def bad():
        raise UserInputError("missing file x")

    assert run_cli(bad, "p", verbose=True) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("p: error: missing file x")


def test_eval_error_is_user_input():
    assert issubclass(EvalError, UserInputError)


def test_setup_logging_installs_one_handler():
    import logging

    logger = logging.getLogger("hash3d")
    ours = lambda: [h for h in logger.handlers if type(h).__name__ == "_CurrentStderrHandler"]  # noqa: E731
    setup_logging(False)
    setup_logging(True)
    assert len(ours()) == 1 and logger.level == logging.DEBUG  # (pytest's own capture handlers may sit beside it)
    setup_logging(False)
    assert len(ours()) == 1 and logger.level == logging.INFO


# ------------------------------------------------------------------------------------------------- every entry point


def test_launcher(tmp_path, capsys, monkeypatch):
    import hash3d.launch as launch

    assert launch.main(["--config", str(tmp_path / "nope.yaml"), "--train"], "launch.py") == 2
    _one_error_line(capsys.readouterr().err, "launch.py", "nope.yaml")
    monkeypatch.setattr(launch, "run", _bug)
    assert launch.main(["--config", "x.yaml", "--train"], "launch.py") == 1
    _traceback_of_the_bug(capsys.readouterr().err)


@pytest.mark.parametrize("stage", ["main_stage1", "main_stage2"])
def test_dreamgaussian_main_and_main2(stage, tmp_path, capsys, monkeypatch):
    from hash3d.systems.dreamgaussian import cli

    main = getattr(cli, stage)
    assert main(["--config", str(tmp_path / "nope.yaml")], "main.py") == 2
    _one_error_line(capsys.readouterr().err, "main.py", "nope.yaml")
    monkeypatch.setattr(cli, "load_options", _bug)
    assert main(["--config", "configs/image_sai.yaml"], "main.py") == 1
    _traceback_of_the_bug(capsys.readouterr().err)


def test_dreamgaussian_process(tmp_path, capsys, monkeypatch):
    from hash3d.data import process_image
    from hash3d.systems.dreamgaussian.cli import main_process

    assert main_process([str(tmp_path / "missing.png")], "process.py") == 2
    _one_error_line(capsys.readouterr().err, "process.py", "missing.png")
    monkeypatch.setattr(process_image, "process_path", _bug)
    assert main_process([str(tmp_path / "missing.png")], "process.py") == 1
    _traceback_of_the_bug(capsys.readouterr().err)


def test_batch(tmp_path, capsys, monkeypatch):
    from hash3d.batch import cli, runner

    args = ["--front-end", "threestudio-hash3d", "--config", "configs/dreamfusion-sd_hash3d.yaml"]
    assert cli.main([*args, "--prompts", str(tmp_path / "nope.txt")]) == 2
    _one_error_line(capsys.readouterr().err, cli.PROG, "nope.txt")
    monkeypatch.setattr(runner, "run_batch", _bug)
    assert cli.main([*args, "--prompts", str(tmp_path / "nope.txt")]) == 1
    _traceback_of_the_bug(capsys.readouterr().err)


def test_eval_nvs(tmp_path, capsys, monkeypatch):
    eval_nvs = _root_module("eval_nvs")
    assert eval_nvs.main(["--gt", str(tmp_path / "nope"), "--pr", str(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err, "eval_nvs.py", "nope")
    monkeypatch.setattr(eval_nvs, "evaluate_nvs", _bug)
    assert eval_nvs.main(["--gt", str(tmp_path), "--pr", str(tmp_path)]) == 1
    _traceback_of_the_bug(capsys.readouterr().err)


def test_eval_clip_sim(tmp_path, capsys, monkeypatch):
    eval_clip_sim = _root_module("eval_clip_sim")
    assert eval_clip_sim.main(["a cat", str(tmp_path / "nope")]) == 2
    _one_error_line(capsys.readouterr().err, "eval_clip_sim.py", "nope")
    monkeypatch.setattr(eval_clip_sim, "evaluate_clip", _bug)
    assert eval_clip_sim.main(["a cat", str(tmp_path)]) == 1
    _traceback_of_the_bug(capsys.readouterr().err)


def test_demo(tmp_path, capsys, monkeypatch):
    from hash3d import demo

    assert demo.main(["--input", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys.readouterr().err, "hash3d.demo", "missing.png")
    assert demo.main(["--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys.readouterr().err, "hash3d.demo", "--model")
    monkeypatch.setattr(demo, "run_demo", _bug)
    assert demo.main(["--out", str(tmp_path / "o")]) == 1
    _traceback_of_the_bug(capsys.readouterr().err)


def test_gpu_out_of_memory_is_one_line_that_says_what_to_lower(capsys):
    def body():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.33 GiB. GPU 0 has a total capacity of 79.18 GiB")

    assert run_cli(body, "launch.py") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err
    assert err.startswith("launch.py: error: the GPU ran out of memory (Tried to allocate 1.33 GiB; GPU 0 has a total "
                          "capacity of 79.18 GiB). ")
    for hint in ("data.random_camera.height", "batch_size", "system.renderer.num_samples_per_ray", "intact"):
        assert hint in err
    assert run_cli(body, "p", verbose=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "Tried to allocate 1.33 GiB" in err
    assert err.rstrip().splitlines()[-1].startswith("p: error: the GPU ran out of memory")


def test_a_runtime_error_that_mentions_memory_is_still_a_bug(capsys):
    def body():
        raise RuntimeError("CUDA out of memory")  # not torch's OutOfMemoryError: not this path

    assert run_cli(body, "p") == 1
    assert "internal error" in capsys.readouterr().err
