"""SDS guidance: the gradient against an independent computation, cache-off exactness, prompts, cameras, schedules."""

from __future__ import annotations

import math

import pytest
import torch

from hash3d.cache.config import CacheConfig, CachePolicyConfig
from hash3d.diffusion.guidance import (
    StableDiffusionGuidance,
    StableDiffusionGuidanceConfig,
    Zero123Guidance,
    Zero123GuidanceConfig,
)
from hash3d.diffusion.guidance.stable_diffusion import view_direction
from hash3d.diffusion.guidance.zero123 import camera_embedding
from hash3d.diffusion.schedule import schedule_value

CAMS = (torch.tensor([10.0, 20.0]), torch.tensor([30.0, -150.0]), torch.tensor([1.2, 1.4]))


def zero123(path, **kw):
    g = Zero123Guidance(Zero123GuidanceConfig(pretrained_model_name_or_path=path, dtype="fp32", **kw))
    g.set_image(torch.rand(4, 48, 48, generator=torch.Generator().manual_seed(0)), 5.0, 0.0, 1.2)
    return g


def manual_zero123_eps(g: Zero123Guidance, latents, out, cams):
    """ε̂ from a plain UNet call assembled here, independent of the guidance's own code path."""
    t, noise = out.timesteps, out.noise
    ab = g.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).float()
    x_t = ab.sqrt() * latents + (1 - ab).sqrt() * noise
    elev, azim, dist = cams
    cam = torch.stack(
        [
            torch.deg2rad(5.0 - elev),
            torch.sin(torch.deg2rad(azim)),
            torch.cos(torch.deg2rad(azim)),
            torch.full_like(elev, math.radians(85.0)) if g.camera_kind == "stable" else dist - 1.2,
        ],
        -1,
    )
    clip = g.clip_embedding.expand(2, -1, -1)
    cond = g.cc_projection(torch.cat([clip, cam[:, None]], -1))
    ctx = torch.cat([cond, torch.zeros_like(cond)])
    c_concat = g.cond_latents.expand(2, -1, -1, -1)
    x_in = torch.cat([torch.cat([x_t, x_t]), torch.cat([c_concat, torch.zeros_like(c_concat)])], 1)
    with torch.no_grad():
        pred = g.unet(x_in, torch.cat([t, t]), encoder_hidden_states=ctx).sample
    if g.prediction_type == "v_prediction":
        ab2 = torch.cat([ab, ab])
        pred = ab2.sqrt() * pred + (1 - ab2).sqrt() * torch.cat([x_t, x_t])
    cond_eps, uncond_eps = pred.chunk(2)
    return uncond_eps + g.config.guidance_scale * (cond_eps - uncond_eps), ab


@pytest.mark.parametrize("family", ["zero123", "zero123_v"])
def test_zero123_gradient_equals_weighted_residual(written_models, family):
    g = zero123(written_models[family], camera_embedding="stable" if family == "zero123" else "xl")
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = g(latents, *CAMS, rgb_as_latents=True)
    out.loss.backward()
    eps_hat, ab = manual_zero123_eps(g, latents.detach(), out, CAMS)
    expected = (1 - ab) * (eps_hat - out.noise)
    torch.testing.assert_close(latents.grad, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.grad, expected, rtol=1e-4, atol=1e-5)


def test_batch_mean_reduction_and_grad_clip(written_models):
    g = zero123(written_models["zero123"], loss_reduction="batch_mean", grad_clip=0.01)
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = g(latents, *CAMS, rgb_as_latents=True)
    out.loss.backward()
    assert out.grad.abs().max() <= 0.01 + 1e-7
    torch.testing.assert_close(latents.grad, out.grad / 2)


def test_cache_off_path_is_bit_identical_to_a_plain_unet_call(written_models):
    latents = torch.randn(2, 4, 8, 8)
    outs = []
    for cache in (CacheConfig(enabled=False), CacheConfig(enabled=True, policy=CachePolicyConfig(probability=1.0))):
        g = zero123(written_models["zero123"], cache=cache)
        outs.append(g(latents, *CAMS, rgb_as_latents=True))  # with the cache on, the first call is a miss
        eps_hat, _ = manual_zero123_eps(g, latents, outs[-1], CAMS)
        torch.testing.assert_close(outs[-1].noise_pred, eps_hat, rtol=1e-5, atol=1e-6)
    assert torch.equal(outs[0].timesteps, outs[1].timesteps) and torch.equal(outs[0].noise, outs[1].noise)
    assert torch.equal(outs[0].noise_pred, outs[1].noise_pred)
    assert torch.equal(outs[0].grad, outs[1].grad)


