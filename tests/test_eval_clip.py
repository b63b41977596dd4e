"""eval_clip_sim.py and hash3d.eval.clip_sim against a tiny CLIP written with random weights in the real layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hash3d.eval import ClipEmbedder, ClipSimConfig, EvalError, evaluate_clip
from hash3d.eval.clip_sim import select_views
from hash3d.testing.clip import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, write_clip

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import eval_clip_sim  # noqa: E402  (the top-level script, imported for in-process runs)

PROMPT = "a wooden rowing boat with two oars"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)


@pytest.fixture(scope="module")
def embedder(clip_dir) -> ClipEmbedder:
    return ClipEmbedder.load(str(clip_dir), "cpu")


@pytest.fixture()
def views(tmp_path) -> tuple[Path, list[np.ndarray]]:
    """Ten 32×32 RGB views (the tiny CLIP's input size, so preprocessing neither resizes nor crops)."""
    rng = np.random.default_rng(0)
    arrays = []
    for i in range(10):
        array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        array[8:24, 8:24] = rng.integers(0, 256, 3, dtype=np.uint8)  # a flat square, different per view
        (tmp_path / "views").mkdir(exist_ok=True)
        Image.fromarray(array).save(tmp_path / "views" / f"{i}.png")
        arrays.append(array)
    return tmp_path / "views", arrays


def _pixels(arrays: list[np.ndarray]) -> torch.Tensor:
    """CLIP preprocessing written out for images already at the model's size: rescale and normalise."""
    x = np.stack(arrays).astype(np.float32) / 255.0
    x = (x - np.array(CLIP_IMAGE_MEAN, np.float32)) / np.array(CLIP_IMAGE_STD, np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _reference_model(clip_dir: Path):
    from transformers import CLIPModel, CLIPTokenizer

    return CLIPModel.from_pretrained(clip_dir).eval(), CLIPTokenizer.from_pretrained(clip_dir)


def test_written_clip_has_the_real_layout(clip_dir):
    names = {p.name for p in clip_dir.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json", "preprocessor_config.json"} <= names
    config = json.loads((clip_dir / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    assert json.loads((clip_dir / "preprocessor_config.json").read_text())["image_processor_type"] == "CLIPImageProcessor"
    # same seed, same weights
    again = write_clip(clip_dir.parent / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (clip_dir / "model.safetensors").read_bytes()


def test_select_views_evenly():
    paths = [Path(f"{i}.png") for i in range(120)]
    assert [int(p.stem) for p in select_views(paths, 8)] == [0, 15, 30, 45, 60, 75, 90, 105]
    assert [int(p.stem) for p in select_views(paths[:10], 4)] == [0, 2, 5, 7]
    assert select_views(paths[:5], 8) == paths[:5] and select_views(paths[:5], 0) == paths[:5]


def test_text_mode_equals_independent_computation(clip_dir, embedder, views):
    folder, arrays = views
    table = evaluate_clip(ClipSimConfig(PROMPT, folder, mode="text", views=4, batch_size=3), embedder=embedder)
    chosen = [0, 2, 5, 7]
    assert table.rows == [f"{i}.png" for i in chosen]
    model, tokenizer = _reference_model(clip_dir)
    tokens = tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=_pixels([arrays[i] for i in chosen]))
        expected = (out.logits_per_image[:, 0] / model.logit_scale.exp()).numpy()
    assert np.allclose(table.columns["clip"], expected, atol=1e-5)
    stat = table.summary()["clip"]
    assert stat.mean == pytest.approx(expected.mean(), abs=1e-6) and stat.std == pytest.approx(expected.std(), abs=1e-6)
    assert "scored 4 of 10 views, evenly spaced" in table.notes
    long = evaluate_clip(ClipSimConfig("z" * 90, folder, mode="text", views=1), embedder=embedder)
    assert "the prompt has 92 tokens; CLIP reads the first 77" in long.notes  # one token per character here


def test_image_mode_equals_independent_computation(clip_dir, embedder, views, tmp_path):
    folder, arrays = views
    reference = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(reference).save(tmp_path / "ref.png")
    table = evaluate_clip(ClipSimConfig(str(tmp_path / "ref.png"), folder, views=0), embedder=embedder)
    assert table.settings["mode"] == "image" and any("mode: image" in n for n in table.notes)  # inferred
    model, _ = _reference_model(clip_dir)
    with torch.no_grad():
        embeds = model.get_image_features(pixel_values=_pixels([reference] + arrays)).pooler_output
    embeds = embeds / embeds.norm(dim=-1, keepdim=True)
    expected = (embeds[1:] @ embeds[0]).numpy()
    assert len(table.rows) == 10 and np.allclose(table.columns["clip"], expected, atol=1e-5)


def test_alpha_views_are_composited(clip_dir, embedder, tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((32, 32)) < 0.5, 0, 255)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(rgba).save(tmp_path / "a" / "0.png")
    on_white = np.where(rgba[..., 3:] == 255, rgba[..., :3], 255).astype(np.uint8)
    Image.fromarray(on_white).save(tmp_path / "b" / "0.png")
    a = evaluate_clip(ClipSimConfig(PROMPT, tmp_path / "a", mode="text"), embedder=embedder).columns["clip"]
    b = evaluate_clip(ClipSimConfig(PROMPT, tmp_path / "b", mode="text"), embedder=embedder).columns["clip"]
    assert a == pytest.approx(b, abs=1e-6)


def test_bad_inputs_are_clear_errors(clip_dir, embedder, views, tmp_path, capsys, monkeypatch):
    folder, _ = views
    with pytest.raises(EvalError, match="does not exist"):
        evaluate_clip(ClipSimConfig(PROMPT, tmp_path / "nope", mode="text"), embedder=embedder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="holds no images"):
        evaluate_clip(ClipSimConfig(PROMPT, tmp_path / "empty", mode="text"), embedder=embedder)
    with pytest.raises(EvalError, match="reference image .* does not exist"):
        evaluate_clip(ClipSimConfig(str(tmp_path / "ref.png"), folder, mode="image"), embedder=embedder)
    (folder / "3.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(EvalError, match="cannot read image .*3.png"):
        evaluate_clip(ClipSimConfig(PROMPT, folder, mode="text", views=0), embedder=embedder)
    (folder / "3.png").unlink()
    for bad in (dict(views=-1), dict(batch_size=0), dict(mode="video")):
        with pytest.raises(EvalError):
            ClipSimConfig(PROMPT, folder, **bad)

    with pytest.raises(SystemExit) as exit_:
        eval_clip_sim.main([PROMPT, str(folder), "--mode", "video"])
    assert exit_.value.code == 2 and "invalid choice: 'video'" in capsys.readouterr().err

    assert eval_clip_sim.main([PROMPT, str(folder), "--model", str(tmp_path / "no_model_here")]) == 2
    err = capsys.readouterr().err
    assert "eval_clip_sim.py: error:" in err and "does not exist" in err

    (tmp_path / "not_a_model").mkdir()
    assert eval_clip_sim.main([PROMPT, str(folder), "--model", str(tmp_path / "not_a_model")]) == 2
    assert "could not load the CLIP model (folder" in capsys.readouterr().err

    # a hub id that is not cached, with no network: fails at once and says how to fix it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert eval_clip_sim.main([PROMPT, str(folder), "--model", "B-32"]) == 2
    err = capsys.readouterr().err
    assert "openai/clip-vit-base-patch32" in err and "--model DIR" in err and "machine with network" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_script_runs_as_users_run_it(clip_dir, views, tmp_path):
    folder, _ = views
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "eval_clip_sim.py", PROMPT, str(folder), "--mode", "text", "--model", str(clip_dir),
         "--views", "5", "--batch-size", "2", "--out", str(tmp_path / "clip.json")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CLIP similarity" in result.stdout and "CLIP:" in result.stdout and "±" in result.stdout
    data = json.loads((tmp_path / "clip.json").read_text())
    assert data["settings"]["mode"] == "text" and data["settings"]["views"] == ["0.png", "2.png", "4.png", "6.png", "8.png"]
    scores = [item["clip"] for item in data["items"]]
    assert data["summary"]["clip"]["mean"] == pytest.approx(np.mean(scores)) and data["summary"]["clip"]["n"] == 5
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "transformers" in imported and not any(name.split(".")[0] == "torchvision" for name in imported)
