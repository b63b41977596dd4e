"""bench/vae_encoder.py on the CPU with the tiny model: every CPU variant agrees with eager, CUDA ones say so."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("vae_encoder")


def test_variants_agree_with_eager_and_the_table_reports_them(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    status = bench.main(["--device", "cpu", "--size", "tiny", "--shapes", "2x64", "--iters", "1",
                         "--variants", "eager", "benchmark", "channels_last", "bf16", "graphed",
                         "--models", str(tmp_path / "models"), "--out", str(out)])
    assert status == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["eager", "benchmark", "channels_last", "bf16", "graphed"]
    assert rows["eager"]["moments_diff"] == 0.0 and rows["eager"]["speedup"] == 1.0
    assert rows["benchmark"]["moments_diff"] == 0.0  # cuDNN autotuning does nothing on the CPU
    assert rows["channels_last"]["moments_diff"] < 1e-5 and rows["channels_last"]["grad_diff"] < 1e-5
    assert 1e-4 < rows["bf16"]["moments_diff"] < 3e-2  # bfloat16 rounding, seen and bounded
    assert rows["graphed"]["ms"] is None and rows["graphed"]["note"] == "needs CUDA"
    assert rows["eager"]["tflops"] > 0
    table = capsys.readouterr().out
    assert "| 2x64 | graphed | – | – | – | – | – | needs CUDA |" in table


def test_flops_count_the_image_gradient_of_a_frozen_encoder(bench, tmp_path):
    from hash3d.testing.models import write_model

    folder = write_model("sd", "tiny", tmp_path / "sd")
    vae = bench.load_vae("sd", folder, torch.float32, "cpu")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as forward_only, torch.no_grad():
        out = bench.moments_fn(vae)(x)
    both = bench.count_flops(vae, x, torch.ones_like(out))
    # frozen weights: the backward computes input gradients only, about one forward's worth (more for attention)
    assert 1.9 < both / forward_only.get_total_flops() < 2.6


@pytest.mark.parametrize("text, message", [("4by512", "BATCHxSIDE"), ("0x512", "multiple of 8"), ("4x100", "multiple of 8")])
def test_bad_shapes_are_refused(bench, text, message):
    with pytest.raises(SystemExit, match=message):
        bench.parse_shape(text)


def test_relative_diff_is_against_the_largest_reference_value(bench):
    reference = torch.tensor([1.0, -4.0, 2.0])
    assert bench.relative_diff(reference + torch.tensor([0.0, 0.0, 0.2]), reference) == pytest.approx(0.05)
