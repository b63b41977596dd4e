"""The fused Triton table (table_triton.py) against the torch table, op by op on twin tables.

test_hash_table.py runs its whole suite (against the slow reference) on both backends; here the two backends are
compared with each other directly, state included, on CUDA tables where a GPU is present (the real kernels),
otherwise on CPU tables in Triton's interpreter.
"""

from __future__ import annotations

import io
import random
from dataclasses import replace

import pytest
import torch

from hash3d.cache import DEFAULT_ADAPTIVE_CELLS, HashTable
from hash3d.triton_support import triton_available, triton_interpreter_enabled

DEVICE = "cuda" if torch.cuda.is_available() and not triton_interpreter_enabled() else "cpu"
pytestmark = [
    pytest.mark.gpu,  # in Triton's interpreter on CPU machines, on the GPU in the GPU tier
    pytest.mark.skipif(not triton_available(DEVICE), reason="needs triton and a CUDA GPU, or TRITON_INTERPRET=1"),
]
ON_GPU = pytest.mark.skipif(DEVICE != "cuda", reason="on a GPU only (too slow for the interpreter)")
STEPS = 300 if DEVICE == "cuda" else 30  # the interpreter is slow (the test checks that the steps hit and evict)
SCRATCH_FREE = ("cells", "ref_slot", "ref_id", "head")  # compared without the scratch bucket row n
EXACT = ("pool_ids", "next_id", "live", "counters", "pool_latents", "pool_values")


def _keys(rng: random.Random, B: int) -> torch.Tensor:
    """Keys crowded into few cells (hits, full buckets, evictions), with azimuths around the wrap."""
    return torch.tensor(
        [[rng.choice([5.0, 15.0, 25.0]) + rng.uniform(-4, 4), rng.choice([-5.0, 355.0, 5.0, 725.0]),
          rng.choice([1.5, 1.55]), rng.choice([100.0, 110.0, 500.0])] for _ in range(B)],
        dtype=torch.float64 if rng.random() < 0.3 else torch.float32,
    )


# The torch table multiplies stored and new values in their own dtype when it scores them (the fused one in float32):
# its scores carry that dtype's rounding.
SCORE_ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _assert_twins(fused: HashTable, ref: HashTable, dtype: torch.dtype) -> None:
    assert fused.stats == ref.stats
    a, b = fused.state_dict(), ref.state_dict()
    for name in SCRATCH_FREE:
        assert torch.equal(a[name][:, :-1], b[name][:, :-1]), name
    for name in EXACT:
        assert (a[name] is None and b[name] is None) or torch.equal(a[name], b[name]), name
    torch.testing.assert_close(a["score"][:, :-1], b["score"][:, :-1], rtol=1e-4, atol=SCORE_ATOL[dtype])
    if b["pool_norms"] is not None:
        torch.testing.assert_close(a["pool_norms"], b["pool_norms"], rtol=1e-5, atol=1e-6)


def _resumed(table: HashTable, cells, common: dict, backend: str) -> HashTable:
    buffer = io.BytesIO()
    torch.save(table.state_dict(), buffer)
    buffer.seek(0)
    restored = HashTable(cells, backend=backend, **common)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    # a restored pool holds the live rows (it may be smaller than the one that grew while entries were evicted)
    assert replace(restored.stats, bytes=0) == replace(table.stats, bytes=0)
    assert restored.stats.bytes <= table.stats.bytes
    return restored


@pytest.mark.parametrize(
    "cells,n_buckets,bucket_size,capacity,dtype",
    [
        ([(10.0, 10.0, 0.1, 10.0)], 8, 3, 20, torch.float32),
        ([(10.0, 10.0, 0.1, 10.0)], 2, 5, 8, torch.float16),  # two buckets: collisions; a pool smaller than them
        (DEFAULT_ADAPTIVE_CELLS, 16, 3, 40, torch.float32),
        (DEFAULT_ADAPTIVE_CELLS, 4, 2, 9, torch.float16),
        pytest.param(DEFAULT_ADAPTIVE_CELLS, 1024, 3, None, torch.float32, marks=ON_GPU),  # the default table
        # bf16 with one grid only: with several, the best-scoring grid of two near-equal scores depends on rounding,
        # and the torch table scores bf16 values with bf16 products (about 1e-3 off in the scores)
        pytest.param([(10.0, 10.0, 0.1, 10.0)], 8, 3, 20, torch.bfloat16, marks=ON_GPU),
    ],
    ids=["grid", "grid-2-buckets-fp16", "adaptive", "adaptive-fp16", "adaptive-defaults", "grid-bf16"],
)
@pytest.mark.slow
def test_fused_table_matches_torch_table(cells, n_buckets, bucket_size, capacity, dtype):
    common = dict(n_buckets=n_buckets, bucket_size=bucket_size, capacity=capacity, temperature=3.0, gamma=0.7,
                  device=DEVICE)
    fused, ref = HashTable(cells, backend="triton", **common), HashTable(cells, backend="torch", **common)
    assert fused.fused and not ref.fused
    rng = random.Random(n_buckets * 100 + bucket_size)
    g = torch.Generator().manual_seed(rng.randrange(1000))
    hits = 0
    for step in range(STEPS):
        B = rng.choice([1, 2, 3, 5, 8])
        keys = _keys(rng, B).to(DEVICE)
        latents = torch.randn(B, 2, 3, 5, generator=g).to(DEVICE, dtype)
        (got, hit), (want, want_hit) = fused.query(keys, latents), ref.query(keys, latents)
        assert torch.equal(hit, want_hit)
        hits += int(hit.sum())
        if want is not None:
            assert got.shape == want.shape and got.dtype == want.dtype
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
            torch.testing.assert_close(got, want, **tol)
        values = torch.randn(B, 2, 33, 40, generator=g).to(DEVICE, dtype)  # more than one block of 1024
        mask = torch.tensor([rng.random() < 0.7 for _ in range(B)], device=DEVICE)
        if not mask.all():  # rows not kept may hold anything
            keys[~mask] = float("nan")
            values[~mask] = float("inf")
        fused.insert(keys, latents, values, mask=mask)
        ref.insert(keys, latents, values, mask=mask)
        _assert_twins(fused, ref, dtype)
        if step == STEPS // 3:  # both resume from their saved states (live entries only) into fresh tables
            assert hits > 0 and ref.stats.evictions > 0  # saved by a table that hit and evicted
            hits_saved = hits
            fused, ref = _resumed(fused, cells, common, "triton"), _resumed(ref, cells, common, "torch")
            _assert_twins(fused, ref, dtype)
        if step == STEPS * 2 // 3:
            fused.reset()
            ref.reset()
    s = ref.stats
    # the sequence hit before and after the resume, and evicted before it and after the reset
    assert hits > 10 and hits > hits_saved and s.evictions > 0 and s.entries > 0


def test_fused_backend_refused_where_it_cannot_run(monkeypatch):
    import hash3d.cache.table as table_module

    monkeypatch.setattr(table_module, "triton_available", lambda device: False)
    with pytest.raises(ValueError, match="backend is 'triton'.*set the backend to 'auto' or 'torch'"):
        HashTable([(10.0, 10.0, 0.1, 10.0)], backend="triton")
    assert not HashTable([(10.0, 10.0, 0.1, 10.0)], backend="auto").fused


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of auto, torch, triton; got 'cuda'"):
        HashTable([(10.0, 10.0, 0.1, 10.0)], backend="cuda")
