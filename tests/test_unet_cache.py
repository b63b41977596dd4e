"""The Hash3D cache on a stock diffusers UNet: exactness, mixed batches, policy, removal, reset."""

from __future__ import annotations

import io
import re

import pytest
import torch
from diffusers import UNet2DConditionModel

from hash3d.cache.config import CacheConfig, CachePolicyConfig
from hash3d.diffusion import apply_hash_cache, get_hash_cache, remove_hash_cache

B = 3


def tiny_unet(layers_per_block: int = 1) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        layers_per_block=layers_per_block,
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 8, 8, 8, generator=g)
    ctx = torch.randn(2 * B, 2, 16, generator=g)
    t = torch.tensor([500, 620, 700] * 2)
    keys = torch.tensor([[10.0, 20.0, 1.5, 500.0], [10.0, 120.0, 1.5, 620.0], [30.0, 220.0, 1.5, 700.0]])
    return x, ctx, t, keys


def cfg(mode: str, probability: float = 1.0, **policy) -> CacheConfig:
    return CacheConfig(enabled=True, mode=mode, policy=CachePolicyConfig(probability=probability, **policy))


def run(unet, x, ctx, t, cache=None, keys=None, **kwargs):
    xin = torch.cat([x, x])
    with torch.no_grad():
        if cache is None:
            return unet(xin, t, encoder_hidden_states=ctx, **kwargs)
        with cache.request(keys, x[:, :4]):
            return unet(xin, t, encoder_hidden_states=ctx, **kwargs)


@pytest.mark.parametrize("mode", ["features", "noise"])
def test_hit_at_same_input_equals_full_output(mode):
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    ref = run(unet, x, ctx, t).sample
    cache = apply_hash_cache(unet, cfg(mode))
    miss = run(unet, x, ctx, t, cache, keys).sample
    assert cache.last_hits is not None and not cache.last_hits.any()
    hit = run(unet, x, ctx, t, cache, keys).sample
    assert cache.last_hits.all()
    torch.testing.assert_close(miss, ref, rtol=0, atol=0)
    if mode == "noise":
        assert torch.equal(hit, ref)  # the stored prediction, exactly
    else:
        torch.testing.assert_close(hit, ref, rtol=1e-5, atol=1e-5)
    s = cache.stats
    assert (s["queries"], s["hits"], s["inserts"], s["full_samples"], s["cached_samples"]) == (6, 3, 3, 3, 3)


def test_features_hit_runs_only_shallow_blocks():
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    cache = apply_hash_cache(unet, cfg("features"))
    run(unet, x, ctx, t, cache, keys)
    resnet_calls = []
    hooks = [
        m.register_forward_hook(lambda mod, a, o, name=name: resnet_calls.append(name))
        for name, m in unet.named_modules()
        if name.endswith("resnets.0")
    ]
    run(unet, x, ctx, t, cache, keys)
    for h in hooks:
        h.remove()
    assert cache.last_hits.all()
    assert sorted(resnet_calls) == ["down_blocks.0.resnets.0", "up_blocks.3.resnets.0"]


@pytest.mark.parametrize("mode", ["features", "noise"])
def test_mixed_batch_equals_per_sample(mode):
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    cache = apply_hash_cache(unet, cfg(mode))
    run(unet, x, ctx, t, cache, keys)  # prime all three keys at x
    # sample 1 moves to a new cell (miss) with a new latent; 0 and 2 stay (hits)
    keys2, x2 = keys.clone(), x.clone()
    keys2[1, 1] = 300.0
    x2[1] += 0.5
    out = run(unet, x2, ctx, t, cache, keys2).sample
    assert cache.last_hits.tolist() == [True, False, True]
    remove_hash_cache(unet)
    for i in range(B):
        rows = [i, i + B]
        single = apply_hash_cache(unet, cfg(mode))
        # per-sample reference: prime sample i alone at x, then ask at x2 with key2
        run(unet, x[i : i + 1], ctx[rows], t[rows], single, keys[i : i + 1])
        ref = run(unet, x2[i : i + 1], ctx[rows], t[rows], single, keys2[i : i + 1]).sample
        remove_hash_cache(unet)
        torch.testing.assert_close(out[rows], ref, rtol=1e-5, atol=1e-5)


def test_return_dict_false_and_outside_request():
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    ref = run(unet, x, ctx, t).sample
    cache = apply_hash_cache(unet, cfg("features"))
    out = run(unet, x, ctx, t, cache, keys, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[0], ref, rtol=0, atol=0)
    run(unet, x, ctx, t, cache, keys, return_dict=False)
    assert cache.last_hits.all()
    # a call outside any request is the plain UNet and touches nothing
    before = cache.stats
    torch.testing.assert_close(run(unet, x, ctx, t).sample, ref, rtol=0, atol=0)
    assert cache.stats == before


