"""The cache's policies: fixed η, and the cost-aware one that tries only while trying pays."""

from __future__ import annotations

import pytest
import torch

from hash3d.cache.config import AutoPolicyConfig, CacheConfig, CachePolicyConfig
from hash3d.cache.policy import AutoPolicy, FixedPolicy, build_policy
from hash3d.diffusion.deferred_count import DeferredCounts

SHAPE = (4, 4, 8, 8)


def auto(**kw) -> AutoPolicy:
    return AutoPolicy(CachePolicyConfig(strategy="auto", auto=AutoPolicyConfig(**kw)))


def drive(policy: AutoPolicy, steps: int, cost, shape=SHAPE, hits=lambda step: 1) -> list[bool]:
    """Run `steps` requests, feeding back cost(step, tried) at once, and for a tried request the samples it found in
    the table, hits(step) (by default one: the table has something to reuse); returns the decisions."""
    decisions = []
    for step in range(steps):
        tried = policy.decide(shape)
        if tried:
            policy.observe_hits(shape, hits(step))
        policy.observe(shape, tried, cost(step, tried))
        decisions.append(tried)
    return decisions


def test_build_policy_picks_the_strategy():
    assert isinstance(build_policy(CachePolicyConfig()), FixedPolicy)
    assert isinstance(build_policy(CachePolicyConfig(strategy="auto")), AutoPolicy)


def test_auto_keeps_trying_while_trying_is_cheaper():
    p = auto(warmup=4, explore_every=5, discard=1, min_samples=2)
    decisions = drive(p, 60, lambda step, tried: 5.0 if tried else 20.0)
    assert all(decisions[:4])  # warm-up
    # afterwards: every 5th request skips (to keep the skip cost known), the others try
    assert [not d for d in decisions[4:]] == [(i + 1) % 5 == 0 for i in range(4, 60)]  # request i + 1
    assert p.arm(SHAPE) == "try" and p.stats()["policy_trying"] == 1.0
    assert p.cost(SHAPE, "try") == 5.0 and p.cost(SHAPE, "skip") == 20.0


def test_auto_stops_trying_where_it_costs_more_and_probes_again():
    p = auto(warmup=4, explore_every=3, probe_every=20, probe_len=4, discard=0, min_samples=2, margin=0.05)
    decisions = drive(p, 100, lambda step, tried: 30.0 if tried else 20.0)
    switch = next(i for i in range(4, 100) if p.arm(SHAPE) == "skip" and not decisions[i])
    assert p.arm(SHAPE) == "skip"
    tail = decisions[switch + 1:]
    # while skipping: bursts of probe_len tries every probe_every requests, nothing else tried
    assert sum(tail) == pytest.approx(len(tail) * 4 / 20, abs=4)
    bursts = [i for i in range(1, len(tail)) if tail[i] and not tail[i - 1]]
    assert len(bursts) >= 3 and all(b2 - b1 == 20 for b1, b2 in zip(bursts, bursts[1:]))
    assert p.stats()["policy_trying"] == 0.0 and p.stats()["policy_switches"] == 1


def test_auto_wins_the_cache_back_when_the_run_changes():
    """A run whose hits become cheap (the table has filled, the timesteps annealed) switches back to trying."""
    p = auto(warmup=2, explore_every=4, probe_every=10, probe_len=5, discard=0, min_samples=3, window=4)
    drive(p, 40, lambda step, tried: 30.0 if tried else 20.0)
    assert p.arm(SHAPE) == "skip"
    drive(p, 40, lambda step, tried: 8.0 if tried else 20.0)
    assert p.arm(SHAPE) == "try" and p.stats()["policy_switches"] == 2


