"""Multi-view SDS guidance (MVDream, ImageDream): cameras, the SDS gradient against a direct UNet call in the
original row order, the cache keyed per set (hits, split sets, statistics), the DDIM refine (also for SD), errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hash3d.cache.config import CacheConfig, CachePolicyConfig
from hash3d.diffusion.guidance import MultiViewGuidance, MultiViewGuidanceConfig
from hash3d.diffusion.guidance.multiview import multiview_camera

ELEV = torch.tensor([10.0] * 4 + [-20.0] * 4)
AZIM = torch.tensor([0.0, 90.0, 180.0, 270.0, 45.0, 135.0, 225.0, 315.0])
DIST = torch.full((8,), 2.5)


def _cache(**policy) -> CacheConfig:
    return CacheConfig(enabled=True, mode="noise", cell_size=(10.0, 10.0, 0.5, 50.0),
                       policy=CachePolicyConfig(probability=1.0, **policy))  # fmt: skip


def _guidance(path: str, family: str, cache: CacheConfig | None = None, **extra) -> MultiViewGuidance:
    cfg = MultiViewGuidanceConfig(
        pretrained_model_name_or_path=path, family=family, dtype="fp32", timestep_sampling="annealed",
        cache=cache or CacheConfig(), guidance_scale=100.0 if family == "mvdream" else 5.0, **extra,
    )  # fmt: skip
    g = MultiViewGuidance(cfg)
    g.set_prompt("a plush toy of a corgi nurse", "ugly, blurry")
    if family == "imagedream":
        g.set_image(torch.rand(4, 64, 64, generator=torch.Generator().manual_seed(5)))
    g.update_step(250, 500)
    return g


def _kiui_blender_camera(elevation_dg: float, azimuth_dg: float) -> np.ndarray:
    """DreamGaussian's MVDream camera, written out independently: kiui's orbit_camera (OpenGL, y up, negative
    elevation = above), rows 1 and 2 swapped and the new row 1 negated (Blender), translation normalised."""
    e, a = math.radians(elevation_dg), math.radians(azimuth_dg)
    campos = np.array([math.cos(e) * math.sin(a), -math.sin(e), math.cos(e) * math.cos(a)]) * 2.5
    forward = campos / np.linalg.norm(campos)
    right = np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, up, forward], axis=1)
    pose[:3, 3] = campos
    pose[[1, 2]] = pose[[2, 1]]
    pose[1] *= -1
    pose[:3, 3] /= np.linalg.norm(pose[:3, 3])
    return pose.reshape(-1)


@pytest.mark.parametrize("elevation_dg,azimuth_dg", [(0, 0), (-30, 0), (15, 90), (-10, 200), (20, -135)])
def test_camera_is_dreamgaussians_mvdream_camera(elevation_dg, azimuth_dg):
    # DreamGaussian (e, a) is threestudio (-e, a - 90) (hash3d.systems.dreamgaussian.common)
    ours = multiview_camera(torch.tensor([-float(elevation_dg)]), torch.tensor([azimuth_dg - 90.0]))[0]
    np.testing.assert_allclose(ours.numpy(), _kiui_blender_camera(elevation_dg, azimuth_dg), atol=1e-6)


@pytest.mark.parametrize("family", ["mvdream", "imagedream"])
def test_sds_gradient_matches_a_direct_call_in_the_original_row_order(multiview_models, family):
    g = _guidance(multiview_models[family], family)
    latents = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = g(latents, ELEV, AZIM, DIST, rgb_as_latents=True)
    out.loss.backward()
    t = int(out.timesteps[0])
    assert t == round((1 - 250 / 500) * 1000) and bool((out.timesteps == t).all())  # annealed, one t for all
    # independent computation: frames of a set next to each other, [uncond; cond] halves, as the upstream code
    alpha = g.alphas_cumprod[t]
    x_t = alpha.sqrt() * latents.detach() + (1 - alpha).sqrt() * out.noise
    frames = 5 if family == "imagedream" else 4
    unet = g.unet
    preds = []
    for s in range(2):
        x = x_t[4 * s : 4 * s + 4]
        cam = multiview_camera(ELEV[4 * s : 4 * s + 4], AZIM[4 * s : 4 * s + 4])
        if family == "imagedream":
            x = torch.cat([x, torch.zeros(1, 4, 8, 8)])
            cam = torch.cat([cam, torch.zeros(1, 16)])
        emb = g.text_embeddings
        context = torch.cat([emb[1:].expand(frames, -1, -1), emb[:1].expand(frames, -1, -1)])
        kwargs = {}
        if family == "imagedream":
            feats, ref = g.image_features, g.image_latent
            kwargs = dict(ip=torch.cat([torch.zeros_like(feats).expand(frames, -1, -1), feats.expand(frames, -1, -1)]),
                          ip_img=torch.cat([torch.zeros_like(ref), ref]))  # fmt: skip
        with torch.no_grad():
            pred = unet(torch.cat([x, x]), torch.full((2 * frames,), t), context, camera=torch.cat([cam, cam]),
                        num_frames=frames, **kwargs).sample  # fmt: skip
        uncond, cond = pred[:4], pred[frames : frames + 4]
        preds.append(uncond + g.config.guidance_scale * (cond - uncond))
    expected = torch.cat(preds)
    torch.testing.assert_close(out.noise_pred, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    # no w(t), and the loss is 0.5·‖grad‖² over the number of views
    torch.testing.assert_close(out.grad, expected - out.noise, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    torch.testing.assert_close(latents.grad, out.grad / 8)


def test_a_cache_hit_returns_the_stored_set_and_splits_keep_sets_whole(multiview_models):
    path = multiview_models["imagedream"]
    cached = _guidance(path, "imagedream", _cache())
    plain = _guidance(path, "imagedream")
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(4, 4, 8, 8, generator=gen)
    b = torch.randn(4, 4, 8, 8, generator=gen)
    first = cached(a, ELEV[:4], AZIM[:4], DIST[:4], rgb_as_latents=True)
    plain_first = plain(a, ELEV[:4], AZIM[:4], DIST[:4], rgb_as_latents=True)
    assert first.cache_tried and first.cache_hits.tolist() == [False]
    torch.testing.assert_close(first.noise_pred, plain_first.noise_pred)
    # set B in another cell, then set A again, 3 degrees further round (same cell): only A hits, and A's answer is
    # exactly the stored one, while B is what the UNet gives without a cache (the split kept B's views together)
    elev = torch.cat([ELEV[4:], ELEV[:4] + 3])
    azim = torch.cat([AZIM[4:], AZIM[:4] + 3])
    second = cached(torch.cat([b, a]), elev, azim, DIST, rgb_as_latents=True)
    plain_second = plain(torch.cat([b, a]), elev, azim, DIST, rgb_as_latents=True)
    assert second.cache_hits.tolist() == [False, True]
    assert torch.equal(second.noise_pred[4:], first.noise_pred)
    torch.testing.assert_close(second.noise_pred[:4], plain_second.noise_pred[:4], rtol=1e-4, atol=1e-3)
    stats = cached.cache_stats()
    assert (stats["full_sets"], stats["cached_sets"], stats["views_per_set"]) == (2, 1, 4)
    assert (stats["full_samples"], stats["cached_samples"], stats["unet_calls_saved"]) == (8, 4, 4)
    assert stats["entries"] == 2 and stats["hits"] == 1
    assert plain.cache_stats() == {}


def test_another_timestep_cell_misses(multiview_models):
    g = _guidance(multiview_models["mvdream"], "mvdream", _cache())
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    g(x, ELEV[:4], AZIM[:4], DIST[:4], rgb_as_latents=True)
    g.update_step(400, 500)  # t 500 -> 200
    assert g(x, ELEV[:4], AZIM[:4], DIST[:4], rgb_as_latents=True).cache_hits.tolist() == [False]


@pytest.mark.parametrize("family", ["mvdream", "imagedream", "sd"])
def test_refine_runs_the_last_ddim_steps(multiview_models, written_models, family):
    if family == "sd":
        from hash3d.diffusion.guidance import StableDiffusionGuidance, StableDiffusionGuidanceConfig

        g = StableDiffusionGuidance(StableDiffusionGuidanceConfig(pretrained_model_name_or_path=written_models["sd"],
                                                                  dtype="fp32", view_dependent_prompting=False))  # fmt: skip
        g.set_prompt("a photo of an icecream")
        n = 2
    else:
        g = _guidance(multiview_models[family], family)
        n = 4
    calls = []
    handle = g.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    rgb = torch.rand(n, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    images = g.refine(rgb, ELEV[:n], AZIM[:n], DIST[:n], strength=0.8, steps=10)
    handle.remove()
    assert images.shape == (n, 3, 64, 64) and float(images.min()) >= 0 and float(images.max()) <= 1
    assert len(calls) == 10 - int(10 * 0.8)  # DreamGaussian's sense: strength 0.8 runs the last 2 of 10 steps
    assert calls[0] == 2 * n + (2 if family == "imagedream" else 0)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\)"):
        g.refine(rgb, ELEV[:n], AZIM[:n], DIST[:n], strength=1.0)


def test_bad_use_is_a_clear_error(multiview_models):
    path = multiview_models["imagedream"]
    cfg = MultiViewGuidanceConfig(pretrained_model_name_or_path=path, family="imagedream", dtype="fp32")
    g = MultiViewGuidance(cfg)
    x = torch.randn(4, 4, 8, 8)
    with pytest.raises(RuntimeError, match="set_prompt"):
        g(x, ELEV[:4], AZIM[:4], DIST[:4], rgb_as_latents=True)
    g.set_prompt("a corgi")
    with pytest.raises(RuntimeError, match="set_image"):
        g(x, ELEV[:4], AZIM[:4], DIST[:4], rgb_as_latents=True)
    with pytest.raises(ValueError, match="the prompt is empty"):
        g.set_prompt("  ")
    g.set_image(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="not whole sets of 4 views"):
        g(x[:3], ELEV[:3], AZIM[:3], DIST[:3], rgb_as_latents=True)
    with pytest.raises(ValueError, match="set cache.mode to noise"):
        MultiViewGuidanceConfig(cache=CacheConfig(enabled=True, mode="features"))
    with pytest.raises(ValueError, match="family must be"):
        MultiViewGuidanceConfig(family="zero123")


def test_a_ring_of_views_is_one_entry_whichever_view_comes_first(multiview_models):
    from hash3d.diffusion.guidance.multiview import canonical_order

    assert canonical_order(torch.tensor([[95.0, 185.0, 275.0, 5.0], [-170.0, -80.0, 10.0, 100.0]])).tolist() == [
        [3, 0, 1, 2], [2, 3, 0, 1]]  # fmt: skip
    plain = _guidance(multiview_models["mvdream"], "mvdream")
    cached = _guidance(multiview_models["mvdream"], "mvdream", _cache())
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    elev = torch.full((4,), 10.0)
    ring = torch.tensor([5.0, 95.0, 185.0, 275.0])
    roll = [1, 2, 3, 0]
    # the same set drawn from its second view: the same predictions, rolled (the UNet ignores the order of views)
    a = plain(x, elev, ring, DIST[:4], rgb_as_latents=True)
    plain.reset()  # the same noise again: pick latents whose noisy version is a's, rolled
    alpha = plain.alphas_cumprod[a.timesteps[0]]
    x_t = alpha.sqrt() * x + (1 - alpha).sqrt() * a.noise
    b = plain((x_t[roll] - (1 - alpha).sqrt() * a.noise) / alpha.sqrt(), elev, ring[roll], DIST[:4], rgb_as_latents=True)
    # float32 rounding of a random UNet, x100 by CFG; a view out of place would be off by the output's whole size
    torch.testing.assert_close(b.noise_pred, a.noise_pred[roll], rtol=1e-4, atol=1e-2 * float(a.noise_pred.abs().max()))
    # and through the cache: one entry, hit by the rolled set, 2 degrees further round
    first = cached(x, elev, ring, DIST[:4], rgb_as_latents=True)
    second = cached(x[roll], elev, ring[roll] + 2, DIST[:4], rgb_as_latents=True)
    assert second.cache_hits.tolist() == [True]
    assert torch.equal(second.noise_pred, first.noise_pred[roll])