@pytest.mark.parametrize("mode", ["features", "noise"])
def test_removal_restores_exact_output_and_double_apply_fails(mode):
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    ref = run(unet, x, ctx, t).sample
    cache = apply_hash_cache(unet, cfg(mode))
    with pytest.raises(RuntimeError, match="already attached"):
        apply_hash_cache(unet, cfg(mode))
    assert get_hash_cache(unet) is not None
    run(unet, x, ctx, t, cache, keys)
    cache.remove()
    assert get_hash_cache(unet) is None
    assert torch.equal(run(unet, x, ctx, t).sample, ref)
    assert all(not getattr(m, "_diffusers_hook", None) or not m._diffusers_hook.hooks for m in unet.modules())
    apply_hash_cache(unet, cfg(mode))  # can attach again after removal


def test_reset_forgets_entries_and_restarts_policy():
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    cache = apply_hash_cache(unet, cfg("noise", probability=0.5, seed=3))
    pattern = []
    for _ in range(12):
        run(unet, x, ctx, t, cache, keys)
        pattern.append(cache.last_hits is not None)
    assert 0 < sum(pattern) < 12
    cache.reset()
    assert cache.stats["entries"] == 0 and cache.stats["queries"] == 0
    again = []
    for _ in range(12):
        run(unet, x, ctx, t, cache, keys)
        again.append(cache.last_hits is not None)
    assert again == pattern


def test_policy_probability_zero_and_forced_full_calls():
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    never = apply_hash_cache(unet, cfg("noise", probability=0.0))
    for _ in range(3):
        run(unet, x, ctx, t, never, keys)
        assert never.last_hits is None
    s = never.stats
    assert s["queries"] == 0 and s["inserts"] == 9 and s["full_samples"] == 9
    never.remove()
    forced = apply_hash_cache(unet, CacheConfig(enabled=True, mode="noise", policy=CachePolicyConfig(1.0, force_full_every=2)))
    tried = []
    for _ in range(4):
        run(unet, x, ctx, t, forced, keys)
        tried.append(forced.last_hits is not None)
    assert tried == [True, False, True, False]


def test_bad_requests_and_configs():
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    cache = apply_hash_cache(unet, cfg("noise"))
    with pytest.raises(ValueError, match="keys must be"):
        with cache.request(keys[:, :3], x[:, :4]):
            pass
    with pytest.raises(ValueError, match="latents batch"):
        with cache.request(keys, x[:2, :4]):
            pass
    with pytest.raises(ValueError, match="not a multiple"):
        four = torch.cat([keys, keys[:1]])
        with cache.request(four, torch.cat([x, x[:1]])[:, :4]), torch.no_grad():
            unet(torch.cat([x, x]), t, encoder_hidden_states=ctx)
    cache.remove()
    with pytest.raises(ValueError, match="cache.depth"):
        apply_hash_cache(unet, CacheConfig(enabled=True, mode="features", depth=4))
    with pytest.raises(ValueError, match="cache.mode"):
        CacheConfig(mode="latent")
    with pytest.raises(ValueError, match="cache.split_min_latent_pixels must be >= 1; got 0"):
        CacheConfig(split_min_latent_pixels=0)
    with pytest.raises(ValueError, match="probability"):
        CachePolicyConfig(probability=1.5)
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        apply_hash_cache(torch.nn.Linear(2, 2), CacheConfig(enabled=True))


def test_depth_two_hit_equals_full_output():
    unet = tiny_unet(layers_per_block=2)
    x, ctx, t, keys = inputs()
    ref = run(unet, x, ctx, t).sample
    cache = apply_hash_cache(unet, CacheConfig(enabled=True, mode="features", depth=2, policy=CachePolicyConfig(1.0)))
    run(unet, x, ctx, t, cache, keys)
    hit = run(unet, x, ctx, t, cache, keys).sample
    assert cache.last_hits.all()
    torch.testing.assert_close(hit, ref, rtol=1e-5, atol=1e-5)


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


def _shifted_inputs(step: int):
    """Inputs of call `step`: the same three cells, latents a little different each call."""
    x, ctx, t, keys = inputs()
    return x + 0.01 * step, ctx, t, keys


