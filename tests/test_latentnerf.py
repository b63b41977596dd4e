"""Latent-NeRF and its RGB refinement on tiny written models: the latent path skips the VAE encoder, 4-channel
rendering, the warm-up + exponential learning-rate schedule, train / resume / export, refinement from the checkpoint."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import torch
from diffusers.models.autoencoders.vae import Encoder

from hash3d.config import load_config, twin_differences
from hash3d.launch import main
from hash3d.render.material import SD_LATENT_TO_RGB, latents_to_rgb
from hash3d.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "threestudio-hash3d" / "configs"


@pytest.fixture
def encoder_calls(monkeypatch):
    """Counts every forward of a diffusers VAE encoder in this test."""
    calls = []
    original = Encoder.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Encoder, "forward", counted)
    return calls


def small(model: str, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        f"trainer.max_steps={steps}", "trainer.val_check_interval=0", "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0", f"checkpoint.every_n_train_steps={max(steps, 1)}",
        "data.height=32", "data.width=32", "data.batch_size=1", "data.resolution_milestones=[]",
        "data.eval_height=24", "data.eval_width=24", "data.n_val_views=1", "data.n_test_views=2",
        f"exp_root_dir={out}", "use_timestamp=false", f"system.guidance.pretrained_model_name_or_path={model}",
        "system.guidance.dtype=fp32", "system.renderer.num_samples_per_ray=32", "system.geometry.isosurface_resolution=20",
        "system.geometry.pos_encoding_config.log2_hashmap_size=12",
        *extra,
    ]  # fmt: skip


def train(config: str, model: str, out: Path, steps: int, *extra: str) -> Path:
    assert main(["--config", str(CONFIGS / config), "--train", *small(model, out, steps, *extra)]) == 0
    (trial,) = [p for p in out.glob("*/*") if p.is_dir()]
    return trial


def metrics(trial: Path) -> list[dict[str, str]]:
    with open(trial / "csv_logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["latentnerf", "latentnerf-refine"])
def test_twin_configs_differ_only_in_the_cache(name):
    assert twin_differences(CONFIGS / f"{name}.yaml", CONFIGS / f"{name}_hash3d.yaml", overrides=["system.weights=x"]) == []


def test_original_file_name_is_the_hash3d_config():
    a, _ = load_config(CONFIGS / "latentnerf-hash3d.yaml")
    b, _ = load_config(CONFIGS / "latentnerf_hash3d.yaml")
    assert a == b and a.system.guidance.cache.enabled


def test_refine_without_weights_names_the_key(capsys, tmp_path):
    assert main(["--config", str(CONFIGS / "latentnerf-refine.yaml"), "--train", f"exp_root_dir={tmp_path}"]) == 2
    assert "system.weights" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_run_no_longer_than_its_warm_up_has_no_decay():
    """max_steps == warmup_steps (a 100-step latentnerf run) divided by zero in the decay rate; now its factor is 1."""
    from omegaconf import OmegaConf

    import hash3d.config.loader  # noqa: F401  (registers the resolvers)

    rates = OmegaConf.create({"n0": "${calc_exp_lr_decay_rate:0.1,0}", "short": "${calc_exp_lr_decay_rate:0.1,-70}",
                              "long": "${calc_exp_lr_decay_rate:0.1,9900}"})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an integer step count (as the configs give it) is no type warning
        assert rates.n0 == 1.0 and rates.short == 1.0 and rates.long == pytest.approx(0.1 ** (1 / 9900))


def test_latent_to_rgb_matrix():
    latent = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    expected = torch.tensor([[(0.298 + 1) / 2, (0.207 + 1) / 2, (0.208 + 1) / 2],
                             [(0.184 + 1) / 2, (0.271 + 1) / 2, (0.473 + 1) / 2]])  # fmt: skip
    assert torch.allclose(latents_to_rgb(latent), expected)


def test_latent_guidance_never_runs_the_vae_encoder(written_models, encoder_calls):
    from hash3d.diffusion.guidance import StableDiffusionGuidance, StableDiffusionGuidanceConfig

    g = StableDiffusionGuidance(StableDiffusionGuidanceConfig(pretrained_model_name_or_path=written_models["sd"], dtype="fp32"))
    g.set_prompt("a cube")
    cams = (torch.zeros(2), torch.zeros(2), torch.ones(2))
    latents = torch.randn(2, 4, 32, 32, requires_grad=True)
    g(latents, *cams, rgb_as_latents=True).loss.backward()
    assert encoder_calls == [] and latents.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="4 channels"):
        g(torch.rand(2, 3, 32, 32), *cams, rgb_as_latents=True)
    g(torch.rand(2, 3, 32, 32), *cams)
    assert len(encoder_calls) == 1  # the counter does see the encoder when RGB goes in


@pytest.mark.slow
def test_train_resume_export_and_refine(written_models, tmp_path, encoder_calls):
    sd = written_models["sd"]
    hit_friendly = ("system.guidance.cache.policy.probability=1.0", "system.guidance.cache.adaptive=false",
                    "system.guidance.cache.cell_size=[180,360,10,1000]", "trainer.test_after_fit=false",
                    "system.scheduler.warmup_steps=2")  # fmt: skip
    full = train("latentnerf_hash3d.yaml", sd, tmp_path / "full", 4, *hit_friendly)
    assert encoder_calls == []  # 4 steps of SDS on latents: the VAE encoder never ran
    # the decay rate depends on max_steps: the 2-step run gets the 4-step run's (its parsed.yaml keeps it on resume)
    schedulers = ("system.scheduler.schedulers=[{name: LinearLR, args: {start_factor: 0.1, end_factor: 1.0, total_iters: 2}},"
                  f" {{name: ExponentialLR, args: {{gamma: {0.1 ** 0.5}}}}}]")  # fmt: skip
    part = train("latentnerf_hash3d.yaml", sd, tmp_path / "part", 2, *hit_friendly, schedulers)
    assert main(["--config", str(part / "configs" / "parsed.yaml"), "--train", f"resume={part / 'ckpts' / 'last.ckpt'}",
                 "trainer.max_steps=4", "checkpoint.every_n_train_steps=4"]) == 0  # fmt: skip
    a, b = metrics(full), metrics(part)
    assert [r["train/loss"] for r in a] == [r["train/loss"] for r in b]
    assert float(a[-1]["cache/hits"]) > 0
    # warm-up 0.1x -> 1x over 2 steps, then exponential decay to 0.1x at max_steps (4)
    lrs = [float(r["lr"]) for r in a]
    assert lrs == pytest.approx([0.0055, 0.01, 0.01 * 0.1**0.5, 0.001])
    wa, wb = load_checkpoint(full / "ckpts" / "last.ckpt")["state_dict"], load_checkpoint(part / "ckpts" / "last.ckpt")["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert wa["background.network.0.weight"].shape[0] == 16 and wa["background.network.4.weight"].shape[0] == 4

    assert main(["--config", str(full / "configs" / "parsed.yaml"), "--export", f"resume={full / 'ckpts' / 'last.ckpt'}",
                 "system.geometry.isosurface_threshold=5", "system.exporter.texture_size=64"]) == 0  # fmt: skip
    assert (full / "save" / "it4-export" / "model.obj").is_file()

    # refinement: max_steps 0 keeps what was loaded, so the checkpoint shows the loaded geometry and the initial matrix
    ckpt = full / "ckpts" / "last.ckpt"
    refined = train("latentnerf-refine.yaml", sd, tmp_path / "refine0", 0, f"system.weights={ckpt}", "trainer.test_after_fit=false")
    wr = load_checkpoint(refined / "ckpts" / "last.ckpt")["state_dict"]
    assert torch.equal(wr["material.adapter"], torch.tensor(SD_LATENT_TO_RGB))
    geometry = [k for k in wa if k.startswith("geometry.")]
    assert geometry and all(torch.equal(wr[k], wa[k]) for k in geometry)
    assert wr["background.network.4.weight"].shape[0] == 3  # a fresh RGB background
    refined = train("latentnerf-refine_hash3d.yaml", sd, tmp_path / "refine", 2, f"system.weights={ckpt}",
                    "data.n_test_views=1")
    assert encoder_calls  # RGB refinement goes through the VAE encoder
    wr = load_checkpoint(refined / "ckpts" / "last.ckpt")["state_dict"]
    assert not torch.equal(wr["material.adapter"], torch.tensor(SD_LATENT_TO_RGB))  # the matrix is learned
    assert (refined / "save" / "it2-test" / "0.png").is_file()


def test_latent_stage_with_rgb_material_names_the_fix(written_models, tmp_path, capsys):
    args = small(written_models["sd"], tmp_path, 1, "system.material.n_output_dims=3")
    assert main(["--config", str(CONFIGS / "latentnerf.yaml"), "--train", *args]) == 2
    assert "system.material.n_output_dims=4" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
