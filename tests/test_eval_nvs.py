"""eval_nvs.py and hash3d.eval: PSNR / SSIM / LPIPS over paired views, on small written image sets."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import subprocess
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from hash3d.eval import EvalError, LPIPSDistance, NVSConfig, evaluate_nvs, load_lpips, psnr, ssim
from hash3d.eval.images import composite, read_image
from hash3d.eval.perceptual import LPIPSStatus

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import eval_nvs  # noqa: E402  (the top-level script, imported for in-process runs)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _write_png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour)."""
    array = np.asarray(array, dtype=">u2")
    if array.ndim == 2:
        array = array[..., None]
    height, width, channels = array.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + array[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _noisy_set(tmp_path: Path, n: int = 3, size: int = 32, seed: int = 0) -> tuple[Path, Path, list, list]:
    rng = np.random.default_rng(seed)
    gts, prs = [], []
    for i in range(n):
        gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pr = np.clip(gt.astype(int) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
        _save(tmp_path / "gt" / f"{i:03d}.png", gt)
        _save(tmp_path / "pr" / f"{i:03d}.png", pr)
        gts.append(gt / 255.0)
        prs.append(pr / 255.0)
    return tmp_path / "gt", tmp_path / "pr", gts, prs


def _cfg(gt, pr, **kw) -> NVSConfig:
    kw.setdefault("lpips_net", None)
    kw.setdefault("device", "cpu")
    return NVSConfig(gt_dir=gt, pred_dir=pr, **kw)


# ---------------------------------------------------------------- metrics against scikit-image


@pytest.mark.parametrize("shape,noise", [((37, 41, 3), 0.05), ((64, 48, 3), 0.2), ((20, 23, 1), 0.1), ((11, 11, 3), 0.3)])
def test_psnr_ssim_match_scikit_image(shape, noise):
    rng = np.random.default_rng(1)
    a = rng.random(shape)
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1)
    expected_ssim = structural_similarity(
        a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert abs(float(ssim(_t(a), _t(b))[0]) - expected_ssim) < 1e-4
    assert abs(float(psnr(_t(a), _t(b))[0]) - peak_signal_noise_ratio(a, b, data_range=1.0)) < 1e-4
    # float32 inputs and a batch give the same per-image values
    batch_a, batch_b = torch.stack([_t(a), _t(b)]).float(), torch.stack([_t(b), _t(a)]).float()
    assert torch.allclose(ssim(batch_a, batch_b), torch.full((2,), expected_ssim, dtype=torch.float32), atol=1e-4)


def test_ssim_too_small_is_an_error():
    with pytest.raises(EvalError, match="at least 11"):
        ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 8))


def test_known_noise_level_gives_expected_psnr(tmp_path):
    # ±8 grey levels on a checkerboard, never clipped: MSE = (8/255)² exactly.
    base = np.full((32, 32, 3), 128, dtype=np.uint8)
    sign = np.where((np.add.outer(np.arange(32), np.arange(32)) % 2)[..., None] == 0, 1, -1)
    _save(tmp_path / "gt" / "0.png", base)
    _save(tmp_path / "pr" / "0.png", (base + 8 * sign).astype(np.uint8))
    # Gaussian noise of σ = 4 grey levels: PSNR ≈ 20·log10(255/4) = 36.09 dB
    rng = np.random.default_rng(0)
    _save(tmp_path / "gt" / "1.png", base)
    _save(tmp_path / "pr" / "1.png", np.clip(np.round(128 + 4 * rng.standard_normal((32, 32, 3))), 0, 255).astype(np.uint8))
    table = evaluate_nvs(_cfg(tmp_path / "gt", tmp_path / "pr"))
    assert table.rows == ["0", "1"]
    assert table.columns["psnr"][0] == pytest.approx(20 * math.log10(255 / 8), abs=1e-9)
    assert table.columns["psnr"][1] == pytest.approx(20 * math.log10(255 / 4), abs=0.15)


def test_identical_images_inf_psnr_ssim_one(tmp_path):
    gt, _, _, _ = _noisy_set(tmp_path)
    table = evaluate_nvs(_cfg(gt, gt, out=tmp_path / "r.json"))
    assert all(math.isinf(v) and v > 0 for v in table.columns["psnr"])
    assert table.columns["ssim"] == [1.0, 1.0, 1.0]
    text = table.to_text()
    assert "inf" in text and "1.0000" in text and "3 of 3 infinite" in text
    data = json.loads(table.write(tmp_path / "r.json").read_text())  # strict JSON: no Infinity
    assert data["summary"]["psnr"]["mean"] == "inf" and data["summary"]["psnr"]["n_infinite"] == 3
    assert data["items"][0]["psnr"] == "inf" and data["summary"]["ssim"]["mean"] == 1.0