def test_auto_tries_only_where_trying_beats_skipping_by_the_margin_and_drops_the_first_measurements():
    """Trying has to pay by more than the margin: within it, the plain call wins (a cached run must not be slower than
    cache off)."""
    for try_ms, arm in ((10.5, "skip"), (9.5, "skip"), (8.5, "try")):  # skip at 10 ms: try dearer, 5 % / 15 % cheaper
        p = auto(warmup=2, explore_every=2, discard=2, min_samples=2, margin=0.1)
        drive(p, 40, lambda step, tried: try_ms if tried else 10.0)  # noqa: B023 (drive calls it at once)
        assert p.arm(SHAPE) == arm, try_ms
    q = auto(warmup=2, explore_every=2, discard=2, min_samples=2)
    # the first two of each arm are slow (eager call, capture): dropped, they do not decide
    slow_first = {"try": 0, "skip": 0}

    def cost(step, tried):
        arm = "try" if tried else "skip"
        slow_first[arm] += 1
        return 1000.0 if slow_first[arm] <= 2 else (5.0 if tried else 10.0)

    drive(q, 30, cost)
    assert q.arm(SHAPE) == "try" and q.cost(SHAPE, "try") == 5.0 and q.cost(SHAPE, "skip") == 10.0


def test_auto_counts_the_occasional_dear_try():
    """Tries that are cheap but now and then dear cost the run more than skipping: the policy follows the mean, which
    a median would hide. (One-off costs, graph captures, never reach it: the cache leaves those steps out.)"""
    p = auto(warmup=2, explore_every=3, discard=0, min_samples=2, window=8)
    tries = {"n": 0}

    def cost(step, tried):
        if not tried:
            return 20.0
        tries["n"] += 1
        return 60.0 if tries["n"] % 3 == 0 else 10.0  # mean 26.7, median 10

    drive(p, 40, cost)
    assert p.arm(SHAPE) == "skip" and p.cost(SHAPE, "skip") == 20.0


def test_auto_decides_per_request_shape():
    p = auto(warmup=2, explore_every=2, probe_every=50, probe_len=2, discard=0, min_samples=2)
    small, large = (2, 4, 8, 8), (2, 4, 16, 16)
    for _ in range(30):
        for shape, try_cost in ((small, 30.0), (large, 5.0)):
            tried = p.decide(shape)
            p.observe(shape, tried, try_cost if tried else 20.0)
    assert p.arm(small) == "skip" and p.arm(large) == "try"


def test_auto_state_round_trips():
    p = auto(warmup=2, explore_every=3, discard=0, min_samples=2)
    drive(p, 25, lambda step, tried: 30.0 if tried else 20.0)
    q = auto(warmup=2, explore_every=3, discard=0, min_samples=2)
    q.load_state_dict(p.state_dict())
    assert q.state_dict() == p.state_dict()
    cost = lambda step, tried: 30.0 if tried else 20.0  # noqa: E731
    assert drive(q, 30, cost) == drive(p, 30, cost)


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(probe_len=60, probe_every=50), "probe_len \\(60\\) must be <= probe_every \\(50\\)"),
        (dict(window=2, min_samples=3), "min_samples \\(3\\) must be <= window \\(2\\)"),
        (dict(margin=1.0), "margin must be in \\[0, 1\\)"),
        (dict(warmup=-1), "warmup must be >= 0"),
    ],
)
def test_auto_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        AutoPolicyConfig(**bad)


def test_unknown_strategy_is_an_error():
    with pytest.raises(ValueError, match="strategy must be 'fixed' or 'auto'; got 'sometimes'"):
        CachePolicyConfig(strategy="sometimes")


def test_auto_on_the_cpu_tries_every_request_and_reports_it():
    """No CUDA timer on the CPU: the cost-aware policy tries every request (the fixed policy at η = 1 gives the same
    outputs, hits and counters)."""
    from test_unet_cache import inputs, run, tiny_unet

    from hash3d.diffusion import apply_hash_cache, remove_hash_cache

    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    results = []
    for policy in (CachePolicyConfig(strategy="auto"), CachePolicyConfig(probability=1.0)):
        cache = apply_hash_cache(unet, CacheConfig(enabled=True, mode="noise", policy=policy))
        outs = [run(unet, x, ctx, t, cache, keys).sample for _ in range(3)]
        results.append((outs, cache.stats))
        remove_hash_cache(unet)
    (auto_outs, auto_stats), (fixed_outs, fixed_stats) = results
    for a, b in zip(auto_outs, fixed_outs):
        assert torch.equal(a, b)
    for name in ("calls", "tried", "hits", "cached_samples", "full_samples"):
        assert auto_stats[name] == fixed_stats[name], name
    assert auto_stats["tried"] == 3 and auto_stats["skipped"] == 0
    assert auto_stats["policy_trying"] == 1.0


