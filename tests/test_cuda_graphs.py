"""CUDA-graph replay of UNet passes gives the eager results (runs on a GPU machine; skipped on CPU)."""

from __future__ import annotations

import pytest
import torch

from hash3d.cache.config import CacheConfig, CachePolicyConfig
from hash3d.diffusion.guidance import Zero123Guidance, Zero123GuidanceConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def exact_fp32():
    """Graphed split batches are padded to a power of two; with TF32 convolutions the result would then depend on the
    batch size at the 1e-3 level. Plain fp32 makes graph and eager agree to rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def make(path, mode, graphs, hit_graphs=True, vae_encoder="eager", split_min_latent_pixels=8192):
    cache = CacheConfig(enabled=mode is not None, mode=mode or "features", cell_size=(10, 10, 0.1, 1000),
                        policy=CachePolicyConfig(1.0), split_min_latent_pixels=split_min_latent_pixels)
    g = Zero123Guidance(
        Zero123GuidanceConfig(pretrained_model_name_or_path=path, dtype="fp32", cuda_graphs=graphs, cache=cache,
                              timestep_sampling="random_shared", hit_graphs=hit_graphs,
                              vae_encoder=vae_encoder),
        "cuda",
    )
    g.set_image(torch.rand(4, 64, 64, generator=torch.Generator().manual_seed(0)))
    return g


@pytest.mark.parametrize("floor", [1, 8192])
@pytest.mark.parametrize("mode", [None, "features", "noise"])
def test_graphs_match_eager(written_models, mode, floor):
    """Graphed passes give the eager results. A split request's pass is padded to a power of two of rows (floor 1:
    the one miss's 2 CFG rows run as 2), or with the default floor of latent pixels to the whole request (6 rows of
    8x8 latents hold fewer than 8192): then the UNet never meets another batch size."""
    latents = torch.randn(3, 4, 8, 8, device="cuda")
    elev = torch.tensor([10.0, 20.0, 30.0], device="cuda")
    dist = torch.full((3,), 1.2, device="cuda")
    outs = {}
    for graphs in (False, True):
        g = make(written_models["zero123"], mode, graphs, split_min_latent_pixels=floor)
        sizes = set()  # batch sizes the UNet met in eager calls and captures (a replay runs no hook)
        g.unet.conv_in.register_forward_pre_hook(lambda _, args: sizes.add(args[0].shape[0]))
        seq = []
        # miss, hit, then a split batch (one camera moves to a new cell)
        for azim in ([0.0, 90.0, 180.0], [0.0, 90.0, 180.0], [0.0, 135.0, 180.0], [0.0, 135.0, 180.0]):
            out = g(latents, elev, torch.tensor(azim, device="cuda"), dist, rgb_as_latents=True)
            seq.append((out.noise_pred, None if out.cache_hits is None else out.cache_hits.tolist()))
        outs[graphs] = seq
    if mode is None or floor > 1:
        assert sizes == {6}
    else:
        assert 2 in sizes and sizes <= {2, 4, 6}
    for (eager, hits_e), (graphed, hits_g) in zip(outs[False], outs[True]):
        assert hits_e == hits_g
        torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-5)
    if mode is not None:
        assert [h for _, h in outs[True]] == [[False] * 3, [True] * 3, [True, False, True], [True] * 3]


def test_hits_after_reset_with_graphs(written_models):
    g = make(written_models["zero123"], "features", True)
    latents = torch.randn(2, 4, 8, 8, device="cuda")
    cams = (torch.tensor([10.0, 20.0], device="cuda"), torch.tensor([0.0, 90.0], device="cuda"), torch.full((2,), 1.2, device="cuda"))
    for _ in range(2):  # the second round replays the captured full pass, which records nothing on the Python side
        g.cache.reset()
        assert not g(latents, *cams, rgb_as_latents=True).cache_hits.any()
        assert g(latents, *cams, rgb_as_latents=True).cache_hits.all()


@pytest.mark.parametrize("adaptive", [False, True])
def test_graphed_table_matches_eager(adaptive):
    from hash3d.cache.config import CacheConfig as C

    cfg = C(adaptive=adaptive, n_buckets=16, bucket_size=2, capacity=24)
    eager, graphed = cfg.build_table("cuda"), cfg.build_table("cuda", cuda_graphs=True)
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        keys = torch.stack(
            [torch.randint(0, 3, (4,), generator=g) * 10.0, torch.randint(0, 4, (4,), generator=g) * 10.0,
             torch.full((4,), 1.5), torch.randint(0, 2, (4,), generator=g) * 10.0], -1
        ).cuda()
        x, v = torch.randn(4, 3, 2, 2, generator=g).cuda(), torch.randn(4, 5, generator=g).cuda()
        if step % 2:
            (ve, he), (vg, hg) = eager.query(keys, x), graphed.query(keys, x)
            assert torch.equal(he, hg)
            torch.testing.assert_close(vg, ve)
        else:
            eager.insert(keys, x, v)
            graphed.insert(keys, x, v)
    assert eager.stats == graphed.stats
    assert graphed._graphs  # the graphed table really replayed graphs


@pytest.mark.parametrize("vae_encoder", ["eager", "compiled"])
def test_graphed_vae_encoder_matches_eager(written_models, vae_encoder):
    """The VAE encoder's forward and backward replayed as graphs, in each `vae_encoder` mode, give the eager latents
    and image gradient."""
    rgb = torch.rand(2, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    weights = torch.randn(2, 4, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    results = {}
    for graphs in (False, True):
        g = make(written_models["zero123"], None, graphs, vae_encoder=vae_encoder if graphs else "eager")
        per_call = []
        for _ in range(3):  # capture, then replays with fresh posterior noise
            x = rgb.clone().requires_grad_(True)
            latents = g.encode_images(x)
            (latents * weights).sum().backward()
            per_call.append((latents.detach(), x.grad))
        results[graphs] = per_call
    assert results[True][0][0].shape == (2, 4, 8, 8)
    for (lat_e, grad_e), (lat_g, grad_g) in zip(results[False], results[True]):
        torch.testing.assert_close(lat_g, lat_e, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grad_g, grad_e, rtol=1e-4, atol=1e-5)
    assert not torch.equal(results[True][0][0], results[True][1][0])  # the posterior sample is drawn anew each call


@pytest.mark.parametrize("hit_graphs", [False, True])
def test_cache_reports_its_graph_captures(written_models, hit_graphs):
    """A miss (full pass recording the deep feature, eager; table insert, captured at once), then hits. Without the
    hit-step graphs: the query is captured at the first hit, the shallow pass ran eagerly then and is captured at its
    second call. With them (the default): the first hit captures the prepare / answer pair (query and shallow pass
    inside). Further hits add none."""
    g = make(written_models["zero123"], "features", True, hit_graphs)
    latents = torch.randn(2, 4, 8, 8, device="cuda")
    cams = (torch.tensor([10.0, 20.0], device="cuda"), torch.tensor([0.0, 90.0], device="cuda"), torch.full((2,), 1.2, device="cuda"))
    assert g.cache.stats["graphs_captured"] == 0
    g(latents, *cams, rgb_as_latents=True)
    assert g.cache.stats["graphs_captured"] == 1
    g(latents, *cams, rgb_as_latents=True)
    assert g.cache.stats["graphs_captured"] == (3 if hit_graphs else 2)
    g(latents, *cams, rgb_as_latents=True)
    captured = g.cache.stats["graphs_captured"]
    assert captured == 3
    for _ in range(2):
        g(latents, *cams, rgb_as_latents=True)
    assert g.cache.stats["graphs_captured"] == captured


def _cuda_requests(steps: int, n_keys: int, seed: int, spread: float = 10.0):
    from test_unet_cache import _request_sequence

    for request in _request_sequence(steps, n_keys, seed, spread):
        yield tuple(t.cuda() for t in request)


def test_nonfinite_keys_on_a_gpu_are_never_stored_and_reported():
    """On a GPU the keys are checked without a host read: a NaN key runs in full, is not stored, and stats raises."""
    from hash3d.diffusion import apply_hash_cache
    from test_unet_cache import tiny_unet

    unet = tiny_unet().cuda()
    config = CacheConfig(enabled=True, mode="noise", policy=CachePolicyConfig(probability=1.0))
    cache = apply_hash_cache(unet, config, cuda_graphs=True)
    (keys, x, ctx, t), = _cuda_requests(1, 3, seed=7)
    for _ in range(2):
        with torch.no_grad(), cache.request(keys, x[:, :4]):
            unet(torch.cat([x, x]), t, encoder_hidden_states=ctx)
    entries = cache.table.stats.entries
    bad = keys.clone()
    bad[1, 0] = float("nan")
    for _ in range(2):  # the second time, the NaN key would hit had the first stored it
        with torch.no_grad(), cache.request(bad, x[:, :4]):
            unet(torch.cat([x, x]), t, encoder_hidden_states=ctx)
        assert cache.last_hits.tolist() == [True, False, True]
    assert cache.table.stats.entries == entries
    with pytest.raises(ValueError, match="NaN or inf"):
        cache.stats


def test_whole_request_passes_are_not_padded(written_models):
    """Split batches are padded to a power of two, but never beyond the request's own UNet batch: a pass over a whole
    request runs at its own size (as with the cache off), not at the next power of two."""
    g = make(written_models["zero123"], "noise", True)
    latents = torch.randn(3, 4, 8, 8, device="cuda")
    azimuths, dist = torch.tensor([0.0, 90.0, 180.0], device="cuda"), torch.full((3,), 1.2, device="cuda")
    for i in range(3):  # three misses (a new elevation cell each time): the full pass is captured at its second call
        out = g(latents, torch.full((3,), 10.0 + 20.0 * i, device="cuda"), azimuths, dist, rgb_as_latents=True)
        assert not out.cache_hits.any()
    assert {signature[0][0][0] for signature in g.cache._state.graphs["full"].graphs} == {6}  # 3 keys x 2 CFG halves; formerly padded to 8


def test_auto_policy_measures_only_steps_without_one_off_work(written_models, monkeypatch):
    """On the GPU, with real CUDA events: the requests during which the cache captured a graph or ran a new shape's
    first eager call are marked one-off and never reach the policy; every other finished request does."""
    from hash3d.cache.config import AutoPolicyConfig
    from hash3d.diffusion.request_timer import RequestTimer

    flags: list[bool] = []
    mark = RequestTimer.mark

    def recording_mark(self, shape, tried, previous_one_off=False, measured=True):
        flags.append(previous_one_off)
        return mark(self, shape, tried, previous_one_off, measured)

    monkeypatch.setattr(RequestTimer, "mark", recording_mark)
    policy = CachePolicyConfig(strategy="auto", auto=AutoPolicyConfig(warmup=2, explore_every=3, discard=0, min_samples=1,
                                                                      quiet_probes=False))
    cache = CacheConfig(enabled=True, mode="noise", cell_size=(10, 10, 0.1, 1000), policy=policy)
    g = Zero123Guidance(Zero123GuidanceConfig(pretrained_model_name_or_path=written_models["zero123"], dtype="fp32",
                                              cuda_graphs=True, cache=cache, timestep_sampling="random_shared"), "cuda")
    g.set_image(torch.rand(4, 64, 64, generator=torch.Generator().manual_seed(0)))
    observed = []
    state = g.cache._state
    observe = state.policy.observe
    monkeypatch.setattr(state.policy, "observe", lambda shape, tried, ms: (observed.append(ms), observe(shape, tried, ms)))
    latents = torch.randn(3, 4, 8, 8, device="cuda")
    elev, dist = torch.tensor([10.0, 20.0, 30.0], device="cuda"), torch.full((3,), 1.2, device="cuda")
    for step in range(14):  # the same cameras, then one of them in a new cell: whole hits and splits
        azim = [0.0, 90.0, 180.0] if step % 2 == 0 else [0.0, 135.0, 180.0]
        g(latents, elev, torch.tensor(azim, device="cuda"), dist, rgb_as_latents=True)
    torch.cuda.synchronize()
    g(latents, elev, torch.tensor([0.0, 90.0, 180.0], device="cuda"), dist, rgb_as_latents=True)  # reads them all
    closed = flags[1:-1]  # the first mark closes nothing; the last period is still open
    assert g.cache_stats()["graphs_captured"] > 0 and any(closed) and not all(closed)
    assert len(observed) == closed.count(False) and all(ms > 0 for ms in observed)


def test_quiet_probes_on_the_gpu_answer_plainly_until_a_count_comes_back(written_models):
    """With real CUDA events and pinned host copies: the first tries are quiet (the plain UNet's output, the table
    filled), their hit counts are read once the GPU has passed them, and then the cache answers for real."""
    from hash3d.cache.config import AutoPolicyConfig

    policy = CachePolicyConfig(strategy="auto", auto=AutoPolicyConfig(warmup=20, explore_every=0))
    cache = CacheConfig(enabled=True, mode="noise", cell_size=(10, 10, 0.1, 1000), policy=policy)
    g = Zero123Guidance(Zero123GuidanceConfig(pretrained_model_name_or_path=written_models["zero123"], dtype="fp32",
                                              cuda_graphs=True, cache=cache, timestep_sampling="random_shared"), "cuda")
    plain = make(written_models["zero123"], None, True)
    g.set_image(torch.rand(4, 64, 64, generator=torch.Generator().manual_seed(0)))
    latents = torch.randn(3, 4, 8, 8, device="cuda")
    cams = (torch.tensor([10.0, 20.0, 30.0], device="cuda"), torch.tensor([0.0, 90.0, 180.0], device="cuda"),
            torch.full((3,), 1.2, device="cuda"))
    for seed in range(2):  # the same cameras and timestep: the second probe finds every sample, unread so far
        g.generator.manual_seed(seed), plain.generator.manual_seed(seed)
        out, ref = g(latents, *cams, rgb_as_latents=True), plain(latents, *cams, rgb_as_latents=True)
        torch.testing.assert_close(out.noise_pred, ref.noise_pred, rtol=1e-4, atol=1e-5)
        assert out.cache_hits is None
    torch.cuda.synchronize()
    out = g(latents, *cams, rgb_as_latents=True)  # reads both counts (0, then 3): a real try, answered whole
    stats = g.cache_stats()
    assert stats["probed"] == 2 and stats["tried"] == 1 and stats["answered_requests"] == 1
    assert out.cache_hits is not None and bool(out.cache_hits.all())


FIRST_PRODUCT_IN_A_CAPTURE = """
import torch
from hash3d.cuda_graphs import graph_capture

a = torch.randn(4, 3, 5, device="cuda")
b = torch.randn(4, 5, 2, device="cuda")
graph = torch.cuda.CUDAGraph()
with graph_capture(graph, torch.cuda.graph_pool_handle()):
    out = torch.bmm(a, b)  # the process's first matrix product: cuBLAS is not set up yet
a.mul_(2)
graph.replay()
torch.cuda.synchronize()
torch.testing.assert_close(out, torch.bmm(a, b))
print("replayed")
"""


def test_a_capture_may_hold_the_processs_first_matrix_product():
    """cuBLAS cannot be set up while capturing: `graph_capture` sets it up for the capture stream first, so a graph
    whose body is a fresh process's first matrix product captures and replays (a fresh process: pytest's earlier tests
    would have set cuBLAS up already)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FIRST_PRODUCT_IN_A_CAPTURE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "replayed"