@pytest.mark.parametrize("mode", ["features", "noise"])
def test_state_dict_continues_exactly_in_a_fresh_cache(mode):
    """A cache restored into another UNet process-alike (new hooks, nothing recorded) answers the next calls
    exactly like the original: outputs, hit patterns (the policy's stream) and statistics."""
    config = cfg(mode, probability=0.5, seed=4)
    unet = tiny_unet()
    cache = apply_hash_cache(unet, config)
    for step in range(6):
        run(unet, *_shifted_inputs(step)[:3], cache, _shifted_inputs(step)[3])
    state = _roundtrip(cache.state_dict())
    other_unet = tiny_unet()
    restored = apply_hash_cache(other_unet, config)
    restored.load_state_dict(state)
    assert restored.stats == cache.stats
    tried = []
    for step in range(6, 14):
        x, ctx, t, keys = _shifted_inputs(step)
        a = run(unet, x, ctx, t, cache, keys).sample
        b = run(other_unet, x, ctx, t, restored, keys).sample
        assert torch.equal(a, b), step
        assert (cache.last_hits is None) == (restored.last_hits is None)
        if cache.last_hits is not None:
            assert torch.equal(cache.last_hits, restored.last_hits)
            tried.append(bool(cache.last_hits.all()))
    assert any(tried) and 0 < len(tried) < 8  # some calls answered from the cache, some not tried at all
    assert restored.stats == cache.stats
    # a first call after the restore that hits everywhere: features mode needs the saved block structure
    always = apply_hash_cache(tiny_unet(), cfg(mode, probability=1.0))
    always.load_state_dict(state)
    x, ctx, t, keys = _shifted_inputs(6)
    out = run(always.unet, x, ctx, t, always, keys).sample
    assert always.last_hits.all() and torch.isfinite(out).all()


def test_state_dict_without_the_table():
    """save_in_checkpoint=false: the state holds the policy's stream and counters only; loading it starts the table
    empty. Turning the option off at load time ignores a saved table."""
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    light = CacheConfig(enabled=True, mode="noise", save_in_checkpoint=False, policy=CachePolicyConfig(0.5, seed=2))
    cache = apply_hash_cache(unet, light)
    for _ in range(5):
        run(unet, x, ctx, t, cache, keys)
    state = _roundtrip(cache.state_dict())
    assert state["table"] is None and state["calls"] == 5
    cache.remove()
    restored = apply_hash_cache(unet, light)
    restored.load_state_dict(state)
    s = restored.stats
    assert (s["calls"], s["entries"], s["inserts"]) == (5, 0, 0) and s["tried"] == state["tried"]
    assert restored._state.policy.rng.getstate() == cache._state.policy.rng.getstate()
    restored.remove()
    heavy = apply_hash_cache(unet, cfg("noise", probability=0.5, seed=2))
    for _ in range(3):
        run(unet, x, ctx, t, heavy, keys)
    full_state = heavy.state_dict()
    heavy.remove()
    ignoring = apply_hash_cache(unet, light)
    ignoring.load_state_dict(full_state)
    assert ignoring.stats["entries"] == 0 and ignoring.stats["calls"] == 3


def test_load_state_dict_refuses_another_mode_depth_or_grid():
    unet = tiny_unet(layers_per_block=2)
    x, ctx, t, keys = inputs()
    cache = apply_hash_cache(unet, cfg("features"))
    run(unet, x, ctx, t, cache, keys)
    state = cache.state_dict()
    cache.remove()
    other = {
        "mode: 'features' saved, 'noise' now": cfg("noise"),
        "depth: 1 saved, 2 now": CacheConfig(enabled=True, mode="features", depth=2),
        "cell_sizes": CacheConfig(enabled=True, mode="features", adaptive=True),
        "n_buckets": CacheConfig(enabled=True, mode="features", n_buckets=64),
    }
    for expected, config in other.items():
        attached = apply_hash_cache(unet, config)
        with pytest.raises(ValueError, match=re.escape(expected) + ".*resume with the same cache config"):
            attached.load_state_dict(state)
        assert attached.stats["calls"] == 0  # nothing was loaded
        attached.remove()


def test_no_graphs_on_the_cpu(written_models):
    """Without CUDA graphs the cache reports no captures (the statistic is there for the GPU benchmarks)."""
    from hash3d.diffusion.loading import load_zero123

    parts = load_zero123(written_models["zero123"], torch.float32, torch.device("cpu"))
    cache = apply_hash_cache(parts.unet, CacheConfig(mode="noise"), "cpu", cuda_graphs=True)
    assert cache.stats["graphs_captured"] == 0
    cache.remove()