def test_some_identical_reports_finite_mean_too(tmp_path):
    gt, pr, gts, prs = _noisy_set(tmp_path)
    _save(pr / "001.png", (gts[1] * 255).round().astype(np.uint8))
    table = evaluate_nvs(_cfg(gt, pr))
    finite = [peak_signal_noise_ratio(gts[i], prs[i], data_range=1.0) for i in (0, 2)]
    stat = table.summary()["psnr"]
    assert math.isinf(stat.mean) and stat.n_infinite == 1
    assert stat.finite_mean == pytest.approx(np.mean(finite), abs=1e-9)
    assert "1 of 3 infinite; the other 2:" in table.to_text()


# ---------------------------------------------------------------- image handling


def test_rgba_is_composited_on_background(tmp_path):
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (24, 24, 4), dtype=np.uint8)
    rgba[:12, :, 3] = 0
    rgba[12:, :, 3] = 255
    rgba[12:14, :, 3] = 100  # partial alpha
    _save(tmp_path / "gt" / "000.png", rgba)
    alpha = rgba[..., 3:] / 255.0
    on_white = rgba[..., :3] / 255.0 * alpha + (1 - alpha)
    assert np.allclose(composite(read_image(tmp_path / "gt" / "000.png")[0], (1.0, 1.0, 1.0)), on_white)
    _save(tmp_path / "pr" / "000.png", (on_white * 255).round().astype(np.uint8))
    white = evaluate_nvs(_cfg(tmp_path / "gt", tmp_path / "pr", background="white"))
    black = evaluate_nvs(_cfg(tmp_path / "gt", tmp_path / "pr", background="black"))
    # the prediction equals the white composite up to 8-bit rounding of the partially transparent rows
    assert white.columns["psnr"][0] > 50 and white.columns["ssim"][0] > 0.999
    assert black.columns["psnr"][0] < 10
    with pytest.raises(EvalError, match="not a colour"):
        _cfg(tmp_path / "gt", tmp_path / "pr", background="purple-ish")


def test_grayscale_and_16bit_inputs(tmp_path):
    rng = np.random.default_rng(3)
    gray16 = rng.integers(0, 65536, (20, 20), dtype=np.uint16)
    _write_png16(tmp_path / "gt" / "000.png", gray16)
    pixels, info = read_image(tmp_path / "gt" / "000.png")
    assert info.bit_depth == 16 and info.channels == 1 and info.precision_note is None
    assert np.allclose(pixels[..., 0], gray16 / 65535.0)
    gray8 = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    _save(tmp_path / "pr" / "000.png", gray8)  # 8-bit grayscale prediction
    rgb16 = rng.integers(0, 65536, (20, 20, 3), dtype=np.uint16)
    _write_png16(tmp_path / "gt" / "001.png", rgb16)
    _save(tmp_path / "pr" / "001.png", (rgb16 >> 8).astype(np.uint8))
    la16 = rng.integers(0, 65536, (20, 20, 2), dtype=np.uint16)
    _write_png16(tmp_path / "gt" / "002.png", la16)
    _save(tmp_path / "pr" / "002.png", np.full((20, 20, 3), 255, np.uint8))

    table = evaluate_nvs(_cfg(tmp_path / "gt", tmp_path / "pr"))
    expected0 = peak_signal_noise_ratio(np.repeat((gray16 / 65535.0)[..., None], 3, 2), np.repeat((gray8 / 255.0)[..., None], 3, 2), data_range=1.0)
    assert table.columns["psnr"][0] == pytest.approx(expected0, abs=1e-6)
    assert math.isinf(table.columns["psnr"][1])  # 16-bit colour is read at 8-bit precision, and says so
    assert any("16-bit colour PNG read with 8-bit precision" in n for n in table.notes)
    g, a = (la16[..., 0] >> 8) / 255.0, (la16[..., 1] >> 8) / 255.0
    on_white = np.repeat((g * a + (1 - a))[..., None], 3, 2)
    assert table.columns["psnr"][2] == pytest.approx(peak_signal_noise_ratio(on_white, np.ones_like(on_white), data_range=1.0), abs=1e-6)