def test_cache_hit_reuses_and_stats_per_step(written_models):
    cache = CacheConfig(enabled=True, mode="noise", cell_size=(10, 10, 0.1, 1000), policy=CachePolicyConfig(1.0))
    g = zero123(written_models["zero123"], cache=cache, timestep_sampling="random_shared")
    latents = torch.randn(2, 4, 8, 8)
    first = g(latents, *CAMS, rgb_as_latents=True)
    assert first.cache_tried and not first.cache_hits.any()
    second = g(latents, *CAMS, rgb_as_latents=True)
    assert second.cache_hits.all()
    stats = g.cache_stats()
    assert stats["hits"] == 2 and stats["inserts"] == 2 and stats["unet_calls_saved"] == 2
    g.set_image(torch.rand(3, 32, 32))  # a new input image starts a new run
    assert g.cache_stats()["entries"] == 0


def test_resume_state_continues_the_noise_and_the_cache(written_models):
    """A guidance built afresh and given `resume_state()` of one mid-run draws the same timesteps and noise and
    answers from the same cache entries as the original from there on."""
    cache = CacheConfig(enabled=True, mode="features", cell_size=(10, 10, 0.1, 1000), policy=CachePolicyConfig(0.7))
    a = zero123(written_models["zero123"], cache=cache)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        a(latents, *CAMS, rgb_as_latents=True)
    state = a.resume_state()
    assert state["cache"]["table"]["pool_values"] is not None
    b = zero123(written_models["zero123"], cache=cache)
    b.load_resume_state(state)
    assert b.cache_stats() == a.cache_stats()
    hits = 0
    for _ in range(4):
        out_a, out_b = a(latents, *CAMS, rgb_as_latents=True), b(latents, *CAMS, rgb_as_latents=True)
        assert torch.equal(out_a.timesteps, out_b.timesteps) and torch.equal(out_a.noise, out_b.noise)
        assert torch.equal(out_a.grad, out_b.grad) and out_a.cache_tried == out_b.cache_tried
        hits += int(out_a.cache_hits.sum()) if out_a.cache_tried else 0
    assert hits > 0 and b.cache_stats() == a.cache_stats()
    plain = zero123(written_models["zero123"])  # no cache here: only the generator is taken
    plain.load_resume_state(state)
    assert not torch.equal(plain.generator.get_state(), a.generator.get_state())  # a has drawn on since
    assert torch.equal(plain.generator.get_state(), state["generator"])


def test_stable_diffusion_gradient_and_view_prompts(written_models):
    g = StableDiffusionGuidance(StableDiffusionGuidanceConfig(pretrained_model_name_or_path=written_models["sd"], dtype="fp32", guidance_scale=7.5))
    with pytest.raises(RuntimeError, match="set_prompt"):
        g(torch.rand(2, 3, 64, 64), *CAMS)
    with pytest.raises(ValueError, match="prompt is empty"):
        g.set_prompt("  ")
    g.set_prompt("a wooden chair")
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = g(latents, *CAMS, rgb_as_latents=True)
    out.loss.backward()
    t = out.timesteps
    ab = g.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).float()
    x_t = ab.sqrt() * latents.detach() + (1 - ab).sqrt() * out.noise
    texts = ["a wooden chair, front view", "a wooden chair, back view"]  # azimuth 30 -> front, -150 -> back
    ids = g.tokenizer(texts, padding="max_length", max_length=g.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    neg = g.tokenizer(["", ""], padding="max_length", max_length=g.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        ctx = torch.cat([g.text_encoder(ids)[0], g.text_encoder(neg)[0]])
        pred = g.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=ctx).sample
    c, u = pred.chunk(2)
    expected = (1 - ab) * (u + 7.5 * (c - u) - out.noise)
    torch.testing.assert_close(latents.grad, expected, rtol=1e-4, atol=1e-5)
    # rgb path: renders go through the VAE encoder and the gradient reaches the pixels
    rgb = torch.rand(2, 3, 32, 32, requires_grad=True)
    g(rgb, *CAMS).loss.backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_view_direction_thresholds():
    cfg = StableDiffusionGuidanceConfig()
    elev = torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0, 0.0])
    azim = torch.tensor([0.0, 44.0, 90.0, 170.0, 0.0, 540.0])
    assert view_direction(elev, azim, cfg).tolist() == [1, 1, 0, 2, 3, 2]


def test_camera_embedding_values():
    e, a, d = torch.tensor([20.0]), torch.tensor([90.0]), torch.tensor([1.5])
    stable = camera_embedding(e, a, d, 5.0, 0.0, 1.2, "stable")[0]
    torch.testing.assert_close(stable, torch.tensor([math.radians(-15), 1.0, 0.0, math.radians(85)]), atol=1e-6, rtol=0)
    xl = camera_embedding(e, a, d, 5.0, 0.0, 1.2, "xl")[0]
    torch.testing.assert_close(xl, torch.tensor([math.radians(-15), 1.0, 0.0, 0.3]), atol=1e-6, rtol=0)


