"""bench/model_variants.py on the CPU with the tiny models: every CPU variant agrees with eager, CUDA ones say so."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("model_variants")


def _rows(bench, tmp_path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "rows.json"
    status = bench.main(["--device", "cpu", "--size", "tiny", "--iters", "1", "--models", str(tmp_path / "models"),
                         "--out", str(out), *args])
    return status, json.loads(out.read_text())


def test_vae_variants_agree_with_eager_and_the_table_reports_them(bench, tmp_path, capsys):
    status, result = _rows(bench, tmp_path, "--part", "vae", "--shapes", "2x64",
                           "--variants", "eager", "benchmark", "channels_last", "bf16", "graphed")
    assert status == 0
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["eager", "benchmark", "channels_last", "bf16", "graphed"]
    assert rows["eager"]["out_diff"] == 0.0 and rows["eager"]["speedup"] == 1.0
    assert rows["benchmark"]["out_diff"] == 0.0  # cuDNN autotuning does nothing on the CPU
    assert rows["channels_last"]["out_diff"] < 1e-5 and rows["channels_last"]["grad_diff"] < 1e-5
    assert 1e-4 < rows["bf16"]["out_diff"] < 3e-2  # bfloat16 rounding, seen and bounded
    assert rows["graphed"]["ms"] is None and rows["graphed"]["note"] == "needs CUDA"
    assert rows["eager"]["tflops"] > 0
    table = capsys.readouterr().out
    assert table.count("Row(shape='2x64'") == 5  # each row printed as it is measured, before the table
    assert table.index("variant='graphed'") < table.index("### VAE encoder")
    assert "VAE encoder forward + backward, sd (tiny), cpu" in table
    assert "| 2x64 | graphed | – | – | – | – | – | needs CUDA |" in table


def test_unet_variants_run_a_forward_only_with_the_familys_conditioning(bench, tmp_path, capsys):
    status, result = _rows(bench, tmp_path, "--part", "unet", "--family", "zero123", "--shapes", "2x16",
                           "--variants", "eager", "channels_last", "bf16", "compiled+graphed")
    assert status == 0 and result["part"] == "unet" and result["family"] == "zero123"
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["eager"]["out_diff"] == 0.0 and rows["eager"]["grad_diff"] is None  # no backward through the UNet
    assert rows["channels_last"]["out_diff"] < 1e-5
    assert 1e-4 < rows["bf16"]["out_diff"] < 3e-2
    assert rows["compiled+graphed"]["note"] == "needs CUDA"
    assert "UNet forward, zero123 (tiny), cpu" in capsys.readouterr().out


def test_unet_inputs_follow_the_model_config(bench, tmp_path):
    from hash3d.testing.models import write_model

    for family, channels, tokens in (("sd", 4, 77), ("zero123", 8, 1)):
        unet = bench.load_part("unet", family, write_model(family, "tiny", tmp_path / family), torch.float32, "cpu")
        sample, t, context = bench.make_inputs("unet", family, unet, 6, 16, torch.float32, torch.Generator().manual_seed(0))
        assert sample.shape == (6, channels, 16, 16) and t.shape == (6,) and t.dtype == torch.int64
        assert context.shape == (6, tokens, unet.config.cross_attention_dim)
        with torch.no_grad():
            assert bench.noise_fn(unet)(sample, t, context).shape == (6, 4, 16, 16)


def test_flops_count_the_image_gradient_of_a_frozen_encoder(bench, tmp_path):
    from hash3d.testing.models import write_model

    folder = write_model("sd", "tiny", tmp_path / "sd")
    vae = bench.load_part("vae", "sd", folder, torch.float32, "cpu")
    inputs = (torch.rand(1, 3, 64, 64) * 2 - 1,)
    forward_only = bench.count_flops("vae", vae, inputs, None)
    with torch.no_grad():
        out = bench.moments_fn(vae)(*inputs)
    both = bench.count_flops("vae", vae, inputs, torch.ones_like(out))
    # frozen weights: the backward computes input gradients only, about one forward's worth (more for attention)
    assert 1.9 < both / forward_only < 2.6


@pytest.mark.parametrize("text, message", [("4by512", "BATCHxSIDE"), ("0x512", "multiple of 8"), ("4x100", "multiple of 8")])
def test_bad_shapes_are_refused(bench, text, message):
    with pytest.raises(SystemExit, match=message):
        bench.parse_shape(text)


def test_relative_diff_is_against_the_largest_reference_value(bench):
    reference = torch.tensor([1.0, -4.0, 2.0])
    assert bench.relative_diff(reference + torch.tensor([0.0, 0.0, 0.2]), reference) == pytest.approx(0.05)
