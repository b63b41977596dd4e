"""Hash3D-mini: procedural objects and renderer, camera convention, the model layout, training, resume, size."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hash3d.data.cameras import intrinsics, orbit_c2w
from hash3d.mini import model as mini_model
from hash3d.mini.objects import HELD_OUT_ID_BASE, Objects, make_objects, sample_views
from hash3d.mini.render import CAMERA_DISTANCE, FOVY_DEG, on_white, render


# ------------------------------------------------------------------------------------------------ objects, renderer


def _render_ids(ids, views=2):
    ids = torch.as_tensor(ids)
    e, a = sample_views(ids, views)
    obj = make_objects(ids).take(torch.arange(len(ids)).repeat_interleave(views))
    return render(obj, e.reshape(-1), a.reshape(-1))


def test_objects_depend_only_on_their_id():
    a = make_objects(torch.arange(10))
    b = make_objects(torch.tensor([7, 3, 100, 5]))
    for name in ("kind", "active", "center", "rotation", "size", "color", "texture", "frequency"):
        torch.testing.assert_close(getattr(b, name)[[0, 1, 3]], getattr(a, name)[[7, 3, 5]], rtol=0, atol=0)
    assert not torch.equal(a.color[0], a.color[1])
    n_parts = a.active.sum(1)
    assert n_parts.min() >= 1 and n_parts.max() <= 4
    e, az = sample_views(torch.arange(50), 4)
    assert e.min() >= -10 and e.max() <= 40 and az.min() >= 0 and az.max() < 360


def test_render_is_deterministic_per_seed_with_sane_alpha():
    first = _render_ids(range(6))
    again = _render_ids(range(6))
    assert torch.equal(first, again)
    other = _render_ids(range(100, 106))
    assert not torch.allclose(first, other)
    assert first.shape == (12, 4, 64, 64)
    assert first.min() >= 0 and first.max() <= 1
    alpha = first[:, 3]
    coverage = alpha.mean((1, 2))
    assert coverage.min() > 0.04 and coverage.max() < 0.7, coverage
    # the object fills roughly 60–80 % of the frame and stays inside it
    mask = alpha > 0.5
    extent = torch.maximum(mask.any(1).sum(1), mask.any(2).sum(1)).float() / 64
    assert 0.5 < extent.mean() < 0.85, extent
    border = torch.cat([alpha[:, 0], alpha[:, -1], alpha[:, :, 0], alpha[:, :, -1]], 1)
    assert border.mean() < 0.02
    # white background, and objects are never white (albedo <= 0.85): the silhouette rule of the evaluation holds
    rgb = on_white(first)
    assert torch.all(rgb[:, :, alpha.sum(0) == 0] == 1)
    assert torch.all(first[:, :3].amax(1)[alpha > 0.99] <= 0.86)


def _blob_centre(alpha: torch.Tensor) -> tuple[float, float]:
    """(row, col) of the alpha-weighted centroid, in pixel-centre coordinates (+0.5)."""
    h, w = alpha.shape
    rows = torch.arange(h, dtype=torch.float32) + 0.5
    cols = torch.arange(w, dtype=torch.float32) + 0.5
    m = alpha.sum()
    return (alpha.sum(1) @ rows / m).item(), (alpha.sum(0) @ cols / m).item()


def _ball(center):
    return Objects.single(["sphere"], [center], [(0.12, 0.12, 0.12)], [(0.8, 0.2, 0.2)])


def test_camera_convention_matches_hash3d_cameras():
    # z is up: a ball above the origin appears above the image centre (smaller row index)
    row, col = _blob_centre(render(_ball((0, 0, 0.35)), torch.tensor([0.0]), torch.tensor([0.0]))[0, 3])
    assert row < 32 - 5 and abs(col - 32) < 0.5
    # azimuth 0 looks from +x: +y is on the right; azimuth 90 looks from +y: +x is on the left, +y in the middle
    _, col = _blob_centre(render(_ball((0, 0.35, 0)), torch.tensor([0.0]), torch.tensor([0.0]))[0, 3])
    assert col > 32 + 5
    _, col = _blob_centre(render(_ball((0.35, 0, 0)), torch.tensor([0.0]), torch.tensor([90.0]))[0, 3])
    assert col < 32 - 5
    _, col = _blob_centre(render(_ball((0, 0.35, 0)), torch.tensor([0.0]), torch.tensor([90.0]))[0, 3])
    assert abs(col - 32) < 0.5
    # anywhere: the ball is drawn where hash3d.data.cameras projects its centre
    centre = torch.tensor([0.2, -0.25, 0.1])
    for elev, azim in ((25.0, 40.0), (-10.0, 200.0), (40.0, 300.0)):
        alpha = render(_ball(tuple(centre.tolist())), torch.tensor([elev]), torch.tensor([azim]))[0, 3]
        c2w = orbit_c2w(torch.tensor([elev]), torch.tensor([azim]), torch.tensor([CAMERA_DISTANCE]))[0]
        cam = torch.linalg.inv(c2w) @ torch.cat([centre, torch.ones(1)])
        K = intrinsics(torch.tensor([FOVY_DEG]), 64, 64)[0]
        x, y, z = cam[:3]
        u = K[0, 0] * x / -z + K[0, 2]  # OpenGL camera: looks down -z, y up -> image rows grow downwards
        v = -K[1, 1] * y / -z + K[1, 2]
        row, col = _blob_centre(alpha)
        assert abs(col - u.item()) < 0.6 and abs(row - v.item()) < 0.6, (elev, azim, row, col, u, v)


def test_relative_camera_matches_the_guidance():
    from hash3d.diffusion.guidance.zero123 import camera_embedding

    elev, azim = torch.tensor([10.0, -5.0, 35.0]), torch.tensor([30.0, 200.0, 350.0])
    for cond_e, cond_a in ((5.0, 0.0), (-8.0, 120.0)):
        for kind in ("stable", "xl"):
            ref = camera_embedding(elev, azim, torch.full((3,), 3.8), cond_e, cond_a, 3.8, kind)
            ours = mini_model.relative_camera(torch.full((3,), cond_e), torch.full((3,), cond_a), elev, azim,
                                              stable=kind == "stable")
            torch.testing.assert_close(ours, ref)


# ------------------------------------------------------------------------------------------------ the model


def test_default_model_is_at_most_25_mb_and_fits_the_guidance():
    counts = mini_model.count_parameters("default")  # built on the meta device
    size = 2 * sum(counts.values())  # fp16
    assert size <= 25e6, counts
    configs = mini_model.model_configs("default")
    unet, vae = configs["unet"], configs["vae"]
    assert unet["in_channels"] == 8 and unet["out_channels"] == 4
    assert unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1) == 64  # the guidance's image size
    assert configs["cc_projection"]["out_channel"] == unet["cross_attention_dim"]
    assert configs["cc_projection"]["in_channel"] == configs["image_encoder"]["projection_dim"] + 4
    assert configs["feature_extractor"]["crop_size"]["height"] == configs["image_encoder"]["image_size"]
    assert configs["scheduler"]["prediction_type"] == "v_prediction"
    assert configs["scheduler"]["beta_schedule"] == "squaredcos_cap_v2"


def test_whitening_the_latents_keeps_decoding_and_normalises_each_channel():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**{k: v for k, v in mini_model.model_configs("tiny")["vae"].items() if not k.startswith("_")})
    vae.eval()
    x = torch.rand(6, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = vae.encode(x).latent_dist
        decoded = vae.decode(before.mean).sample
        mean = torch.tensor([0.3, -1.0, 2.0, 0.0])
        std = torch.tensor([2.0, 0.5, 4.0, 1.0])
        mini_model.whiten_latents(vae, mean, std)
        after = vae.encode(x).latent_dist
        view = lambda v: v.view(1, 4, 1, 1)  # noqa: E731
        torch.testing.assert_close(after.mean, (before.mean - view(mean)) / view(std), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(after.std, before.std / view(std), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vae.decode(after.mean).sample, decoded, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="positive std"):
        mini_model.whiten_latents(vae, mean, torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_a_channels_last_model_saves_contiguous_fp16_weights(tmp_path):
    configs = mini_model.model_configs("tiny")
    parts = mini_model.build_parts(configs)
    parts["unet"].to(memory_format=torch.channels_last)
    mini_model.save_model(parts, configs, tmp_path / "m")
    from hash3d.diffusion.loading import load_zero123

    loaded = load_zero123(str(tmp_path / "m"), dtype=torch.float32)
    for (name, a), b in zip(parts["unet"].state_dict().items(), loaded.unet.state_dict().values()):
        torch.testing.assert_close(b, a.half().float(), msg=name)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One --tiny training run on the CPU (3 diffusion steps), written like the real one."""
    from hash3d.mini.train import main

    out = tmp_path_factory.mktemp("mini") / "run"
    main(["--out", str(out), "--tiny", "--device", "cpu"])
    return out