def test_skip_arm_runs_the_plain_unet_and_stores_nothing():
    """A request the cost-aware policy skips costs what the cache-off call costs: the plain output, no query, no
    insert (the fixed policy's untried requests still insert)."""
    from test_unet_cache import inputs, run, tiny_unet

    from hash3d.diffusion import apply_hash_cache

    unet = tiny_unet()
    x, ctx, t, keys = inputs()
    ref = run(unet, x, ctx, t).sample
    for mode in ("features", "noise"):
        cache = apply_hash_cache(unet, CacheConfig(enabled=True, mode=mode, policy=CachePolicyConfig(strategy="auto")))
        with torch.no_grad(), cache.request(keys, x[:, :4], tried=False):
            out = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
        torch.testing.assert_close(out, ref)
        stats = cache.stats
        assert stats["queries"] == 0 and stats["inserts"] == 0 and stats["skipped"] == 1 and stats["full_samples"] == B
        cache.remove()
        fixed = apply_hash_cache(unet, CacheConfig(enabled=True, mode=mode, policy=CachePolicyConfig(probability=0.0)))
        run(unet, x, ctx, t, fixed, keys)
        assert fixed.stats["inserts"] == B and fixed.stats["skipped"] == 0
        fixed.remove()


B = 3


def test_auto_policy_state_travels_in_the_cache_state_dict():
    from test_unet_cache import tiny_unet

    from hash3d.diffusion import apply_hash_cache

    unet = tiny_unet()
    config = CacheConfig(enabled=True, mode="noise", policy=CachePolicyConfig(strategy="auto"))
    cache = apply_hash_cache(unet, config)
    policy = cache._state.policy
    drive(policy, 60, lambda step, tried: 30.0 if tried else 20.0)
    assert policy.arm(SHAPE) == "skip"
    state = cache.state_dict()
    cache.remove()
    fresh = apply_hash_cache(unet, config)
    fresh.load_state_dict(state)
    assert fresh._state.policy.state_dict() == policy.state_dict()
    assert fresh._state.policy.arm(SHAPE) == "skip"
    fresh.remove()


def test_progress_bar_shows_the_policy_choice():
    from hash3d.training.progress import format_postfix

    stats = {"queries": 10, "hit_rate": 0.5, "unet_calls_saved": 5, "policy_trying": 0.0}
    assert format_postfix(1.0, stats) == {"loss": "1", "hit": "50.0%", "saved": "5", "cache": "skip"}
    assert format_postfix(None, {**stats, "policy_trying": 1.0})["cache"] == "try"
    assert "cache" not in format_postfix(None, {"queries": 1, "hit_rate": 0.0})


class _FakeEvent:
    """A stand-in for a CUDA event on a fake GPU clock: recorded at the clock's time, done once the GPU passed it."""

    def __init__(self, clock):
        self.clock, self.at = clock, None

    def record(self):
        self.at = self.clock["now"]

    def query(self):
        return self.clock["gpu"] >= self.at

    def elapsed_time(self, end):
        return end.at - self.at


def timed_cache(knobs: AutoPolicyConfig, mode: str = "noise"):
    """A tiny UNet with a noise-mode cache under the auto policy, timed on a fake GPU clock: (unet, cache, clock,
    (x, ctx, t, keys)). Advance clock["now"] by what each step "takes"."""
    from test_unet_cache import inputs, tiny_unet

    from hash3d.diffusion import apply_hash_cache
    from hash3d.diffusion.request_timer import RequestTimer

    unet = tiny_unet()
    cache = apply_hash_cache(unet, CacheConfig(enabled=True, mode=mode,
                                               policy=CachePolicyConfig(strategy="auto", auto=knobs)))
    clock = {"now": 0.0, "gpu": 1e9}
    cache._state.timer = RequestTimer(event=lambda: _FakeEvent(clock))
    cache._state.probe_hits = DeferredCounts(event=lambda: _FakeEvent(clock))
    return unet, cache, clock, inputs()