def _request_sequence(steps: int, n_keys: int, seed: int, spread: float = 10.0):
    """Keys from a few cells (all-hit, all-miss and split batches all occur), inputs, conditioning, timesteps."""
    g = torch.Generator().manual_seed(seed)
    keys = None
    for step in range(steps):
        if step % 3 == 2:  # the same cameras again: an all-hit batch
            yield keys, torch.randn(n_keys, 8, 8, 8, generator=g), torch.randn(2 * n_keys, 2, 16, generator=g), keys[:, 3].long().repeat(2)
            continue
        keys = torch.stack(
            [torch.randint(0, 2, (n_keys,), generator=g) * spread + 5.0, torch.randint(0, 3, (n_keys,), generator=g) * spread + 5.0,
             torch.full((n_keys,), 1.5), torch.randint(0, 2, (n_keys,), generator=g) * 100.0 + 50.0], -1
        )
        yield keys, torch.randn(n_keys, 8, 8, 8, generator=g), torch.randn(2 * n_keys, 2, 16, generator=g), keys[:, 3].long().repeat(2)


def assert_same_requests(seq_a, stats_a, seq_b, stats_b, n_keys: int, rtol: float, atol: float) -> None:
    """Two runs of one request sequence, [(output, hit mask)] and stats each: same hits, outputs and counters, and the
    sequence held all-miss, all-hit and split batches."""
    counts = set()
    for (out_a, hit_a), (out_b, hit_b) in zip(seq_a, seq_b):
        assert torch.equal(hit_a, hit_b)
        counts.add(int(hit_a.sum()))
        torch.testing.assert_close(out_b, out_a, rtol=rtol, atol=atol)
    assert {0, n_keys} <= counts and len(counts) > 2, "the sequence must hold all-miss, all-hit and split batches"
    for name in ("queries", "hits", "inserts", "evictions", "entries", "full_samples", "cached_samples"):
        assert stats_b[name] == stats_a[name], name


def test_bucket_for_is_the_smallest_bucket_that_holds_the_rows():
    from hash3d.diffusion.cache_graph import bucket_for

    assert [bucket_for(c, 6) for c in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    assert bucket_for(24, 24) == 24 and bucket_for(17, 24) == 24 and bucket_for(9, 24) == 16
    for n in range(1, 41):
        sizes = [2**k for k in range(n.bit_length()) if 2**k < n] + [n]  # powers of two below n, then n
        for count in range(1, n + 1):
            assert bucket_for(count, n) == min(s for s in sizes if s >= count)
            for floor in range(1, n + 3):  # a floor: the smallest size at or above both, n whatever the floor
                assert bucket_for(count, n, floor) == min([s for s in sizes if s >= max(count, floor)] + [n])
    assert [bucket_for(c, 8, 8) for c in range(1, 9)] == [8] * 8  # Zero123's 8 rows, 8 rows of 32x32 latents
    assert [bucket_for(c, 24, 8) for c in (1, 2, 8, 9, 16, 17)] == [8, 8, 8, 16, 16, 24]


def test_requests_are_counted_as_answered_whole_or_split():
    """A request whose every key hits runs no UNet pass (noise mode); one split between hits and misses still runs
    one over its misses: the statistics tell the two apart, and a resumed cache keeps the counts."""
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    cache = apply_hash_cache(unet, cfg("noise"))
    run(unet, x, ctx, t, cache, keys)  # all miss: inserted
    run(unet, x, ctx, t, cache, keys)  # all hit
    moved = keys.clone()
    moved[0, 1] += 90.0  # one key in a new cell: a split request
    run(unet, x, ctx, t, cache, moved)
    stats = cache.stats
    assert (stats["tried"], stats["answered_requests"], stats["split_requests"]) == (3, 1, 1)
    assert (stats["cached_samples"], stats["full_samples"]) == (B + B - 1, B + 1)
    other = apply_hash_cache(tiny_unet(), cfg("noise"))
    other.load_state_dict(cache.state_dict())
    assert (other.stats["answered_requests"], other.stats["split_requests"]) == (1, 1)


@pytest.mark.parametrize("mode", ["features", "noise"])
def test_a_split_request_inserts_its_misses_in_one_call_of_the_request_size(mode, monkeypatch):
    """A split request stores its misses with one insert over all its keys, the hits masked out: one insert shape per
    request shape (one CUDA graph), however the request splits."""
    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    cache = apply_hash_cache(unet, cfg(mode))
    run(unet, x, ctx, t, cache, keys)
    entries = cache.stats["entries"]
    calls = []
    insert = cache.table.insert

    def spy(k, latents, values, mask=None):
        calls.append((k.clone(), None if mask is None else mask.clone(), values.shape))
        return insert(k, latents, values, mask=mask)

    monkeypatch.setattr(cache.table, "insert", spy)
    moved = keys.clone()
    moved[1, 1] += 90.0
    run(unet, x, ctx, t, cache, moved)
    assert cache.last_hits.tolist() == [True, False, True]
    assert len(calls) == 1
    k, mask, shape = calls[0]
    assert torch.equal(k, moved.float()) and mask.tolist() == [False, True, False] and shape[:2] == (B, 2)
    assert cache.stats["entries"] == entries + 1