@pytest.mark.slow
def test_tiny_run_writes_a_folder_the_zero123_guidance_uses(tiny_run):
    from hash3d.cache.config import CacheConfig, CachePolicyConfig
    from hash3d.diffusion.guidance import Zero123Guidance, Zero123GuidanceConfig
    from hash3d.diffusion.loading import load_zero123

    model = tiny_run / "model"
    for name in ("model_index.json", "README.md", "samples.png", "scheduler/scheduler_config.json",
                 "feature_extractor/preprocessor_config.json", "cc_projection/config.json"):
        assert (model / name).is_file(), name
    for part in ("unet", "vae", "image_encoder", "cc_projection"):
        weights = list((model / part).glob("*.safetensors"))
        assert weights, part
        from safetensors.torch import load_file

        assert all(t.dtype == torch.float16 for t in load_file(weights[0]).values())
    parts = load_zero123(str(model))
    assert parts.scheduler.config.prediction_type == "v_prediction"
    assert parts.unet.config.in_channels == 8
    scores = json.loads((tiny_run / "eval.json").read_text())["scores"]
    assert {"model, CFG 1", "model, CFG 3", "copy the input view", "white image"} <= set(scores)
    assert all(math.isfinite(s["psnr"]) for s in scores.values())

    rgba = render(make_objects(torch.tensor([HELD_OUT_ID_BASE])), torch.tensor([5.0]), torch.tensor([0.0]))[0]
    for cache in (CacheConfig(), CacheConfig(enabled=True, mode="features", policy=CachePolicyConfig(probability=1.0))):
        g = Zero123Guidance(Zero123GuidanceConfig(pretrained_model_name_or_path=str(model), dtype="fp32",
                                                  camera_embedding="stable", cache=cache))
        assert g.image_size == 64
        g.set_image(rgba, 5.0, 0.0, CAMERA_DISTANCE)
        for _ in range(2):  # with the cache on, the second step can hit
            rgb = torch.rand(2, 3, 96, 96, requires_grad=True)
            out = g(rgb, torch.tensor([10.0, 20.0]), torch.tensor([30.0, 31.0]), torch.full((2,), CAMERA_DISTANCE))
            out.loss.backward()
            assert torch.isfinite(out.loss) and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    # the training code builds CLIP pixels as the guidance does
    x = torch.rand(2, 3, 64, 64)
    fe = g.feature_extractor
    torch.testing.assert_close(mini_model.clip_pixels(x, 64, fe.image_mean, fe.image_std), g._clip_pixels(x))


