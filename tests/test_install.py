"""A regular (non-editable) install carries what the demo needs: the wheel holds the shipped Hash3D-mini model, the
example input and the front-ends' mini configs as package data, and `hash3d.shipped` finds them inside the
installed package, not in a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["pyproject.toml", "README.md", "src", "models", "assets", "dreamgaussian-hash3d/configs",
         "threestudio-hash3d/configs", "gaussian-dreamer-hash3d/configs"]  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    source = tmp_path_factory.mktemp("source")
    for part in PARTS:
        src, dst = ROOT / part, source / part
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("hash3d-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_carries_the_shipped_model_example_and_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ["models/hash3d-mini-zero123/unet/diffusion_pytorch_model.safetensors",
                 "models/hash3d-mini-zero123/model_index.json", "assets/mini_heldout_rgba.png",
                 "models/hash3d-mini-sd/unet/diffusion_pytorch_model.safetensors",
                 "models/hash3d-mini-sd/tokenizer/vocab.json", "gaussian-dreamer-configs/gaussiandreamer-sd.yaml",
                 "dreamgaussian-configs/image_mini_hash3d.yaml", "threestudio-configs/stable-zero123-mini_hash3d.yaml"]:
        assert f"hash3d/shipped/{name}" in names, name
    assert not any("__pycache__" in n for n in names)


@pytest.mark.slow
def test_installed_package_finds_its_shipped_data(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    probe = (
        "import hash3d, hash3d.shipped as s, hash3d.image_to_3d.pipeline as p\n"
        "print(hash3d.__file__)\n"
        "assert (s.MINI_MODEL / 'unet' / 'config.json').is_file() and s.EXAMPLE_INPUT.is_file()\n"
        "assert (s.MINI_SD_MODEL / 'text_encoder' / 'config.json').is_file()\n"
        "assert all(path.is_file() for pair in p.CONFIGS.values() for path in pair)\n"
        "from hash3d.image_to_3d import Variant\n"
        "from hash3d.text_to_3d import TEXT_PIPELINES\n"
        "assert all(x.config(Variant(on, 'config')).is_file() for x in TEXT_PIPELINES.values() for on in (0, 1))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(target))


def test_missing_shipped_data_is_a_clear_error(tmp_path):
    from hash3d.config.errors import UserInputError
    from hash3d.shipped import MINI_MODEL, require

    with pytest.raises(UserInputError, match="carries no shipped data.*or pass --model"):
        require(MINI_MODEL / "not-there", "the model folder", "pass --model with a Zero123-family diffusers folder")
    with pytest.raises(UserInputError, match=r"the input image not found at .*x\.png: check the path"):
        require(tmp_path / "x.png", "the input image")