def test_request_timer_times_each_request_until_the_next_and_reads_only_finished_ones():
    from hash3d.diffusion.request_timer import RequestTimer

    clock = {"now": 0.0, "gpu": -1.0}
    timer = RequestTimer(event=lambda: _FakeEvent(clock))
    for i, ms in enumerate((3.0, 5.0, 7.0)):
        timer.mark((i,), i % 2 == 0)
        clock["now"] += ms
    assert list(timer.ready()) == []  # the GPU has not got there yet: nothing read, nothing waited for
    clock["gpu"] = 8.0  # past the first two periods only
    assert list(timer.ready()) == [((0,), True, 3.0), ((1,), False, 5.0)]
    clock["gpu"] = 100.0
    assert list(timer.ready()) == []  # the third request's period ends only when a fourth starts
    timer.mark((3,), True)
    assert list(timer.ready()) == [((2,), True, 7.0)] and not timer.pending
    timer.clear()
    clock["now"] += 50.0
    timer.mark((4,), True)  # after a clear (a new run) nothing spans the gap
    assert list(timer.ready()) == []
    clock["now"] += 9.0
    timer.mark((5,), True, previous_one_off=True)  # request 4 captured a graph: its period is not measured
    clock["now"] += 2.0
    timer.mark((6,), False)
    assert list(timer.ready()) == [((5,), True, 2.0)]


def test_cache_feeds_measured_request_times_to_the_auto_policy():
    """With a GPU timer (a fake clock here), every request is timed from the policy's decision to the next one (its
    step), and the times reach the policy: when trying is dearer, the cache stops trying and its requests run the
    plain UNet."""
    from test_unet_cache import run

    knobs = AutoPolicyConfig(warmup=2, explore_every=2, discard=0, min_samples=2, probe_every=50, probe_len=2,
                             quiet_probes=False)
    unet, cache, clock, (x, ctx, t, keys) = timed_cache(knobs)
    state = cache._state
    for _ in range(12):  # each step "takes" 30 ms when its request tried the cache, 20 ms when it skipped
        tried = state.tried
        run(unet, x, ctx, t, cache, keys)
        clock["now"] += 30.0 if state.tried > tried else 20.0
    stats = cache.stats
    assert stats["policy_trying"] == 0.0 and stats["policy_try_ms"] == 30.0 and stats["policy_skip_ms"] == 20.0
    assert stats["skipped"] >= 4 and stats["tried"] + stats["skipped"] == 12
    inserts = stats["inserts"]
    run(unet, x, ctx, t, cache, keys)  # skipped: nothing stored
    assert cache.stats["inserts"] == inserts and cache.stats["skipped"] == stats["skipped"] + 1


