"""Hash3D-mini-sd groundwork: captions, tokenizer, caption score, and a tiny training run loaded by the SD guidance."""

from __future__ import annotations

import colorsys
import json

import pytest
import torch

from hash3d.diffusion.guidance.stable_diffusion import DIRECTIONS, view_prompts
from hash3d.mini import Objects, make_objects
from hash3d.mini.caption_score import caption_following, caption_scores, color_histogram
from hash3d.mini.colors import COLOR_NAMES, color_index
from hash3d.mini.text_data import WORDS, captions, view_captions, views_direction
from hash3d.mini.tokenizer import BYTE_VOCAB_SIZE, tokenizer_vocab, write_clip_tokenizer


def _two_parts(upper_center, lower_center, lower_size=(0.2, 0.2, 0.2)):
    return Objects.single(["sphere", "box"], [upper_center, lower_center], [(0.2, 0.2, 0.2), lower_size],
                          [(0.8, 0.1, 0.1), (0.1, 0.1, 0.8)])


def test_captions_name_colours_shapes_and_placement():
    assert captions(_two_parts((0, 0, 0.3), (0, 0, -0.2))) == ["a red sphere on a blue cube"]
    assert captions(_two_parts((0, 0, -0.3), (0, 0, 0.2))) == ["a blue cube on a red sphere"]
    assert captions(_two_parts((0, 0.3, 0), (0, -0.3, 0), (0.3, 0.1, 0.1))) == ["a red sphere next to a blue box"]
    one = Objects.single(["cone"], [(0, 0, 0)], [(0.2, 0.2, 0.0)], [(0.1, 0.7, 0.1)])
    assert captions(one) == ["a green cone"]
    # random objects: deterministic per id, only known words
    first = captions(make_objects(torch.arange(40)))
    assert first == captions(make_objects(torch.arange(40)))
    words = {w for c in first for w in c.replace(",", "").split()}
    assert words <= set(WORDS)


def test_view_suffixes_are_the_guidance_wording_and_directions():
    assert view_captions("a red cone") == view_prompts("a red cone", True)
    assert view_captions("a red cone")[DIRECTIONS.index("front")] == "a red cone, front view"
    elevation = torch.tensor([10.0, 10.0, 10.0, 70.0, 10.0])
    azimuth = torch.tensor([0.0, 90.0, 180.0, 0.0, 300.0])
    names = [DIRECTIONS[i] for i in views_direction(elevation, azimuth)]
    assert names == ["front", "side", "back", "overhead", "side"]


def test_tokenizer_makes_every_caption_word_one_token(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path, 32, WORDS))
    vocab, merges = tokenizer_vocab(WORDS)
    assert len(tok) == len(vocab) and all(a + b in vocab for a, b in merges)
    for word in WORDS:
        assert tok.tokenize(word) == [word + "</w>"], word
    text = "a red and blue striped sphere on a grey cube, overhead view"
    ids = tok(text).input_ids
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    assert len(ids) == 2 + len(text.replace(",", " ,").split())
    assert tok.decode(ids, skip_special_tokens=True).replace(" ,", ",") == text
    # the longest captions (four two-coloured textured parts) fit the text encoder's positions untruncated
    from hash3d.mini.sd_model import sd_configs

    limit = sd_configs("default")["tokenizer"]["model_max_length"]
    longest = ", ".join(["a red and blue striped cylinder"] * 3) + " and a red and blue checkered cylinder, overhead view"
    assert len(tok(longest).input_ids) < limit
    # unknown words still encode (byte symbols), and no words means the test models' tokenizer
    assert all(t in vocab for t in tok.tokenize("zebra"))
    assert len(tokenizer_vocab()[0]) == BYTE_VOCAB_SIZE


