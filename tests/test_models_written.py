"""Random-weight models written in the real diffusers layout, loaded back through hash3d.diffusion.loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from hash3d.diffusion.camera_projection import CameraProjection, ClipCameraProjectionLayout
from hash3d.diffusion.loading import (
    CLIPImageProcessor,
    StableDiffusionParts,
    Zero123Parts,
    load_stable_diffusion,
    load_zero123,
)
from hash3d.testing import CLIP_TOKENIZER_VOCAB_SIZE, write_model
from hash3d.testing.models import TINY_IMAGE_SIZE, TINY_LATENT_SIZE, build_component, model_configs


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return write_model("sd", "tiny", tmp_path_factory.mktemp("sd") / "model")


@pytest.fixture(scope="module")
def zero123_dir(tmp_path_factory) -> Path:
    return write_model("zero123", "tiny", tmp_path_factory.mktemp("zero123") / "model")


@pytest.fixture(scope="module")
def sd(sd_dir) -> StableDiffusionParts:
    return load_stable_diffusion(sd_dir)


@pytest.fixture(scope="module")
def zero123(zero123_dir) -> Zero123Parts:
    return load_zero123(zero123_dir)


def _frozen_eval(*models):
    for model in models:
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Layout on disk


def test_sd_layout_on_disk(sd_dir):
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (sd_dir / sub).is_dir(), sub
    index = json.loads((sd_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert (sd_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (sd_dir / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (sd_dir / "text_encoder" / "model.safetensors").is_file()
    scheduler = json.loads((sd_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler"


def test_zero123_layout_on_disk(zero123_dir):
    for sub in ("unet", "vae", "image_encoder", "feature_extractor", "cc_projection", "scheduler"):
        assert (zero123_dir / sub).is_dir(), sub
    index = json.loads((zero123_dir / "model_index.json").read_text())
    assert index["_class_name"] == "Zero1to3StableDiffusionPipeline"
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    cc = json.loads((zero123_dir / "cc_projection" / "config.json").read_text())
    assert cc["_class_name"] == "CCProjection" and set(cc) >= {"in_channel", "out_channel"}
    keys = set(load_file(zero123_dir / "cc_projection" / "diffusion_pytorch_model.safetensors"))
    assert keys == {"projection.weight", "projection.bias"}
    assert (zero123_dir / "feature_extractor" / "preprocessor_config.json").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Loading


def test_load_sd_tiny(sd):
    assert isinstance(sd.unet, UNet2DConditionModel)
    assert isinstance(sd.vae, AutoencoderKL)
    assert isinstance(sd.text_encoder, CLIPTextModel)
    assert isinstance(sd.tokenizer, CLIPTokenizer)
    assert type(sd.scheduler) is DDPMScheduler
    _frozen_eval(sd.unet, sd.vae, sd.text_encoder)
    assert sd.unet.config.in_channels == 4
    assert sd.unet.config.sample_size == TINY_LATENT_SIZE
    assert sd.unet.config.use_linear_projection
    assert sd.unet.config.cross_attention_dim == sd.text_encoder.config.hidden_size
    assert sd.text_encoder.config.vocab_size == CLIP_TOKENIZER_VOCAB_SIZE
    assert sd.vae.config.scaling_factor == pytest.approx(0.18215)
    cfg = sd.scheduler.config
    assert (cfg.prediction_type, cfg.beta_schedule, cfg.num_train_timesteps) == ("epsilon", "scaled_linear", 1000)
    assert (cfg.beta_start, cfg.beta_end) == pytest.approx((0.00085, 0.012))
    assert cfg.clip_sample is False


def test_sd_tokenizer_text_encoder_unet_vae_run(sd):
    tok = sd.tokenizer
    ids = tok(["a photo of a hamburger", "x"], padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (2, tok.model_max_length) == (2, 77)
    assert int(ids.max()) < sd.text_encoder.config.vocab_size
    with torch.no_grad():
        emb = sd.text_encoder(ids).last_hidden_state
        assert emb.shape == (2, 77, sd.unet.config.cross_attention_dim)
        latents = torch.randn(4, 4, TINY_LATENT_SIZE, TINY_LATENT_SIZE)
        out = sd.unet(latents, torch.tensor([10, 200, 500, 999]), encoder_hidden_states=emb[:1].expand(4, -1, -1))
        assert out.sample.shape == latents.shape
        assert torch.isfinite(out.sample).all()
        image = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) * 2 - 1
        z = sd.vae.encode(image).latent_dist.mean
        assert z.shape == (2, 4, TINY_LATENT_SIZE, TINY_LATENT_SIZE)
        assert sd.vae.decode(z).sample.shape == image.shape


def test_tiny_unet_forward_is_fast(sd):
    latents = torch.randn(4, 4, TINY_LATENT_SIZE, TINY_LATENT_SIZE)
    emb = torch.randn(4, 77, sd.unet.config.cross_attention_dim)
    t = torch.tensor([500] * 4)
    times = []
    with torch.no_grad():  # (one thread, see conftest.py)
        sd.unet(latents, t, encoder_hidden_states=emb)
        for _ in range(5):
            start = time.perf_counter()
            sd.unet(latents, t, encoder_hidden_states=emb)
            times.append(time.perf_counter() - start)
    # ~16 ms on one core here; loose bound so that a busy machine does not fail it
    assert sorted(times)[2] < 0.1


def test_load_zero123_tiny(zero123):
    assert isinstance(zero123.unet, UNet2DConditionModel)
    assert isinstance(zero123.vae, AutoencoderKL)
    assert isinstance(zero123.image_encoder, CLIPVisionModelWithProjection)
    assert isinstance(zero123.feature_extractor, CLIPImageProcessor)
    assert isinstance(zero123.cc_projection, CameraProjection)
    assert type(zero123.scheduler) is DDPMScheduler
    _frozen_eval(zero123.unet, zero123.vae, zero123.image_encoder, zero123.cc_projection)
    assert zero123.unet.config.in_channels == 8
    assert zero123.unet.config.out_channels == 4
    assert zero123.unet.config.sample_size == TINY_LATENT_SIZE
    proj_dim = zero123.image_encoder.config.projection_dim
    assert zero123.cc_projection.config.in_channel == proj_dim + 4
    assert zero123.cc_projection.config.out_channel == zero123.unet.config.cross_attention_dim
    assert zero123.scheduler.config.prediction_type == "epsilon"


def test_zero123_pipeline_pieces_run(zero123):
    from PIL import Image

    images = [Image.new("RGB", (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), c) for c in ("red", "white")]
    pixels = zero123.feature_extractor(images=images, return_tensors="pt").pixel_values
    side = zero123.image_encoder.config.image_size
    assert pixels.shape == (2, 3, side, side)
    with torch.no_grad():
        embeds = zero123.image_encoder(pixels).image_embeds  # (2, projection_dim)
        camera = torch.tensor([[0.1, 0.0, 1.0, 0.0], [0.2, 1.0, 0.0, 0.0]])
        cond = zero123.cc_projection(torch.cat([embeds, camera], -1)[:, None])
        assert cond.shape == (2, 1, zero123.unet.config.cross_attention_dim)
        latents = torch.randn(4, 8, TINY_LATENT_SIZE, TINY_LATENT_SIZE)
        out = zero123.unet(latents, torch.tensor([20, 300, 600, 900]), encoder_hidden_states=cond.repeat(2, 1, 1))
        assert out.sample.shape == (4, 4, TINY_LATENT_SIZE, TINY_LATENT_SIZE)


def test_sd_folder_loads_with_stock_diffusers_pipeline(sd_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_dir)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a cat", num_inference_steps=2, height=TINY_IMAGE_SIZE, width=TINY_IMAGE_SIZE,
                 output_type="np").images
    assert image.shape == (1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)


def test_prediction_type_and_dtype_round_trip(tmp_path):
    path = write_model("sd", "tiny", tmp_path / "v", prediction_type="v_prediction", dtype=torch.float16, seed=3)
    stored = load_file(path / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(t.dtype == torch.float16 for t in stored.values())
    assert json.loads((path / "model_index.json").read_text())["scheduler"] == ["diffusers", "DDIMScheduler"]
    parts = load_stable_diffusion(path, dtype=torch.float16)
    assert parts.scheduler.config.prediction_type == "v_prediction"
    assert parts.unet.dtype == torch.float16 and parts.text_encoder.dtype == torch.float16
    parts32 = load_stable_diffusion(path)  # fp16 on disk, fp32 asked for
    assert parts32.unet.dtype == torch.float32 and parts32.vae.dtype == torch.float32


def test_weights_deterministic_per_seed(tmp_path, sd_dir):
    again = write_model("sd", "tiny", tmp_path / "again", seed=0)
    other = write_model("sd", "tiny", tmp_path / "other", seed=1)
    for sub, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                      ("text_encoder", "model")):
        a = load_file(sd_dir / sub / f"{name}.safetensors")
        b = load_file(again / sub / f"{name}.safetensors")
        c = load_file(other / sub / f"{name}.safetensors")
        assert a.keys() == b.keys() == c.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), sub
        varying = [k for k in a if a[k].std() > 0]  # norms start at exactly 1/0 whatever the seed
        assert varying and all(not torch.equal(a[k], c[k]) for k in varying), sub


def test_clip_camera_projection_layout(tmp_path, zero123_dir, zero123):
    """ashawkey/bennyguo folders store the projection as clip_camera_projection/ (embedding_dim, proj)."""
    path = tmp_path / "zero123_clip_camera"
    shutil.copytree(zero123_dir, path)
    shutil.rmtree(path / "cc_projection")
    reference = zero123.cc_projection
    legacy = ClipCameraProjectionLayout(embedding_dim=reference.embedding_dim, additional_embeddings=4)
    with torch.no_grad():
        legacy.proj.weight.copy_(reference.projection.weight)
        legacy.proj.bias.copy_(reference.projection.bias)
    legacy.save_pretrained(path / "clip_camera_projection")
    config_file = path / "clip_camera_projection" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "_class_name": "CLIPCameraProjection"}))
    loaded = load_zero123(path).cc_projection
    assert isinstance(loaded, CameraProjection)
    assert torch.equal(loaded.projection.weight, reference.projection.weight)
    assert torch.equal(loaded.projection.bias, reference.projection.bias)
    _frozen_eval(loaded)


def _one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_cli_writes_loadable_folder(tmp_path):
    out = tmp_path / "cli_model"
    result = subprocess.run(
        [sys.executable, "-m", "hash3d.testing", "write-model", "zero123", "tiny", str(out),
         "--dtype", "fp16", "--seed", "5", "--prediction-type", "v_prediction"],
        capture_output=True, text=True, timeout=120, env=_one_thread_env(),
    )
    assert result.returncode == 0, result.stderr
    assert str(out.resolve()) in result.stdout
    parts = load_zero123(out)
    assert parts.unet.config.in_channels == 8
    assert parts.scheduler.config.prediction_type == "v_prediction"
    stored = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(t.dtype == torch.float16 for t in stored.values())


def test_cli_rejects_bad_arguments(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hash3d.testing", "write-model", "sdxl", "tiny", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=60, env=_one_thread_env(),
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr and "zero123" in result.stderr
    assert not (tmp_path / "x").exists()


def test_write_model_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="family"):
        write_model("sdxl", "tiny", tmp_path / "a")
    with pytest.raises(ValueError, match="size"):
        write_model("sd", "huge", tmp_path / "a")
    with pytest.raises(ValueError, match="prediction_type"):
        write_model("sd", "tiny", tmp_path / "a", prediction_type="flow")


# ---------------------------------------------------------------------------------------------------------------
# Full-size architectures: parameter counts of the real models, built on the meta device (no memory, no init)


def _meta_params(family: str, part: str) -> int:
    with torch.device("meta"):
        model = build_component(part, model_configs(family, "full")[part])
    assert next(model.parameters()).device.type == "meta"
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "family, part, count",
    [
        ("sd", "unet", 865_910_724),  # stable-diffusion-2-1-base
        ("sd", "vae", 83_653_863),
        ("sd", "text_encoder", 340_387_840),  # OpenCLIP ViT-H/14 text tower
        ("zero123", "unet", 859_532_484),  # SD 1.x UNet with 8 input channels
        ("zero123", "vae", 83_653_863),
        ("zero123", "image_encoder", 303_966_208),  # CLIP ViT-L/14 vision tower + 768-d projection
        ("zero123", "cc_projection", 772 * 768 + 768),
    ],
)
def test_full_size_parameter_counts(family, part, count):
    assert _meta_params(family, part) == count


def test_full_size_configs_match_real_models():
    sd = model_configs("sd", "full")
    assert sd["unet"]["attention_head_dim"] == [5, 10, 20, 20]
    assert sd["unet"]["cross_attention_dim"] == 1024 and sd["unet"]["use_linear_projection"]
    assert sd["unet"]["sample_size"] == 64
    assert sd["text_encoder"]["vocab_size"] == 49408 and sd["text_encoder"]["num_hidden_layers"] == 23
    z = model_configs("zero123", "full")
    assert z["unet"]["in_channels"] == 8 and z["unet"]["cross_attention_dim"] == 768
    assert z["unet"]["sample_size"] == 32
    assert z["image_encoder"]["image_size"] == 224 and z["image_encoder"]["patch_size"] == 14
    assert z["feature_extractor"]["crop_size"] == {"height": 224, "width": 224}
    assert z["cc_projection"] == {"in_channel": 772, "out_channel": 768}


# ---------------------------------------------------------------------------------------------------------------
# Error messages


def test_missing_subfolder(tmp_path, sd_dir):
    partial = tmp_path / "partial"
    shutil.copytree(sd_dir, partial)
    shutil.rmtree(partial / "vae")
    with pytest.raises(FileNotFoundError) as info:
        load_stable_diffusion(partial)
    message = str(info.value)
    assert "'vae'" in message and "Stable Diffusion layout" in message and str(partial) in message
    assert "text_encoder/" in message  # says which layout is expected


def test_missing_camera_projection_subfolder(tmp_path, zero123_dir):
    partial = tmp_path / "partial"
    shutil.copytree(zero123_dir, partial)
    shutil.rmtree(partial / "cc_projection")
    with pytest.raises(FileNotFoundError, match=r"cc_projection \(or clip_camera_projection\).*Zero123 layout"):
        load_zero123(partial)


def test_wrong_family_says_which_loader(sd_dir, zero123_dir):
    with pytest.raises(FileNotFoundError, match=r"'image_encoder'.*load_stable_diffusion\(\)"):
        load_zero123(sd_dir)
    with pytest.raises(FileNotFoundError, match=r"'text_encoder'.*load_zero123\(\)"):
        load_stable_diffusion(zero123_dir)


def test_missing_path(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError) as info:
        load_stable_diffusion(str(missing))
    assert str(missing) in str(info.value) and "not a Hugging Face hub id" in str(info.value)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face hub id"):
        load_zero123("./models/zero123")
    with pytest.raises(FileNotFoundError, match="No folder"):
        load_zero123(missing)  # a Path is never taken for a hub id


def test_file_instead_of_folder(sd_dir):
    with pytest.raises(ValueError, match="is a file"):
        load_stable_diffusion(sd_dir / "model_index.json")


def test_offline_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "stabilityai/stable-diffusion-2-1-base"
    with pytest.raises(FileNotFoundError) as info:
        load_stable_diffusion(repo)
    message = str(info.value)
    assert f"huggingface-cli download {repo}" in message
    assert "local folder" in message and "offline" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained library traceback
    with pytest.raises(FileNotFoundError, match="huggingface-cli download ashawkey/stable-zero123-diffusers"):
        load_zero123("ashawkey/stable-zero123-diffusers")


def test_local_files_only_hub_id(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download bennyguo/zero123-xl-diffusers"):
        load_zero123("bennyguo/zero123-xl-diffusers", local_files_only=True)