def test_different_sizes_are_resized_and_said(tmp_path):
    rng = np.random.default_rng(4)
    _save(tmp_path / "gt" / "000.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    _save(tmp_path / "pr" / "000.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    _save(tmp_path / "gt" / "001.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    _save(tmp_path / "pr" / "001.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    table = evaluate_nvs(_cfg(tmp_path / "gt", tmp_path / "pr", size=48))
    notes = " ".join(table.notes)
    assert "resized 1 pair(s)" in notes and "48×48" in notes and "000 (GT 64×64, prediction 32×32)" in notes
    assert table.settings["n_resized"] == 1 and all(math.isfinite(v) for v in table.columns["psnr"])
    with pytest.raises(EvalError, match="at least 11"):
        _cfg(tmp_path / "gt", tmp_path / "pr", size=8)


# ---------------------------------------------------------------- pairing and errors


def test_missing_and_extra_files_are_listed(tmp_path):
    gt, pr, _, _ = _noisy_set(tmp_path, n=4)
    (gt / "002.png").unlink()
    (pr / "003.png").rename(pr / "007.png")
    with pytest.raises(EvalError) as err:
        evaluate_nvs(_cfg(gt, pr))
    message = str(err.value)
    assert "003" in message and "ground-truth view(s) have no prediction" in message
    assert "002" in message and "007" in message and "--allow-missing" in message

    table = evaluate_nvs(_cfg(gt, pr, allow_missing=True))
    assert table.rows == ["000", "001"]
    assert any("skipped 3 image(s)" in n for n in table.notes)
    assert table.settings["missing"] == ["003"] and table.settings["extra"] == ["002", "007"]


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    gt, pr, _, _ = _noisy_set(tmp_path)
    assert eval_nvs.main(["--gt", str(tmp_path / "nope"), "--pr", str(pr)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    assert eval_nvs.main(["--gt", str(gt), "--pr", str(tmp_path / "empty")]) == 2
    assert "holds no images" in capsys.readouterr().err
    (pr / "001.png").write_bytes(b"this is not a png")
    assert eval_nvs.main(["--gt", str(gt), "--pr", str(pr), "--lpips-net", "none"]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "001.png" in err and "Traceback" not in err
    (pr / "001.png").unlink()
    _save(pr / "001.jpg", np.zeros((32, 32, 3), np.uint8))
    _save(pr / "001.png", np.zeros((32, 32, 3), np.uint8))
    assert eval_nvs.main(["--gt", str(gt), "--pr", str(pr)]) == 2
    assert "same name" in capsys.readouterr().err
    (pr / "001.jpg").unlink()
    assert eval_nvs.main(["--gt", str(gt), "--pr", str(pr), "--lpips-net", "none", "--out", str(tmp_path / "r.txt")]) == 2
    assert ".json or .csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        eval_nvs.main(["--gt", str(gt), "--pr", str(pr), "--lpips-net", "resnet"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------- LPIPS


def test_lpips_unavailable_is_said_and_psnr_ssim_still_reported(tmp_path, monkeypatch):
    gt, pr, _, _ = _noisy_set(tmp_path)
    monkeypatch.setitem(sys.modules, "lpips", None)  # `import lpips` now raises ImportError
    status = load_lpips("vgg")
    assert not status.available and "'lpips' package is not installed" in status.reason
    table = evaluate_nvs(_cfg(gt, pr, lpips_net="vgg"))
    assert list(table.columns) == ["psnr", "ssim"]
    assert any(n.startswith("LPIPS skipped:") and "pip install lpips" in n for n in table.notes)
    assert "LPIPS skipped" in table.to_text()

    def no_weights(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=no_weights))
    status = load_lpips("alex")
    assert not status.available and "pretrained alex backbone could not be loaded" in status.reason
    assert "checkpoints" in status.reason and "Name or service not known" in status.reason


class _TinyFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        f1 = torch.relu(self.conv1(x))
        return [f1, torch.relu(self.conv2(f1))]


def test_injected_lpips_network(tmp_path):
    gt, pr, gts, prs = _noisy_set(tmp_path)
    torch.manual_seed(0)
    written = tmp_path / "tiny_lpips.pt"
    torch.save({"features": _TinyFeatures().state_dict(), "weights": [torch.rand(4), torch.rand(6)]}, written)
    saved = torch.load(written)
    features = _TinyFeatures()
    features.load_state_dict(saved["features"])
    distance = LPIPSDistance(features, saved["weights"])

    table = evaluate_nvs(_cfg(gt, pr, out=tmp_path / "r.csv"), lpips=distance)
    assert table.settings["lpips_net"] == "custom"
    for i in range(3):  # the LPIPS formula, written out in numpy over the same network's features
        fx = [f.detach().numpy()[0] for f in features(torch.from_numpy(gts[i].transpose(2, 0, 1))[None].float() * 2 - 1)]
        fy = [f.detach().numpy()[0] for f in features(torch.from_numpy(prs[i].transpose(2, 0, 1))[None].float() * 2 - 1)]
        expected = 0.0
        for a, b, w in zip(fx, fy, saved["weights"]):
            a = a / (np.sqrt((a**2).sum(0, keepdims=True)) + 1e-10)
            b = b / (np.sqrt((b**2).sum(0, keepdims=True)) + 1e-10)
            expected += ((a - b) ** 2 * w.numpy()[:, None, None]).sum(0).mean()
        assert table.columns["lpips"][i] == pytest.approx(expected, rel=1e-4)
    rows = list(csv.reader(open(table.write(tmp_path / "r.csv"))))
    assert rows[0] == ["view", "psnr", "ssim", "lpips"] and rows[-2][0] == "mean"
    assert float(rows[-2][3]) == pytest.approx(np.mean(table.columns["lpips"]))

    # the loader path: a published-LPIPS loader that returns this network
    table = evaluate_nvs(_cfg(gt, pr, lpips_net="vgg"), lpips_loader=lambda net, device: LPIPSStatus(distance, net))
    assert table.settings["lpips_net"] == "vgg" and len(table.columns["lpips"]) == 3


# ---------------------------------------------------------------- output files and the script


def test_json_and_csv_output(tmp_path, capsys):
    gt, pr, gts, prs = _noisy_set(tmp_path)
    psnrs = [peak_signal_noise_ratio(g, p, data_range=1.0) for g, p in zip(gts, prs)]
    assert eval_nvs.main(["--gt", str(gt), "--pr", str(pr), "--lpips-net", "none", "--out", str(tmp_path / "o" / "r.json"), "--name", "run-a"]) == 0
    printed = capsys.readouterr().out
    assert "run-a" in printed and "LPIPS not computed" in printed and f"{np.mean(psnrs):.3f} ± {np.std(psnrs):.3f}" in printed
    data = json.loads((tmp_path / "o" / "r.json").read_text())
    assert [item["view"] for item in data["items"]] == ["000", "001", "002"]
    assert [item["psnr"] for item in data["items"]] == pytest.approx(psnrs, abs=1e-9)
    assert data["summary"]["psnr"]["mean"] == pytest.approx(np.mean(psnrs)) and data["summary"]["psnr"]["std"] == pytest.approx(np.std(psnrs))
    assert data["settings"]["name"] == "run-a" and data["settings"]["n_pairs"] == 3 and data["settings"]["lpips_net"] is None

    assert eval_nvs.main(["--gt", str(gt), "--pr", str(pr), "--lpips-net", "none", "--out", str(tmp_path / "r.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "r.csv")))
    assert rows[0] == ["view", "psnr", "ssim"] and [r[0] for r in rows[1:]] == ["000", "001", "002", "mean", "std"]
    assert [float(r[1]) for r in rows[1:4]] == pytest.approx(psnrs, abs=1e-9)
    assert float(rows[5][1]) == pytest.approx(np.std(psnrs))


@pytest.mark.slow
def test_script_runs_as_users_run_it(tmp_path):
    gt, pr, gts, prs = _noisy_set(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "eval_nvs.py", "--gt", str(gt), "--pr", str(pr), "--out", str(tmp_path / "r.json")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "PSNR" in result.stdout and "SSIM" in result.stdout and "wrote" in result.stdout
    # LPIPS (vgg by default) is asked for; whether it loads depends on the machine, but it is never faked
    data = json.loads((tmp_path / "r.json").read_text())
    if data["settings"]["lpips_net"] is None:
        assert "LPIPS skipped" in result.stdout
    else:
        assert "lpips" in data["summary"]
    expected = np.mean([peak_signal_noise_ratio(g, p, data_range=1.0) for g, p in zip(gts, prs)])
    assert data["summary"]["psnr"]["mean"] == pytest.approx(expected)

    # without LPIPS nothing imports torchvision
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "eval_nvs.py", "--gt", str(gt), "--pr", str(pr), "--lpips-net", "none"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "torch" in imported and not any(name.split(".")[0] == "torchvision" for name in imported)

    result = subprocess.run(
        [sys.executable, "eval_nvs.py", "--gt", str(tmp_path / "missing"), "--pr", str(pr)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2 and "eval_nvs.py: error:" in result.stderr and "does not exist" in result.stderr