def test_every_shipped_hash3d_config_uses_the_cost_aware_policy():
    """A shipped `_hash3d` config must never run slower than its twin: each of its cache blocks is on with
    `policy.strategy: auto` (the fixed η stays an override away)."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    files = sorted(f for d in ("threestudio-hash3d", "dreamgaussian-hash3d", "gaussian-dreamer-hash3d")
                   for f in (root / d / "configs").glob("*_hash3d.yaml"))
    assert len(files) >= 10

    def cache_blocks(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "cache" and isinstance(value, dict):
                    yield value
                else:
                    yield from cache_blocks(value)

    for f in files:
        blocks = list(cache_blocks(yaml.safe_load(f.read_text())))
        assert blocks, f"{f.name}: no cache block"
        for block in blocks:
            assert block.get("enabled") is True and block.get("policy", {}).get("strategy") == "auto", f.name


def test_auto_stops_trying_when_its_tries_find_nothing():
    """Tries that find no sample in the table cannot pay: after `window` of them in a row the shape skips, however
    close the measured costs are; one sample found in the window keeps it trying."""
    p, q = auto(warmup=2, window=4, min_samples=2), auto(warmup=2, window=4, min_samples=2)
    for policy, found in ((p, [0, 0, 0, 0]), (q, [0, 0, 1, 0])):
        for n in found:
            assert policy.decide(SHAPE)
            policy.observe_hits(SHAPE, n)
    assert p.arm(SHAPE) == "skip" and p.stats()["policy_switches"] == 1
    assert q.arm(SHAPE) == "try" and q.stats()["policy_switches"] == 0
    # skipping from here: the next request skips, and the counts start afresh (the probes refill them)
    assert not p.decide(SHAPE) and p.state_dict()["shapes"][0]["hits"] == []
    r = auto(warmup=2, window=4, min_samples=2)
    r.load_state_dict(q.state_dict())
    assert r.state_dict() == q.state_dict()
    r.observe_hits(SHAPE, 0)  # the window is [0, 1, 0, 0]: still one found
    assert r.arm(SHAPE) == "try"
    for _ in range(3):
        r.observe_hits(SHAPE, 0)
    assert r.arm(SHAPE) == "skip"


def test_fixed_policy_ignores_hit_counts():
    p = FixedPolicy(CachePolicyConfig(probability=1.0))
    for _ in range(20):
        p.observe_hits(SHAPE, 0)
    assert p.decide(SHAPE)


def test_a_cache_whose_tries_find_nothing_stops_trying():
    """End to end through a UNet cache with a GPU timer (a fake clock that times both arms alike): requests whose keys
    never come back find nothing, so after the warm-up and a window of such tries the cache skips."""
    from test_unet_cache import run

    knobs = AutoPolicyConfig(warmup=2, window=3, min_samples=2, explore_every=0, probe_every=50, probe_len=2,
                             quiet_probes=False)
    unet, cache, clock, (x, ctx, t, keys) = timed_cache(knobs)
    for step in range(8):
        moved = keys.clone()
        moved[:, 1] += 45.0 * step  # new cells every step: nothing to find
        run(unet, x, ctx, t, cache, moved)
        clock["now"] += 20.0
    stats = cache.stats
    assert stats["tried"] == 3 and stats["skipped"] == 5 and stats["hits"] == 0
    assert stats["policy_trying"] == 0.0 and stats["policy_switches"] == 1


def test_one_off_captures_do_not_count_against_trying():
    """Steps in which the cache captured a CUDA graph (a one-off cost, here 200 ms instead of 20) are not measured:
    trying stays the arm while its steady cost (20 ms) is below skipping's (30 ms); counted, the captures would have
    made it stop."""
    from test_unet_cache import run

    def drive(drop_one_offs: bool) -> dict:
        unet, cache, clock, (x, ctx, t, keys) = timed_cache(
            AutoPolicyConfig(warmup=2, explore_every=3, discard=0, min_samples=2, window=4, quiet_probes=False))
        captures = {"n": 0}
        if drop_one_offs:
            cache.add_graph_count(lambda: captures["n"])
        for step in range(24):
            tried = cache.stats["tried"]
            run(unet, x, ctx, t, cache, keys)
            if cache.stats["tried"] > tried:
                capture = step % 4 == 0  # a try that captured a graph
                captures["n"] += capture
                clock["now"] += 200.0 if capture else 20.0
            else:
                clock["now"] += 30.0
        return cache.stats

    kept, fled = drive(True), drive(False)
    assert kept["policy_trying"] == 1.0 and kept["policy_try_ms"] == 20.0 and kept["policy_switches"] == 0
    assert fled["policy_trying"] == 0.0 and fled["policy_switches"] >= 1


def test_one_off_count_grows_with_each_new_signature():
    """A new input signature's first (eager) call is a one-off cost the cache policy must not measure; calls of a
    signature already seen are not (no capture here: it comes only at the tenth call)."""
    from hash3d.cuda_graphs import GraphedFunction, count_one_offs

    fn = GraphedFunction(lambda x: x * 2, warmup=0, capture_after=10)
    counts = []
    for shape in ((2,), (2,), (3,), (2,), (3,), (4,)):
        torch.testing.assert_close(fn(torch.ones(shape)), torch.full(shape, 2.0))
        counts.append(count_one_offs([fn]))
    assert counts == [1, 1, 2, 2, 2, 3] and fn.signatures_seen == 3 and not fn.graphs


def test_probe_bursts_that_find_nothing_back_off():
    """While skipping, a probe burst that finds no sample doubles the probe period, up to probe_backoff times
    probe_every; a burst that finds one restores it. The futile tries of a run where nothing comes back shrink."""
    knobs = dict(warmup=2, explore_every=0, probe_every=10, probe_len=2, probe_backoff=4, discard=0, min_samples=2,
                 window=4)  # fmt: skip
    p = auto(**knobs)
    found = {"n": 0}
    decisions = drive(p, 200, lambda step, tried: 30.0 if tried else 20.0, hits=lambda step: found["n"])
    assert p.arm(SHAPE) == "skip" and p.stats()["policy_switches"] == 1
    starts = [i for i in range(1, len(decisions)) if decisions[i] and not decisions[i - 1]]
    # periods 10, 20, 40, then capped at 40 (4 x 10); each burst probe_len long
    assert [b - a for a, b in zip(starts, starts[1:])] == [20, 40, 40, 40, 40]
    assert all(decisions[s:s + 2] == [True, True] and not decisions[s + 2] for s in starts)
    # a burst that finds a sample brings the period back to probe_every
    found["n"] = 1
    more = drive(p, 120, lambda step, tried: 30.0 if tried else 20.0, hits=lambda step: found["n"])
    starts = [i for i in range(1, len(more)) if more[i] and not more[i - 1]]
    assert [b - a for a, b in zip(starts, starts[1:])][-2:] == [10, 10]
    # probe_backoff 1: a fixed period
    q = auto(**dict(knobs, probe_backoff=1))
    fixed = drive(q, 200, lambda step, tried: 30.0 if tried else 20.0, hits=lambda step: 0)
    starts = [i for i in range(1, len(fixed)) if fixed[i] and not fixed[i - 1]]
    assert {b - a for a, b in zip(starts, starts[1:])} == {10}
    r = auto(**knobs)
    r.load_state_dict(p.state_dict())
    assert r.state_dict() == p.state_dict()


def test_no_switch_to_trying_on_the_times_alone_when_the_tries_find_nothing():
    """Probe tries that measure cheaper but found no sample in the table are the times' noise: the shape keeps
    skipping; the same times with a sample found switch it to trying."""
    knobs = dict(warmup=2, explore_every=3, probe_every=10, probe_len=5, discard=0, min_samples=2, window=4)
    for found, arm in ((0, "skip"), (1, "try")):
        p = auto(**knobs)
        drive(p, 30, lambda step, tried: 30.0 if tried else 20.0)  # trying dearer: skips
        assert p.arm(SHAPE) == "skip"
        drive(p, 40, lambda step, tried: 10.0 if tried else 20.0, hits=lambda step: found)  # noqa: B023
        assert p.arm(SHAPE) == arm, found


def test_probe_backoff_must_be_positive():
    with pytest.raises(ValueError, match="probe_backoff must be >= 1"):
        AutoPolicyConfig(probe_backoff=0)


def test_quiet_until_a_try_of_the_shape_found_a_sample():
    p = auto(warmup=4, window=4)
    assert p.quiet(SHAPE)  # nothing found yet
    p.observe_hits(SHAPE, 0)
    assert p.quiet(SHAPE)
    p.observe_hits(SHAPE, 2)
    assert not p.quiet(SHAPE) and p.quiet((1, 4, 8, 8))  # per shape
    for _ in range(4):  # a window of tries that found nothing: quiet again (and the shape skips)
        p.observe_hits(SHAPE, 0)
    assert p.quiet(SHAPE) and p.arm(SHAPE) == "skip"
    assert not auto(quiet_probes=False).quiet(SHAPE)
    assert not FixedPolicy(CachePolicyConfig()).quiet(SHAPE)


def test_deferred_counts_are_read_only_once_the_gpu_has_passed_them():
    clock = {"now": 0.0, "gpu": -1.0}
    counts = DeferredCounts(max_pending=3, event=lambda: _FakeEvent(clock))
    source = torch.tensor(2)
    for tag in "abcd":
        counts.push(tag, source)
        source += 1  # the value pushed is kept, not the tensor's later contents
        clock["now"] += 1.0
    assert list(counts.ready()) == []  # the GPU is behind: nothing read, nothing waited for
    clock["gpu"] = 2.0
    assert list(counts.ready()) == [("b", 3), ("c", 4)]  # "a" dropped: at most 3 pending
    clock["gpu"] = 9.0
    assert list(counts.ready()) == [("d", 5)] and not counts.pending
    counts.push("e", source)
    counts.clear()
    assert list(counts.ready()) == []


def test_request_timer_drops_the_periods_of_unmeasured_requests():
    from hash3d.diffusion.request_timer import RequestTimer

    clock = {"now": 0.0, "gpu": 1e9}
    timer = RequestTimer(event=lambda: _FakeEvent(clock))
    for i, (ms, measured) in enumerate(((3.0, True), (5.0, False), (7.0, True))):
        timer.mark((i,), True, measured=measured)
        clock["now"] += ms
    timer.mark((3,), False)
    assert list(timer.ready()) == [((0,), True, 3.0), ((2,), True, 7.0)]


def test_quiet_probes_answer_with_the_plain_unet_fill_the_table_and_are_not_timed():
    """Where nothing comes back, every try is a quiet probe: the plain UNet's output, the table filled, no cost
    measured for either arm's try, and the shape ends up skipping without one real try."""
    from test_unet_cache import run

    knobs = AutoPolicyConfig(warmup=3, window=3, min_samples=2, explore_every=0, probe_every=6, probe_len=2, discard=0)
    unet, cache, clock, (x, ctx, t, keys) = timed_cache(knobs)
    for step in range(14):
        moved = keys.clone()
        moved[:, 1] += 45.0 * step  # new cells every step: nothing to find
        out = run(unet, x, ctx, t, cache, moved).sample
        torch.testing.assert_close(out, run(unet, x, ctx, t).sample, rtol=0, atol=0)
        clock["now"] += 20.0
    stats = cache.stats
    policy = cache._state.policy
    assert stats["tried"] == 0 and stats["answered_requests"] == 0 and stats["split_requests"] == 0
    # the warm-up's 3 probes, then a burst of 2 tries at the end of each 6-request period while skipping
    assert stats["probed"] == 3 + 2 and stats["skipped"] == 14 - stats["probed"]
    assert stats["inserts"] == stats["probed"] * B and stats["queries"] == stats["probed"] * B
    shape = tuple(x[:, :4].shape)
    assert policy.arm(shape) == "skip" and policy.cost(shape, "try") is None and policy.cost(shape, "skip") == 20.0


