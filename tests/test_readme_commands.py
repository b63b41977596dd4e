"""The README's pipeline commands run as written on a fresh clone: every folder, script, config and input file they
name is in the repository (or made by a command before them), every key=value is a valid config key, and the
commands marked offline need nothing but the shipped model. The offline DreamGaussian chain also runs, shrunk."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hash3d.config import load_config
from hash3d.shipped import MINI_MODEL, MINI_SD_MODEL
from hash3d.systems.dreamgaussian import load_options

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"<[^>]+>|\b[A-Z]+_DIR\b")


def pipeline_commands() -> list[tuple[Path, list[str], str]]:
    """(folder it runs in, argv, trailing comment) of each command of the README's pipelines block."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## The pipelines"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[: block.index("```")]
    cwd, out = REPO, []
    for line in block.strip().splitlines():
        if not line.strip():
            continue
        code, _, comment = line.partition("  #")
        argv = shlex.split(code, comments=True)
        if argv[0] == "cd":
            cwd = (cwd / argv[1]).resolve()
            assert cwd.is_dir() and REPO in (cwd, *cwd.parents), f"`cd {argv[1]}` goes nowhere: {line}"
            continue
        out.append((cwd, argv, comment.strip()))
    return out


COMMANDS = pipeline_commands()


def _is_path(value: str) -> bool:
    return "/" in value and Path(value).suffix in {".png", ".jpg", ".yaml", ".ckpt", ".txt"}


def test_the_block_names_the_offline_mini_configs_next_to_the_hub_ones():
    configs = [argv[argv.index("--config") + 1] for _, argv, _ in COMMANDS if "--config" in argv]
    assert "configs/stable-zero123-mini_hash3d.yaml" in configs and "configs/stable-zero123_hash3d.yaml" in configs
    assert "configs/image_mini_hash3d.yaml" in configs and "configs/image_sai_hash3d.yaml" in configs
    assert sum("offline" in comment for _, _, comment in COMMANDS) >= 2


def test_every_command_names_files_that_exist_and_keys_that_are_valid():
    made: set[Path] = set()
    for cwd, argv, comment in COMMANDS:
        where = f"{cwd.relative_to(REPO)}: {' '.join(argv)}"
        assert argv[0] == "python" and (cwd / argv[1]).is_file(), where
        args = argv[2:]
        if any(PLACEHOLDER.search(a) for a in args):
            continue  # a folder the user names (printed by an earlier run)
        if argv[1] == "process.py":
            src = cwd / args[0]
            assert src.is_file(), f"{where}: {args[0]} is not shipped"
            made.add(src.with_name(src.stem + "_rgba.png"))
            continue
        for a in args:
            value = a.split("=", 1)[-1]
            if _is_path(value):
                path = (cwd / value).resolve()
                assert path.exists() or path in made, f"{where}: {value} is neither shipped nor made before"
        if "--config" not in args:
            continue
        config = cwd / args[args.index("--config") + 1]
        assert config.is_file(), where
        overrides = [a for a in args if "=" in a and not a.startswith("-")]
        if argv[1] in ("main.py", "main2.py"):
            cfg = load_options(config, overrides)  # raises on an unknown key
            model = cfg.guidance.pretrained_model_name_or_path
        else:
            cfg, _ = load_config(config, overrides)
            model = cfg.system.guidance.pretrained_model_name_or_path
        if "offline" in comment:
            shipped = (MINI_MODEL.resolve(), MINI_SD_MODEL.resolve())
            assert (cwd / model).resolve() in shipped, f"{where}: not a shipped model"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}


@pytest.mark.slow
def test_the_offline_dreamgaussian_commands_run_as_written(tmp_path):
    """process.py, main.py and main2.py exactly as in the README, in a copy of the front-end folder (so the
    checkout stays clean), shrunk to a few steps by trailing overrides."""
    front = tmp_path / "dreamgaussian-hash3d"
    subprocess.run(["cp", "-r", str(REPO / "dreamgaussian-hash3d"), str(front)], check=True)
    (tmp_path / "models").symlink_to(REPO / "models")
    (tmp_path / "assets").symlink_to(REPO / "assets")
    (tmp_path / "src").symlink_to(REPO / "src")
    shrink = ["iters=3", "iters_refine=2", "num_pts=300", "mesh_resolution=24", "texture_size=32", "video_frames=2", "video_size=32"]
    ran = 0
    for cwd, argv, comment in COMMANDS:
        if cwd.name != "dreamgaussian-hash3d" or not (argv[1] == "process.py" or "image_mini" in " ".join(argv)):
            continue
        extra = [] if argv[1] == "process.py" else shrink
        p = subprocess.run([sys.executable, *argv[1:], *extra], cwd=front, env=_env(), capture_output=True, text=True,
                           timeout=600)  # fmt: skip
        assert p.returncode == 0, f"{' '.join(argv)}\n{p.stderr[-2000:]}"
        if argv[1] != "process.py":
            assert "video: 100%" in p.stderr  # the orbit video's progress bar
        ran += 1
    assert ran == 3
    assert (front / "data" / "photo_rgba.png").is_file()
    assert (front / "logs" / "photo.obj").is_file() and (front / "logs" / "photo_model.ply").is_file()
