"""The Latent-NeRF, Gaussian-splatting, Magic3D and Magic123 configs on a CUDA GPU (gsplat, nvdiffrast, fp16
guidance, CUDA graphs, the cache), two tiny steps each with random-weight tiny models: the commands users type,
shrunk."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from hash3d.launch import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parents[1]
FRONT = REPO / "threestudio-hash3d"

SMALL = ["trainer.max_steps=2", "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=0",
         "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "use_timestamp=false"]  # fmt: skip
CASES = {
    "latentnerf_hash3d.yaml": ("sd", ["data.n_test_views=2", "data.eval_height=64", "data.eval_width=64",
                                      "system.renderer.num_samples_per_ray=64"]),
    "gaussian_splatting_zero123_hash3d.yaml": ("zero123", ["data.random_camera.n_test_views=2",
                                                           "data.random_camera.eval_height=64",
                                                           "data.random_camera.eval_width=64"]),
    "gaussian_splatting_shading_hash3d.yaml": ("sd", ["data.n_test_views=2", "data.eval_height=64",
                                                      "data.eval_width=64", "data.height=128", "data.width=128"]),
}  # fmt: skip


@pytest.mark.parametrize("config", sorted(CASES))
def test_config_trains_and_exports_on_the_gpu(config, written_models, tmp_path, monkeypatch):
    monkeypatch.chdir(FRONT)
    family, extra = CASES[config]
    args = [f"exp_root_dir={tmp_path}", f"system.guidance.pretrained_model_name_or_path={written_models[family]}",
            *SMALL, *extra]  # fmt: skip
    assert main(["--config", f"configs/{config}", "--train", "--gpu", "0", *args]) == 0
    (trial,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    assert sorted(p.name for p in (trial / "save" / "it2-test").iterdir()) == ["0.png", "1.png"]
    # the video needs imageio-ffmpeg (a warning and no file without it: tests/test_video_output.py)
    assert (trial / "save" / "it2-test.mp4").is_file() == (importlib.util.find_spec("imageio_ffmpeg") is not None)
    export = ["--config", str(trial / "configs" / "parsed.yaml"), "--export", f"resume={trial / 'ckpts' / 'last.ckpt'}"]
    if config.startswith("latentnerf"):
        export.append("system.geometry.isosurface_threshold=5")
    assert main(export) == 0
    assert any((trial / "save" / "it2-export").iterdir())


def test_isotropic_gaussians_with_an_opacity_reset_on_the_gpu(written_models, tmp_path, monkeypatch):
    """sphere: true and an opacity reset inside the run through gsplat: step 1 densifies, prunes and resets; the .ply
    export has three equal scale columns."""
    from hash3d.scene.gaussian_ply import read_ply

    monkeypatch.chdir(FRONT)
    config = "gaussian_splatting_zero123_hash3d.yaml"
    family, extra = CASES[config]
    args = [f"exp_root_dir={tmp_path}", f"system.guidance.pretrained_model_name_or_path={written_models[family]}",
            *SMALL, *extra, "system.geometry.sphere=true", "system.geometry.opacity_reset_interval=1",
            "system.geometry.prune_interval=1", "system.geometry.densification_interval=1"]  # fmt: skip
    assert main(["--config", f"configs/{config}", "--train", "--gpu", "0", *args]) == 0
    (trial,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    assert main(["--config", str(trial / "configs" / "parsed.yaml"), "--export", f"resume={trial / 'ckpts' / 'last.ckpt'}"]) == 0
    v = read_ply(trial / "save" / "it2-export" / "model_3dgs.ply")["vertex"].properties
    assert (v["scale_0"] == v["scale_1"]).all() and (v["scale_0"] == v["scale_2"]).all()


@pytest.mark.parametrize("method", ["magic3d", "magic123"])
def test_coarse_then_refine_on_the_gpu(method, written_models, tmp_path, monkeypatch):
    """The two commands users type for Magic3D / Magic123, shrunk: the coarse NeRF, then the DMTet refine from its
    checkpoint (nvdiffrast where installed, fp16 guidance, the cache on), then the textured mesh export."""
    from test_magic import export, train

    monkeypatch.chdir(FRONT)
    gpu = ("system.guidance.dtype=fp16",) + (("system.guidance_3d.dtype=fp16",) if method == "magic123" else ())
    coarse = train(f"{method}-coarse-sd_hash3d.yaml", written_models, tmp_path / "coarse", steps=2, extra=gpu)
    convert = f"system.geometry_convert_from={coarse / 'ckpts' / 'last.ckpt'}"
    refine = train(f"{method}-refine-sd_hash3d.yaml", written_models, tmp_path / "refine", steps=2,
                   extra=(*gpu, convert, "trainer.test_after_fit=false"))  # fmt: skip
    assert torch.load(refine / "ckpts" / "last.ckpt", weights_only=True)["global_step"] == 2
    mesh = export(refine, 2)
    assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()
