"""The multi-view UNet (MVDream / ImageDream): joint attention over the views of a set, the two row orders,
ImageDream's reference frame, the written folders' layout and loading, and the full size's parameter count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hash3d.diffusion.loading import load_multiview
from hash3d.diffusion.multiview_unet import MultiViewUNetModel
from hash3d.testing.models import build_component, model_configs
from hash3d.testing.multiview_models import UNET_CONFIG_KEYS


@pytest.fixture(scope="module")
def unets(multiview_models):
    # float64: a random-weight UNet amplifies float32 rounding (batch-size dependent kernels) to ~1e-2
    return {f: load_multiview(path, f, dtype=torch.float64).unet for f, path in multiview_models.items()}


def _inputs(sets: int, frames: int, seed: int = 0, context_dim: int = 32):
    g = torch.Generator().manual_seed(seed)
    rows = sets * frames
    return dict(
        x=torch.randn(rows, 4, 8, 8, generator=g, dtype=torch.float64),
        timesteps=torch.randint(0, 1000, (rows,), generator=g),
        context=torch.randn(rows, 77, context_dim, generator=g, dtype=torch.float64),
        camera=torch.randn(rows, 16, generator=g, dtype=torch.float64),
    )


def _frame_to_view_major(t: torch.Tensor, sets: int, frames: int) -> torch.Tensor:
    return t.reshape(sets, frames, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


@torch.no_grad()
def test_self_attention_mixes_the_views_of_a_set_only(unets):
    unet = unets["mvdream"]
    inp = _inputs(2, 4)
    out = unet(**inp, num_frames=4).sample
    changed = {k: v.clone() for k, v in inp.items()}
    changed["x"][1] += 1.0  # set 0, view 1
    out2 = unet(**changed, num_frames=4).sample
    diff = (out2 - out).flatten(1).abs().amax(1)
    # every view of set 0 changes, none of set 1
    assert bool((diff[:4] > 1e-4).all()), diff
    assert float(diff[4:].max()) == 0.0
    # with one view per set, each row is on its own: equal to running the rows one by one
    single = unet(**inp, num_frames=1).sample
    alone = torch.cat([unet(**{k: v[i : i + 1] for k, v in inp.items()}, num_frames=1).sample for i in range(8)])
    torch.testing.assert_close(single, alone, atol=1e-9, rtol=1e-9)
    # and then changing one row changes no other row
    out3 = unet(**changed, num_frames=1).sample
    diff3 = (out3 - single).flatten(1).abs().amax(1)
    assert float(diff3[torch.arange(8) != 1].max()) == 0.0 and float(diff3[1]) > 1e-4


@torch.no_grad()
def test_view_major_rows_give_the_same_result_reordered(unets):
    unet = unets["mvdream"]
    sets, frames = 3, 4
    inp = _inputs(sets, frames, seed=1)
    frame_major = unet(**inp, num_frames=frames).sample
    view_inp = {k: _frame_to_view_major(v, sets, frames) for k, v in inp.items()}
    view_major = unet(**view_inp, num_frames=frames, view_major=True).sample
    torch.testing.assert_close(view_major, _frame_to_view_major(frame_major, sets, frames), atol=1e-9, rtol=1e-9)


@torch.no_grad()
def test_imagedream_reference_frame_is_overwritten(unets):
    unet = unets["imagedream"]
    sets, frames = 2, 5
    inp = _inputs(sets, frames, seed=2)
    g = torch.Generator().manual_seed(3)
    ip = torch.randn(sets * frames, 5, 1280, generator=g, dtype=torch.float64)
    ip_img = torch.randn(sets, 4, 8, 8, generator=g, dtype=torch.float64)
    out = unet(**inp, num_frames=frames, ip=ip, ip_img=ip_img).sample
    # whatever the last view's input was, the reference latent replaces it
    other = {k: v.clone() for k, v in inp.items()}
    other["x"][frames - 1 :: frames] = torch.randn(sets, 4, 8, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(unet(**other, num_frames=frames, ip=ip, ip_img=ip_img).sample, out)
    # the same as writing it in by hand, and the caller's tensor is left alone
    by_hand = {k: v.clone() for k, v in inp.items()}
    by_hand["x"][frames - 1 :: frames] = ip_img
    before = inp["x"].clone()
    torch.testing.assert_close(unet(**by_hand, num_frames=frames, ip=ip, ip_img=ip_img).sample, out)
    assert torch.equal(inp["x"], before)
    # a different reference changes every view of its set
    out2 = unet(**inp, num_frames=frames, ip=ip, ip_img=ip_img + 1.0).sample
    assert bool(((out2 - out).flatten(1).abs().amax(1) > 1e-4).all())
    # in view-major order, with one reference latent per row (as a row-split cache call passes it)
    view_inp = {k: _frame_to_view_major(v, sets, frames) for k, v in inp.items()}
    per_row = ip_img.repeat(frames, 1, 1, 1)
    out_vm = unet(**view_inp, num_frames=frames, ip=_frame_to_view_major(ip, sets, frames), ip_img=per_row,
                  view_major=True).sample  # fmt: skip
    torch.testing.assert_close(out_vm, _frame_to_view_major(out, sets, frames), atol=1e-9, rtol=1e-9)


def test_missing_conditions_are_clear_errors(unets):
    inp = _inputs(1, 4)
    with pytest.raises(ValueError, match="needs `camera`"):
        unets["mvdream"](**{**inp, "camera": None}, num_frames=4)
    with pytest.raises(ValueError, match="not a multiple of num_frames=3"):
        unets["mvdream"](**inp, num_frames=3)
    with pytest.raises(ValueError, match="ImageDream's UNet needs `ip`"):
        unets["imagedream"](**_inputs(1, 5), num_frames=5)


def test_written_folders_have_the_converted_layout(multiview_models):
    for family, path in multiview_models.items():
        root = Path(path)
        index = json.loads((root / "model_index.json").read_text())
        assert index["_class_name"] == "MVDreamPipeline"
        assert index["unet"] == ["mv_unet", "MultiViewUNetModel"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
        assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
        image = family == "imagedream"
        assert index["image_encoder"] == (["transformers", "CLIPVisionModel"] if image else [None, None])
        expected = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} | ({"image_encoder", "feature_extractor"} if image else set())
        assert {p.name for p in root.iterdir() if p.is_dir()} == expected
        assert (root / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        unet_config = json.loads((root / "unet" / "config.json").read_text())
        assert set(unet_config) == set(UNET_CONFIG_KEYS[family]) | {"_class_name", "_diffusers_version"}
        assert unet_config["_class_name"] == "MultiViewUNetModel" and unet_config["camera_dim"] == 16
        scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["steps_offset"]) == (0.00085, 0.012, 1)


def test_loading_checks_the_family(multiview_models, tmp_path):
    with pytest.raises(ValueError, match="holds an ImageDream UNet.*load it as imagedream"):
        load_multiview(multiview_models["imagedream"], "mvdream")
    with pytest.raises(FileNotFoundError, match="missing the subfolders 'image_encoder', 'feature_extractor'.*looks like an MVDream"):
        load_multiview(multiview_models["mvdream"], "imagedream")
    with pytest.raises(ValueError, match="family must be 'mvdream' or 'imagedream'"):
        load_multiview(multiview_models["mvdream"], "sd")
    (tmp_path / "m" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing the subfolders 'vae', 'text_encoder', 'tokenizer', 'scheduler'"):
        load_multiview(tmp_path / "m", "mvdream")


def _documented_keys(n_res: int = 2) -> list[str]:
    """Key patterns of the converted checkpoints (shared/reference/upstream-wave2.md §e.6), SD-2.1 sizes."""
    t = "transformer_blocks.0."
    keys = ["time_embed.0.weight", "time_embed.2.bias", "camera_embed.0.weight", "camera_embed.2.weight",
            "input_blocks.0.0.weight", "input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.in_layers.2.weight",
            "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.0.out_layers.0.weight",
            "input_blocks.1.0.out_layers.3.weight", "input_blocks.4.0.skip_connection.weight",
            "input_blocks.1.1.norm.weight", "input_blocks.1.1.proj_in.weight", "input_blocks.1.1.proj_out.weight",
            "input_blocks.3.0.op.weight", "input_blocks.6.0.op.weight", "input_blocks.9.0.op.weight",
            "middle_block.0.in_layers.0.weight", "middle_block.2.out_layers.3.weight",
            "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight", "output_blocks.8.2.conv.weight",
            "out.0.weight", "out.2.weight"]  # fmt: skip
    for part in ("norm1", "norm2", "norm3", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                 "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"):  # fmt: skip
        keys += [f"input_blocks.1.1.{t}{part}.weight", f"middle_block.1.{t}{part}.weight"]
    return keys


def _parameter_count_from_config(config: dict, sd_unet_parameters: int) -> int:
    """MVDream = the SD 2.1 UNet (the conversion maps it one to one) + the camera MLP; ImageDream adds the image
    keys/values of every cross-attention and the resampler (IP-Adapter-Plus sizes, fixed upstream)."""
    emb = 4 * config["model_channels"]
    total = sd_unet_parameters + (config["camera_dim"] * emb + emb) + (emb * emb + emb)
    ip = config.get("ip_dim", 0)
    if ip:
        ctx, mc, mult, n = config["context_dim"], config["model_channels"], config["channel_mult"], config["num_res_blocks"]
        attn_levels = [i for i in range(len(mult)) if 2**i in config["attention_resolutions"]]
        widths = [mc * mult[i] for i in attn_levels for _ in range(n)]  # down
        widths += [mc * mult[-1]]  # middle
        widths += [mc * mult[i] for i in attn_levels for _ in range(n + 1)]  # up
        total += sum(2 * ctx * w for w in widths)
        inner, feat = 12 * 64, 1280
        layer = 4 * ctx + ctx * inner + ctx * 2 * inner + inner * ctx + 2 * ctx + 2 * ctx * 4 * ctx
        total += ip * ctx + (feat * ctx + ctx) + (ctx * ctx + ctx) + 2 * ctx + 4 * layer
    return total


@pytest.mark.parametrize("family", ["mvdream", "imagedream"])
def test_full_size_matches_the_real_model(family):
    config = model_configs(family, "full")["unet"]
    with torch.device("meta"):
        unet = build_component("unet", config)
        sd = build_component("unet", model_configs("sd", "full")["unet"])
    count = sum(p.numel() for p in unet.parameters())
    sd_count = sum(p.numel() for p in sd.parameters())
    assert sd_count == 865_910_724  # stable-diffusion-2-1-base's UNet
    assert count == _parameter_count_from_config(config, sd_count)
    assert count == {"mvdream": 867_572_164, "imagedream": 941_672_900}[family]
    state = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    missing = [k for k in _documented_keys() if k not in state]
    assert not missing, missing
    assert state["camera_embed.0.weight"] == (1280, 16) and state["input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert state["output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3) and state["out.2.weight"] == (4, 320, 3, 3)
    assert state["middle_block.1.transformer_blocks.0.attn2.to_k.weight"] == (1280, 1024)
    # the SD-2.1 UNet has as many tensors as this one, less the camera MLP (and ImageDream's additions)
    extra = 4 + (2 * 16 + 7 + 4 * 11 if family == "imagedream" else 0)
    assert len(state) == len(sd.state_dict()) + extra
    if family == "imagedream":
        assert state["input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"] == (320, 1024)
        assert state["image_embed.latents"] == (1, 16, 1024) and state["image_embed.proj_in.weight"] == (1024, 1280)
        assert state["image_embed.layers.3.0.to_kv.weight"] == (1536, 1024)
        assert state["image_embed.layers.0.1.3.weight"] == (1024, 4096)
    else:
        assert not any("_ip" in k or k.startswith("image_embed") for k in state)


def test_write_model_command_line(tmp_path, capsys):
    from hash3d.testing.__main__ import main

    assert main(["write-model", "mvdream", "tiny", str(tmp_path / "mv")]) == 0
    assert "wrote tiny mvdream model" in capsys.readouterr().out
    parts = load_multiview(tmp_path / "mv", "mvdream")
    assert isinstance(parts.unet, MultiViewUNetModel) and parts.image_encoder is None
    assert parts.unet.config.image_size == 8 and parts.tokenizer.model_max_length == 77