def test_timestep_sampling_and_schedules(written_models):
    assert schedule_value(0.5, 10) == 0.5
    assert schedule_value([50, 0.7, 0.3, 200], 0) == 0.7
    assert schedule_value([50, 0.7, 0.3, 200], 125) == pytest.approx(0.5)
    assert schedule_value([50, 0.7, 0.3, 200], 500) == pytest.approx(0.3)
    assert schedule_value([0.7, 0.3, 100], 50) == pytest.approx(0.5)
    assert schedule_value([100, 7, 5, 150, 10, 200], 175) == pytest.approx(7.5)
    g = zero123(written_models["zero123"], min_step_percent=[50, 0.7, 0.3, 200], max_step_percent=[50, 0.98, 0.8, 200])
    g.update_step(0)
    assert (g.min_step, g.max_step) == (700, 980)
    t = g.sample_timesteps(64)
    assert t.min() >= 700 and t.max() <= 980 and len(set(t.tolist())) > 1
    g.update_step(300)
    assert (g.min_step, g.max_step) == (300, 800)
    shared = zero123(written_models["zero123"], timestep_sampling="random_shared")
    assert len(set(shared.sample_timesteps(8).tolist())) == 1
    annealed = zero123(written_models["zero123"], timestep_sampling="annealed")
    annealed.update_step(250, max_steps=500)
    assert annealed.sample_timesteps(3).tolist() == [500, 500, 500]
    with pytest.raises(ValueError, match="timestep range"):
        zero123(written_models["zero123"], min_step_percent=0.9, max_step_percent=0.5)


def test_zero123_input_errors(written_models):
    g = Zero123Guidance(Zero123GuidanceConfig(pretrained_model_name_or_path=written_models["zero123"], dtype="fp32"))
    with pytest.raises(RuntimeError, match="set_image"):
        g(torch.rand(1, 3, 64, 64), *[c[:1] for c in CAMS])
    with pytest.raises(ValueError, match="3 \\(RGB\\) or 4 \\(RGBA\\)"):
        g.set_image(torch.rand(2, 16, 16))
    with pytest.raises(ValueError, match="weighting"):
        Zero123GuidanceConfig(weighting="dreamfusion")