@pytest.mark.slow
def test_resume_continues_the_step_count(tiny_run):
    from hash3d.mini.train import CHECKPOINT, main

    before = torch.load(tiny_run / CHECKPOINT, map_location="cpu", weights_only=False)["state"]
    assert before["step"] == 3 and before["vae_step"] == 2
    assert len(before["raw_channel_std"]) == 4  # the frozen VAE's latents were whitened per channel
    main(["--out", str(tiny_run), "--tiny", "--device", "cpu", "--steps", "9"])
    after = torch.load(tiny_run / CHECKPOINT, map_location="cpu", weights_only=False)["state"]
    assert after["step"] == 9 and after["vae_step"] == 2
    assert after["next_id"] > before["next_id"]  # the pool went on with new objects (refreshed at step 8)
    last = after["sessions"][-1]
    assert last["start_phase"] == "diffusion" and last["start_step"] == 3 and last["end_step"] == 9
    assert after["diffusion_seconds"] > before["diffusion_seconds"]


def _broken_unet(*args, **kwargs):
    raise RuntimeError("inductor exploded")


def _trained_state(trainer) -> dict[str, object]:
    return {"parts": {k: m.state_dict() for k, m in trainer.parts.items()}, "ema": trainer.ema.shadow,
            "opt": trainer.opt.state_dict()["state"], "vae_opt": trainer.vae_opt.state_dict()["state"],
            "losses": [r[2] for r in trainer.state["vae_log"] + trainer.state["loss_log"]],
            "scaling_factor": trainer.state["scaling_factor"]}


def _assert_identical(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_the_same_seed_trains_bit_identical_weights_even_through_a_compile_fallback(tmp_path, capsys):
    from hash3d.mini.train import TINY, Trainer, TrainConfig

    cfg = {**TINY, "device": "cpu", "vae_steps": 2, "steps": 3, "log_every_s": 0.0, "compile_unet": "auto"}
    plain = Trainer(TrainConfig(**cfg, out=str(tmp_path / "plain")))
    init = {k: v.clone() for k, v in plain.parts["unet"].state_dict().items()}
    assert plain.train()
    fallback = Trainer(TrainConfig(**cfg, out=str(tmp_path / "fallback")))
    fallback.unet.fn, fallback.unet.checked = _broken_unet, False  # as if torch.compile had returned it
    assert fallback.unet_compiled
    assert fallback.train()
    assert "torch.compile of the UNet failed (RuntimeError: inductor exploded); training eagerly" in capsys.readouterr().out
    assert fallback.unet.fn is fallback.parts["unet"] and not fallback.unet_compiled
    a, b = _trained_state(plain), _trained_state(fallback)
    assert len(a["losses"]) == 5 and all(math.isfinite(x) for x in a["losses"])  # logged every step
    _assert_identical(a, b)
    assert not all(torch.equal(v, plain.parts["unet"].state_dict()[k]) for k, v in init.items())  # it trained


def test_a_compile_asked_for_explicitly_does_not_fall_back(tmp_path):
    from hash3d.mini.train import TINY, Trainer, TrainConfig

    trainer = Trainer(TrainConfig(**{**TINY, "out": str(tmp_path / "run"), "device": "cpu", "vae_steps": 1,
                                     "compile_unet": "on"}))
    assert trainer.unet_compiled and not trainer.unet.fallback
    trainer.unet.fn = _broken_unet
    with pytest.raises(RuntimeError, match="inductor exploded"):
        trainer.train()
    assert trainer.state["step"] == 0 and trainer.state["vae_step"] == 1