def test_color_index_agrees_with_colorsys():
    assert [COLOR_NAMES[i] for i in color_index(torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 1, 1], [0.5, 0.5, 0.5], [0.05, 0.05, 0.05], [1, 0.5, 0]]))] \
        == ["red", "green", "blue", "yellow", "white", "grey", "black", "orange"]
    rgb = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    got = color_index(rgb)
    for c, k in zip(rgb.tolist(), got.tolist()):
        h, s, v = colorsys.rgb_to_hsv(*c)
        if s >= 0.3 and v >= 0.2:
            hue = 360 * h
            bounds = [(15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"), (255, "blue"),
                      (290, "purple"), (335, "pink"), (361, "red")]
            if min(abs(hue - b) for b, _ in bounds) > 1e-3:
                assert COLOR_NAMES[k] == next(n for b, n in bounds if hue < b), (c, hue)
        else:
            assert COLOR_NAMES[k] in ("white", "grey", "black")


def _disc(color, radius, size=32, center=(16, 16)):
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius**2
    img = torch.ones(3, size, size)
    img[:, mask] = torch.tensor(color, dtype=torch.float32)[:, None]
    return img, mask


def test_caption_scores_on_synthetic_images():
    red, red_mask = _disc((0.9, 0.1, 0.1), 8)
    blue, _ = _disc((0.1, 0.1, 0.9), 8)
    small_red, small_mask = _disc((0.9, 0.1, 0.1), 4)
    white = torch.ones(3, 32, 32)
    half = red.clone()
    half[:, :, 16:] = torch.where(red_mask[:, 16:], torch.tensor([0.1, 0.1, 0.9])[:, None, None], red[:, :, 16:])
    samples = torch.stack([red, red, red, red, white])
    refs = torch.stack([red, blue, small_red, half, red])
    s = caption_scores(samples, refs)
    expected_iou = small_mask.sum().item() / red_mask.sum().item()
    blue_share = red_mask[:, 16:].sum().item() / red_mask.sum().item()
    assert torch.allclose(s["color"], torch.tensor([1.0, 0.0, 1.0, 1 - blue_share, 0.0]), atol=1e-6)
    assert torch.allclose(s["shape"], torch.tensor([1.0, 1.0, expected_iou, 1.0, 0.0]), atol=1e-6)
    hist = color_histogram(half[None], red_mask[None])[0]
    assert hist[COLOR_NAMES.index("red")].item() == pytest.approx(1 - blue_share)
    # references at another size are resized (blended edge pixels get other colour names); own captions score above
    # the shuffled ones
    refs64 = torch.nn.functional.interpolate(torch.stack([red, blue]), (64, 64), mode="nearest")
    follow = caption_following(torch.stack([red, blue]), refs64)
    assert follow["color"] > 0.8 and follow["color_shuffled"] < 0.1
    assert follow["shape"] > 0.8 and follow["shape_shuffled"] > 0.8  # same discs: shape alone cannot tell them apart
    with pytest.raises(ValueError, match="at least 2"):
        caption_following(red[None], red[None])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        caption_scores(red, red)


def test_default_model_fits_the_size_budget():
    from hash3d.mini.sd_model import count_sd_parameters
    from hash3d.shipped import MINI_MODEL
    from hash3d.mini.model import folder_bytes

    weights = 2 * sum(count_sd_parameters("default").values()) + folder_bytes(MINI_MODEL / "vae")
    assert weights < 24e6
    from hash3d.shipped import MINI_SD_MODEL

    assert folder_bytes(MINI_SD_MODEL) < 25e6  # the shipped folder, card and samples included
    assert "## Limits" in (MINI_SD_MODEL / "README.md").read_text()


def test_tiny_training_writes_a_folder_the_sd_guidance_loads(tmp_path):
    from hash3d.diffusion.guidance import StableDiffusionGuidance, StableDiffusionGuidanceConfig
    from hash3d.mini.train_sd import main

    out = tmp_path / "run"
    # a command whose deadline passes at once only checkpoints; the same command again resumes and finishes
    assert main(["--out", str(out), "--tiny", "--deadline-minutes", "0"]) == 0
    assert (out / "checkpoint.pt").exists() and not (out / "model").exists()
    assert main(["--out", str(out), "--tiny"]) == 0
    run = json.loads((out / "eval.json").read_text())["run"]
    assert run["steps"] == 3 and [(x["start_step"], x["end_step"]) for x in run["sessions"]] == [(0, 0), (0, 3)]
    with pytest.raises(ValueError, match="'tiny' run, not 'default'"):
        main(["--out", str(out)])
    model = out / "model"
    for part in ("unet", "text_encoder", "vae", "tokenizer", "scheduler"):
        assert (model / part).is_dir(), part
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["text_encoder"] == ["transformers", "CLIPTextModel"]
    metrics = json.loads((out / "eval.json").read_text())["metrics"]
    assert set(metrics["scores"]) == {"1", "3"} and (model / "samples.png").exists()
    card = (model / "README.md").read_text()
    assert "| CFG | colour |" in card and metrics["captions"][0] in card
    best = max(metrics["scores"], key=lambda k: metrics["scores"][k]["color"])
    assert f"## Limits\n\nTrained {json.loads((out / 'eval.json').read_text())['run']['minutes']} min (3 steps). " \
           f"At CFG {best} it follows colours" in card

    g = StableDiffusionGuidance(StableDiffusionGuidanceConfig(pretrained_model_name_or_path=str(model), dtype="fp32",
                                                              guidance_scale=7.5))
    assert g.image_size == 64 and g.prediction_type == "v_prediction"
    g.set_prompt("a red sphere on a blue cube")
    assert g.cond_embeddings.shape[:2] == (len(DIRECTIONS), 40)
    rgb = torch.rand(2, 3, 64, 64, requires_grad=True)
    out_ = g(rgb, torch.tensor([10.0, 70.0]), torch.tensor([0.0, 90.0]), torch.full((2,), 3.8))
    out_.loss.backward()
    assert torch.isfinite(out_.loss) and rgb.grad.abs().sum() > 0

    # the random-weight twin: same layout and text positions, other UNet weights, the same VAE
    from hash3d.diffusion.loading import load_stable_diffusion
    from hash3d.mini.sd_model import write_random_sd_twin

    twin = write_random_sd_twin(tmp_path / "twin", model)
    trained, fresh = load_stable_diffusion(model), load_stable_diffusion(twin)
    assert fresh.unet.config.cross_attention_dim == trained.unet.config.cross_attention_dim
    assert fresh.tokenizer.model_max_length == trained.tokenizer.model_max_length == 40
    w_trained = trained.unet.conv_in.weight.float()
    assert not torch.allclose(fresh.unet.conv_in.weight, w_trained, atol=1e-3)
    assert torch.equal(fresh.vae.decoder.conv_out.weight, trained.vae.decoder.conv_out.weight)
    StableDiffusionGuidance(StableDiffusionGuidanceConfig(pretrained_model_name_or_path=str(twin), dtype="fp32"))


def test_the_same_seed_trains_bit_identical_weights_even_through_a_compile_fallback(tmp_path, capsys):
    from hash3d.mini.train_sd import TINY_SD, SDTrainConfig, SDTrainer

    def broken(*args, **kwargs):
        raise RuntimeError("inductor exploded")

    cfg = {**TINY_SD, "device": "cpu", "log_every_s": 0.0}
    plain = SDTrainer(SDTrainConfig(**cfg, out=str(tmp_path / "plain")))
    init = {k: v.clone() for k, v in plain.parts["unet"].state_dict().items()}
    assert plain.train()
    fallback = SDTrainer(SDTrainConfig(**cfg, out=str(tmp_path / "fallback")))
    fallback.unet.fn, fallback.unet.checked = broken, False  # as if torch.compile had returned it
    assert fallback.train()
    assert "torch.compile of the UNet failed (RuntimeError: inductor exploded); training eagerly" in capsys.readouterr().out
    assert fallback.sessions[-1]["compiled"] is False and fallback.step == plain.step == 3
    assert [r[2] for r in fallback.loss_log] == [r[2] for r in plain.loss_log] and len(plain.loss_log) == 3
    for name, part in plain.parts.items():
        other = fallback.parts[name].state_dict()
        for key, value in part.state_dict().items():
            assert torch.equal(value, other[key]), (name, key)
    assert all(torch.equal(a, b) for a, b in zip(plain.ema.shadow, fallback.ema.shadow))
    opt_a, opt_b = plain.opt.state_dict()["state"], fallback.opt.state_dict()["state"]
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
    assert torch.equal(plain.tokens, fallback.tokens)
    assert not all(torch.equal(v, plain.parts["unet"].state_dict()[k]) for k, v in init.items())  # it trained


def test_shipped_model_loads_through_the_sd_guidance_and_follows_colours():
    """The shipped Hash3D-mini-sd, loaded as any SD checkpoint (`StableDiffusionGuidance` on the folder): DDIM samples of
    three one-part captions in different colours match their own caption's render in colour far better than another
    caption's, and their silhouettes overlap the described object's."""
    from hash3d.diffusion.guidance import StableDiffusionGuidance, StableDiffusionGuidanceConfig
    from hash3d.mini.caption_score import caption_scores
    from hash3d.mini.evaluate_sd import sample_images
    from hash3d.mini.render import on_white, render
    from hash3d.shipped import MINI_SD_MODEL

    g = StableDiffusionGuidance(StableDiffusionGuidanceConfig(pretrained_model_name_or_path=str(MINI_SD_MODEL),
                                                              dtype="fp32", local_files_only=True))
    assert g.image_size == 64 and g.prediction_type == "v_prediction"
    parts = [("sphere", (0.5,) * 3, (0.85, 0.1, 0.1)), ("box", (0.35,) * 3, (0.1, 0.2, 0.85)),
             ("cylinder", (0.3, 0.3, 0.45), (0.1, 0.75, 0.15))]
    objects = [Objects.single([kind], [(0, 0, 0)], [size], [color]) for kind, size, color in parts]
    texts = [captions(o)[0] for o in objects]
    assert texts == ["a red sphere", "a blue cube", "a green cylinder"]
    refs = torch.cat([on_white(render(o, torch.tensor([15.0]), torch.tensor([0.0])))[:, :3] for o in objects])
    # the guidance's own wording for this camera (elevation 15°, azimuth 0): "…, front view"
    samples = sample_images(g, [view_captions(t)[DIRECTIONS.index("front")] for t in texts], 3.0, 8,
                            torch.Generator().manual_seed(0))
    own, other = caption_scores(samples, refs), caption_scores(samples, refs.roll(1, 0))
    assert own["color"].min() > 0.4 and other["color"].max() < 0.15, (own, other)
    assert own["shape"].mean() > 0.5, own