@pytest.mark.parametrize("reduction, scale", [("sum", 1.0), ("batch_mean", 1.0 / 3)])
def test_sds_loss_value_and_gradient(reduction, scale):
    """Value 0.5·s·‖grad‖² (threestudio's 0.5·‖x − (x − grad)‖²), gradient s·grad, in the latents' dtype."""
    from hash3d.diffusion.guidance import sds_loss
    from hash3d.diffusion.guidance.losses import sds_loss_value

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 4, 5, 5, generator=g, dtype=dtype, requires_grad=True)
        grad = torch.randn(3, 4, 5, 5, generator=g, dtype=dtype)
        loss = sds_loss(x, grad, reduction)
        reference = 0.5 * ((x.detach() - (x.detach() - grad)) ** 2).sum() * scale
        torch.testing.assert_close(loss.double(), reference.double(), rtol=1e-5, atol=0)
        (2.0 * loss).backward()
        assert x.grad.dtype == dtype
        torch.testing.assert_close(x.grad, 2.0 * scale * grad, rtol=1e-6, atol=0)

        # a value computed beforehand (inside a CUDA graph) is the loss itself; the gradient is unchanged
        value = sds_loss_value(grad, scale)
        x.grad = None
        given = sds_loss(x, grad, reduction, value=value)
        assert given.data_ptr() == value.data_ptr() and given.grad_fn is not None
        torch.testing.assert_close(given.double(), reference.double(), rtol=1e-5, atol=0)
        given.backward()
        torch.testing.assert_close(x.grad, scale * grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode", ["features", "noise"])
@pytest.mark.parametrize("family", ["zero123", "zero123_v"])
def test_hit_step_matches_the_host_dispatched_step(written_models, mode, family):
    """The SDS step with the prepare/answer stages of hit_step.HitStepGraphs (run eagerly here; CUDA graphs on a GPU)
    gives the plain cached step's gradients, hits, noise stream and counters, over all-hit, split and all-miss
    batches, with the policy trying only some requests and a gradient clip."""
    from hash3d.diffusion.guidance.hit_step import HitStepGraphs

    cache = CacheConfig(enabled=True, mode=mode, cell_size=(10, 10, 0.1, 1000), policy=CachePolicyConfig(0.7, seed=3))
    results = {}
    for staged in (False, True):
        g = zero123(written_models[family], cache=cache, grad_clip=0.5)
        if staged:
            g._hit_step = HitStepGraphs(g, g.cache, capture=False)
        latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        seq = []
        for azim in ([0.0, 90.0, 180.0], [0.0, 90.0, 180.0], [0.0, 135.0, 180.0], [0.0, 135.0, 180.0],
                     [40.0, 135.0, 180.0], [0.0, 90.0, 180.0], [0.0, 90.0, 180.0], [0.0, 90.0, 180.0]):
            x = latents.clone().requires_grad_(True)
            out = g(x, torch.tensor([10.0, 20.0, 30.0]), torch.tensor(azim), torch.full((3,), 1.2), rgb_as_latents=True)
            out.loss.backward()
            seq.append((x.grad, out.noise, None if out.cache_hits is None else out.cache_hits.tolist(), out.loss))
        results[staged] = (seq, g.cache.stats)
    (plain, s_p), (staged, s_s) = results[False], results[True]
    patterns = set()
    for (grad_p, noise_p, hits_p, loss_p), (grad_s, noise_s, hits_s, loss_s) in zip(plain, staged):
        assert hits_p == hits_s
        patterns.add(None if hits_p is None else sum(hits_p))
        assert torch.equal(noise_p, noise_s)
        torch.testing.assert_close(grad_s, grad_p, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss_s, loss_p, rtol=1e-5, atol=1e-6)  # computed inside the answer stage
    assert {None, 0, 3} <= patterns and len(patterns) > 3, patterns  # untried, all-miss, all-hit and split steps
    for name in ("calls", "tried", "queries", "hits", "inserts", "full_samples", "cached_samples"):
        assert s_s[name] == s_p[name], name


def test_hit_step_is_freed_without_the_cycle_collector(written_models):
    """Captured graphs left in a reference cycle get freed by the cyclic collector at an arbitrary moment, which
    breaks any capture in progress: dropping the cache must free the hit step at once."""
    import gc
    import weakref

    from hash3d.diffusion.guidance.hit_step import HitStepGraphs

    g = zero123(written_models["zero123"], cache=CacheConfig(enabled=True, mode="noise"))
    g._hit_step = HitStepGraphs(g, g.cache, capture=False)
    ref = weakref.ref(g._hit_step)
    assert g.cache.stats["graphs_captured"] == 0
    gc.disable()
    try:
        g.set_cache(CacheConfig(enabled=False))
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("mode", ["noise", "features"])
@pytest.mark.parametrize("hit_graphs", [True, False])
def test_hit_graphs_switch_attaches_the_graphed_hit_step(written_models, hit_graphs, mode):
    """One boolean picks the graphed hit step or the eager path, in either mode (only where CUDA graphs are on: forced
    on here, nothing is captured)."""
    g = zero123(written_models["zero123"], hit_graphs=hit_graphs)
    g._graphs_on = True
    g.set_cache(CacheConfig(enabled=True, mode=mode))
    assert (g._hit_step is not None) == hit_graphs
    g._graphs_on = False  # the CPU machine's real setting: never attached
    g.set_cache(CacheConfig(enabled=True, mode=mode))
    assert g._hit_step is None



@pytest.mark.slow  # inductor compiles the encoder's forward and backward (about a minute with a cold compile cache)
def test_compiled_vae_encoder_gives_the_eager_latents_and_image_gradients(written_models):
    """vae_encoder=compiled: the SDS encode through `torch.compile` agrees with the eager encoder, forward and
    backward, for each batch shape it meets."""
    mode = "compiled"
    eager, other = (zero123(written_models["zero123"], vae_encoder=m) for m in ("eager", mode))
    for batch in (2, 3):
        rgb = torch.rand(batch, 3, 48, 48, generator=torch.Generator().manual_seed(batch))
        weights = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(10 + batch))
        results = []
        for g in (eager, other):
            g.generator.manual_seed(5)  # the same posterior sample
            x = rgb.clone().requires_grad_(True)
            latents = g.encode_images(x)
            (latents * weights).sum().backward()
            results.append((latents.detach(), x.grad))
        (lat_e, grad_e), (lat_o, grad_o) = results
        assert lat_o.shape == (batch, 4, 8, 8)
        torch.testing.assert_close(lat_o, lat_e, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grad_o, grad_e, rtol=1e-4, atol=1e-5)
        assert grad_e.abs().max() > 0


def test_unknown_vae_encoder_mode_is_refused(written_models):
    with pytest.raises(ValueError, match="vae_encoder must be one of 'eager', 'compiled'; got 'fast'"):
        Zero123GuidanceConfig(pretrained_model_name_or_path=written_models["zero123"], vae_encoder="fast")