@pytest.mark.parametrize("mode", ["noise", "features"])
def test_real_tries_start_once_a_quiet_probe_found_a_sample_on_the_gpu_clock(mode):
    """The same keys every step: the first probe fills the table, the second finds every sample; its count reaches
    the policy only when the (fake) GPU has passed it, and from the next request on the cache answers for real."""
    from test_unet_cache import run

    unet, cache, clock, (x, ctx, t, keys) = timed_cache(AutoPolicyConfig(warmup=20, explore_every=0), mode)
    clock["gpu"] = -1.0  # the GPU lags: counts pushed so far are not readable
    plain = run(unet, x, ctx, t).sample
    for _ in range(3):
        torch.testing.assert_close(run(unet, x, ctx, t, cache, keys).sample, plain, rtol=0, atol=0)
        clock["now"] += 20.0
    assert cache.stats["probed"] == 3 and cache.stats["tried"] == 0 and cache.last_hits is None
    clock["gpu"] = clock["now"]  # the GPU catches up: the probes' counts (0, 3, 3) are read at the next decision
    run(unet, x, ctx, t, cache, keys)
    stats = cache.stats
    assert stats["probed"] == 3 and stats["tried"] == 1 and stats["answered_requests"] == 1
    assert stats["cached_samples"] == B and bool(cache.last_hits.all())
