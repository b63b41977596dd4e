"""hash3d.cache hash tables against a slow reference written here from the specification (table.py's docstring).

Every test here runs on both implementations of the table: the torch code and the fused Triton kernels (the latter
where they can run: a CUDA GPU for the GPU tests, Triton's interpreter for the CPU ones, which conftest.py switches
on when triton is installed and no GPU is present).

The reference (`RefTable`) keeps plain Python state and handles one sample at a time: a dict of FIFO deques per
grid (bucket -> (cell, entry id)), a dict pool holding only the last `capacity` entry ids, a dict of adaptive scores
per (grid, bucket) and the counters. It re-derives cells with math.floor in float64 and borrows only the
implementation's `bucket_index` (the spec does not fix the hash function itself).
"""

from __future__ import annotations

import io
import math
import random
import zlib
from collections import deque
from dataclasses import replace

import pytest
import torch

from hash3d.cache import AdaptiveGridHashTable, GridHashTable, HashTable, bucket_index, quantize
from hash3d.cache.table import DEFAULT_ADAPTIVE_CELLS
from hash3d.triton_support import triton_available, triton_interpreter_enabled

DEFAULT_CELL = (10.0, 10.0, 0.1, 10.0)
AZ_MAX = math.nextafter(360.0, 0.0)  # largest float64 below 360
TOL = dict(rtol=1e-5, atol=1e-5)



@pytest.fixture(autouse=True, params=["torch", "triton"])
def backend(request, monkeypatch):
    """Run the test with every table on this backend (tables built with the default backend "auto")."""
    original = HashTable.__init__
    if request.param == "torch":

        def torch_init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if "backend" not in kwargs:
                self.fused = False

        monkeypatch.setattr(HashTable, "__init__", torch_init)
    else:
        if not (triton_interpreter_enabled() or (torch.cuda.is_available() and triton_available("cuda"))):
            pytest.skip("the fused table needs triton and a CUDA GPU, or TRITON_INTERPRET=1")
        if triton_interpreter_enabled() and request.node.get_closest_marker("long_sequence"):
            pytest.skip("thousands of operations: too slow for Triton's interpreter (test_hash_table_triton.py "
                        "compares the fused table with the torch table over long sequences)")

        def fused_init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if "backend" in kwargs:  # chosen by the test itself
                return
            if not (triton_interpreter_enabled() or self.device.type == "cuda"):
                pytest.skip("a CPU table outside Triton's interpreter")
            self.fused = True

        monkeypatch.setattr(HashTable, "__init__", fused_init)
    return request.param


# --------------------------------------------------------------------------------------------- reference
def ref_cell(key, cell_size) -> tuple[int, ...]:
    """floor(key / cell size) per dimension in float64, azimuth wrapped into [0, 360) first."""
    e, a, r, t = (float(v) for v in key)
    a = a % 360.0
    if a >= 360.0:  # a tiny negative angle rounds up to 360.0 itself; it lies just below 360
        a = AZ_MAX
    return tuple(math.floor(v / float(c)) for v, c in zip((e, a, r, t), cell_size))


def cosine(u, v) -> float:
    nu = math.sqrt(sum(x * x for x in u))
    nv = math.sqrt(sum(x * x for x in v))
    return sum(x * y for x, y in zip(u, v)) / (max(nu, 1e-12) * max(nv, 1e-12))


class RefTable:
    def __init__(self, cell_sizes, n_buckets, bucket_size, temperature=1.0, gamma=0.9, capacity=None):
        self.cell_sizes = [tuple(float(c) for c in cs) for cs in cell_sizes]
        self.M = len(self.cell_sizes)
        self.n, self.Q = n_buckets, bucket_size
        self.T, self.gamma = float(temperature), float(gamma)
        self.capacity = n_buckets * bucket_size if capacity is None else capacity
        self.reset()

    def reset(self):
        self.buckets = [dict() for _ in range(self.M)]  # bucket -> deque[(cell, entry id)], oldest first
        self.scores = [dict() for _ in range(self.M)]  # bucket -> adaptive score (absent = 0)
        self.pool: dict[int, tuple[list[float], list[float]]] = {}  # id -> (latent, value), last `capacity` ids
        self.next_id = 0
        self.value_shape = None
        self.queries = self.hits = self.inserts = self.evictions = 0

    # helpers
    def locate(self, keys):
        """keys [B, 4] -> per sample, per grid: (cell, bucket)."""
        rows = keys.tolist()
        out = [[None] * self.M for _ in rows]
        for g, cs in enumerate(self.cell_sizes):
            cells = [ref_cell(k, cs) for k in rows]
            if not cells:
                continue
            buckets = bucket_index(torch.tensor(cells, dtype=torch.int64), self.n).tolist()
            for i, (c, b) in enumerate(zip(cells, buckets)):
                assert 0 <= b < self.n
                out[i][g] = (c, b)
        return out

    def same_cell(self, g, bucket, cell):
        return [eid for c, eid in self.buckets[g].get(bucket, ()) if c == cell and eid in self.pool]

    def live(self) -> set[int]:
        return {eid for grid in self.buckets for dq in grid.values() for _, eid in dq if eid in self.pool}

    def score(self, g, bucket) -> float:
        return self.scores[g].get(bucket, 0.0)

    def blend(self, ids, x):
        logits = [-sum((a - b) ** 2 for a, b in zip(x, self.pool[e][0])) / self.T for e in ids]
        top = max(logits)
        w = [math.exp(lg - top) for lg in logits]
        z = sum(w)
        out = [0.0] * len(self.pool[ids[0]][1])
        for wi, e in zip(w, ids):
            for j, v in enumerate(self.pool[e][1]):
                out[j] += wi / z * v
        return out

    # API
    def insert(self, keys, latents, values):
        B = keys.shape[0]
        locs = self.locate(keys)
        lats = latents.reshape(B, -1).double().tolist()
        vals = values.reshape(B, -1).double().tolist()
        # adaptive scores: every sample compares against the entries present before the batch; applied in order
        updates = []
        for i in range(B):
            for g, (cell, b) in enumerate(locs[i]):
                ids = self.same_cell(g, b, cell)
                if ids:
                    updates.append((g, b, sum(cosine(vals[i], self.pool[e][1]) for e in ids) / len(ids)))
        for g, b, m in updates:
            self.scores[g][b] = self.gamma * self.score(g, b) + (1 - self.gamma) * m
        before = len(self.live())
        for i in range(B):  # one by one
            eid = self.next_id
            self.next_id += 1
            self.pool[eid] = (lats[i], vals[i])
            self.pool.pop(eid - self.capacity, None)  # ring of `capacity` entries
            for g, (cell, b) in enumerate(locs[i]):
                dq = self.buckets[g].setdefault(b, deque())
                dq.append((cell, eid))
                if len(dq) > self.Q:
                    dq.popleft()
        self.inserts += B
        self.evictions += before + B - len(self.live())
        self.value_shape = tuple(values.shape[1:])

    def query(self, keys, latents, tie_tol=1e-5):
        """-> per sample, the list of acceptable blends: [] = miss; the first is the spec's exact choice, the others
        are grids whose score is below the best by at most `tie_tol` (float32 scores may order near-ties either way;
        exact ties must go to the first grid)."""
        B = keys.shape[0]
        locs = self.locate(keys)
        lats = latents.reshape(B, -1).double().tolist()
        results = []
        for i in range(B):
            cands = []
            for g, (cell, b) in enumerate(locs[i]):
                ids = self.same_cell(g, b, cell)
                if ids:
                    cands.append((self.score(g, b), self.blend(ids, lats[i])))
            options = []
            if cands:
                best = max(s for s, _ in cands)
                k = next(k for k, (s, _) in enumerate(cands) if s == best)  # ties: first grid
                options = [cands[k][1]] + [v for s, v in cands if best - tie_tol <= s < best]
            results.append(options)
        self.queries += B
        self.hits += sum(bool(o) for o in results)
        return results

    def score_tensor(self):
        out = torch.zeros(self.M, self.n, dtype=torch.float64)
        for g in range(self.M):
            for b, s in self.scores[g].items():
                out[g, b] = s
        return out


# --------------------------------------------------------------------------------------------- comparisons
def check_query(table: HashTable, ref: RefTable, keys, latents):
    B = keys.shape[0]
    values, hit = table.query(keys, latents)
    options = ref.query(keys, latents)
    assert hit.dtype == torch.bool and tuple(hit.shape) == (B,)
    assert hit.tolist() == [bool(o) for o in options]
    if values is None:
        assert ref.value_shape is None, "values may be None only while nothing was inserted"
        return values, hit
    assert tuple(values.shape) == (B,) + ref.value_shape
    flat = values.reshape(B, -1).double()
    for i, opts in enumerate(options):
        if not opts:
            assert torch.all(flat[i] == 0), f"miss {i} must return zeros"
        else:
            ok = any(torch.allclose(flat[i], torch.tensor(o, dtype=torch.float64), **TOL) for o in opts)
            assert ok, f"sample {i}: got {flat[i].tolist()}, expected {opts[0]}"
    return values, hit


def check_state(table: HashTable, ref: RefTable):
    s = table.stats
    got = (s.queries, s.hits, s.inserts, s.evictions, s.entries)
    assert got == (ref.queries, ref.hits, ref.inserts, ref.evictions, len(ref.live()))
    assert s.hit_rate == pytest.approx(ref.hits / ref.queries if ref.queries else 0.0)
    if ref.M > 1:  # adaptive scores per (grid, bucket); the table keeps them in `_score` (plus a scratch row)
        assert torch.allclose(table.storage.score[:, : ref.n].double(), ref.score_tensor(), rtol=0, atol=1e-5)


def make_pair(kind, n_buckets, bucket_size, capacity=None, gamma=0.8, temperature=1.0, max_bytes=None):
    if kind == "grid":
        table = GridHashTable(DEFAULT_CELL, n_buckets, bucket_size, temperature, capacity=capacity, max_bytes=max_bytes)
        ref = RefTable([DEFAULT_CELL], n_buckets, bucket_size, temperature, capacity=capacity)
    else:
        table = AdaptiveGridHashTable(
            DEFAULT_ADAPTIVE_CELLS, n_buckets, bucket_size, temperature, gamma, capacity=capacity, max_bytes=max_bytes
        )
        ref = RefTable(DEFAULT_ADAPTIVE_CELLS, n_buckets, bucket_size, temperature, gamma, capacity)
    return table, ref


def k64(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------------------------- random keys
LATENT_SHAPE = (2, 2)
VALUE_SHAPE = (2, 3)


class KeySampler:
    """Keys near a few centers (so cells repeat), azimuths shifted by ±360° (so wrap matters), some uniform keys."""

    def __init__(self, rng: random.Random, n_centers=6):
        self.rng = rng
        near_wrap = [-0.3, 0.4, 359.6, 360.2, 719.7, -359.8, 9.9, 350.1]
        self.centers = []
        for j in range(n_centers):
            az = rng.choice(near_wrap) if j % 2 == 0 else rng.uniform(-360, 720)
            key = (rng.uniform(-10, 90), az, rng.uniform(1, 2), rng.uniform(0, 1000))
            latent = [rng.gauss(0, 1) for _ in range(4)]
            value = [rng.gauss(0, 1) for _ in range(6)]
            self.centers.append((key, latent, value))

    def __call__(self, B):
        rng = self.rng
        keys, lats, vals = [], [], []
        for _ in range(B):
            (e, a, r, t), lat, val = rng.choice(self.centers)
            if rng.random() < 0.1:
                e, a, r, t = rng.uniform(-10, 90), rng.uniform(-360, 720), rng.uniform(1, 2), rng.uniform(0, 999.9)
            else:
                e = min(max(e + rng.gauss(0, 2.0), -10.0), 90.0)
                a = a + rng.gauss(0, 2.0) + 360.0 * rng.choice([-1, 0, 0, 1])
                while a < -360.0:
                    a += 360.0
                while a > 720.0:
                    a -= 360.0
                r = min(max(r + rng.gauss(0, 0.02), 1.0), 2.0)
                t = min(max(t + rng.gauss(0, 2.0), 0.0), 999.9)
            keys.append((e, a, r, t))
            lats.append([x + rng.gauss(0, 0.4) for x in lat])
            vals.append([x + rng.gauss(0, 0.3) for x in val])
        return (
            torch.tensor(keys, dtype=torch.float32),
            torch.tensor(lats, dtype=torch.float32).reshape((B,) + LATENT_SHAPE),
            torch.tensor(vals, dtype=torch.float32).reshape((B,) + VALUE_SHAPE),
        )


RANDOM_CONFIGS = [
    pytest.param(dict(kind="grid", n_buckets=64, bucket_size=3), id="grid-64"),
    pytest.param(dict(kind="grid", n_buckets=7, bucket_size=3, capacity=10), id="grid-7-capacity10"),
    pytest.param(dict(kind="grid", n_buckets=16, bucket_size=3, max_bytes=40 * 40), id="grid-16-max_bytes"),
    pytest.param(dict(kind="grid", n_buckets=1, bucket_size=4, capacity=32), id="grid-1"),
    pytest.param(dict(kind="adaptive", n_buckets=64, bucket_size=3), id="adaptive-64"),
    pytest.param(dict(kind="adaptive", n_buckets=7, bucket_size=2, capacity=9), id="adaptive-7-capacity9"),
    pytest.param(dict(kind="adaptive", n_buckets=1, bucket_size=5, capacity=24, temperature=0.5), id="adaptive-1"),
]


@pytest.mark.long_sequence
@pytest.mark.parametrize("cfg", RANDOM_CONFIGS)
def test_random_interleaved_batches_match_reference(cfg):
    cfg = dict(cfg)
    table, ref = make_pair(cfg.pop("kind"), **cfg)
    rng = random.Random(zlib.crc32(repr(sorted(cfg.items())).encode()))
    sample = KeySampler(rng)
    n_keys = n_hits = n_query = 0
    for step in range(500):
        B = min(rng.choice([1, 1, 2, 3, 5, 8, 13, 24]), ref.capacity)
        keys, lats, vals = sample(B)
        n_keys += B
        if rng.random() < 0.5:
            table.insert(keys, lats, vals)
            if cfg.get("max_bytes") and ref.next_id == 0:  # the pool shrinks to the budget once entries have a size
                entry = lats[0].numel() * lats.element_size() + vals[0].numel() * vals.element_size()
                assert B <= table.capacity < ref.n * ref.Q and table.capacity * entry <= cfg["max_bytes"]
                ref.capacity = table.capacity
            ref.insert(keys, lats, vals)
        else:
            _, hit = check_query(table, ref, keys, lats)
            n_hits += int(hit.sum())
            n_query += B
        check_state(table, ref)
        if step == 350:  # a reset in the middle: both start over
            table.reset()
            ref.reset()
            check_state(table, ref)
    assert n_keys >= 2000
    assert 0 < n_hits < n_query, "the run should see both hits and misses"
    assert ref.evictions > 0 or table.stats.evictions > 0


# --------------------------------------------------------------------------------------------- collisions
def test_single_bucket_never_returns_another_cells_values():
    table = GridHashTable(DEFAULT_CELL, n_buckets=1, bucket_size=16)
    centers = [(5.0 + 10 * i, 15.0 + 20 * i, 1.05 + 0.1 * (i % 3), 5.0 + 10 * (i % 4)) for i in range(8)]
    centers += [(-5.0, 15.0, 1.05, 5.0), (5.0, 195.0, 1.05, 5.0), (5.0, 15.0, 1.95, 5.0), (5.0, 15.0, 1.05, 905.0)]
    keys = k64(*centers)
    n = len(centers)
    values = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2) + 1
    table.insert(keys, torch.zeros(n, 3), values)
    # other points of each own cell: hit with exactly that cell's single value
    moved = keys + torch.tensor([2.0, -3.0, 0.02, 4.0], dtype=torch.float64)
    got, hit = table.query(moved, torch.randn(n, 3))
    assert hit.all()
    assert torch.equal(got, values)
    # neighbouring cells share the only bucket: they hit only where that very cell was inserted
    own = {ref_cell(k, DEFAULT_CELL): i for i, k in enumerate(keys.tolist())}
    n_miss = 0
    for shift in ([10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 0.1, 0], [0, 0, 0, 10.0], [-10.0, 0, 0, 0]):
        shifted = moved + torch.tensor(shift, dtype=torch.float64)
        got, hit = table.query(shifted, torch.zeros(n, 3))
        for i, k in enumerate(shifted.tolist()):
            j = own.get(ref_cell(k, DEFAULT_CELL))
            assert hit[i].item() == (j is not None)
            assert torch.equal(got[i], values[j] if j is not None else torch.zeros(2))
            n_miss += j is None
    assert n_miss >= 50


def test_seven_buckets_with_forced_collisions():
    n_cells = 40  # > 7 buckets: several cells share each bucket
    table = GridHashTable(DEFAULT_CELL, n_buckets=7, bucket_size=n_cells)
    keys = k64(*[(5.0 + 10 * (i % 10), 5.0 + 10 * (i // 10), 1.55, 55.0) for i in range(n_cells)])
    cells = quantize(keys, torch.tensor(DEFAULT_CELL, dtype=torch.float64))
    buckets = bucket_index(cells, 7)
    assert torch.bincount(buckets, minlength=7).max() >= 2
    values = torch.randn(n_cells, 5)
    table.insert(keys, torch.randn(n_cells, 2), values)
    got, hit = table.query(keys + 1.0 * torch.tensor([1, 1, 0, 1], dtype=torch.float64), torch.randn(n_cells, 2))
    assert hit.all() and torch.equal(got, values)
    got, hit = table.query(keys + torch.tensor([0, 0, 0, 10.0], dtype=torch.float64), torch.randn(n_cells, 2))
    assert not hit.any() and torch.equal(got, torch.zeros_like(values))


def test_collision_pushes_a_cell_out_of_its_bucket():
    table = GridHashTable(DEFAULT_CELL, n_buckets=1, bucket_size=2)
    a, b, c = (5.0, 5.0, 1.05, 5.0), (15.0, 5.0, 1.05, 5.0), (25.0, 5.0, 1.05, 5.0)
    for i, key in enumerate((a, b, c)):
        table.insert(k64(key), torch.zeros(1, 1), torch.full((1, 1), float(i + 1)))
    got, hit = table.query(k64(a, b, c), torch.zeros(3, 1))
    assert hit.tolist() == [False, True, True]
    assert got.flatten().tolist() == [0.0, 2.0, 3.0]
    s = table.stats
    assert (s.inserts, s.evictions, s.entries) == (3, 1, 2)


# --------------------------------------------------------------------------------------------- batches and FIFO
def _cell_keys(rng, cells, pattern):
    """Keys inside the cells named by `pattern` (indices into `cells`), at random points of each cell."""
    rows = []
    for j in pattern:
        e, a, r, t = cells[j]
        rows.append((e + rng.uniform(0.1, 9.9), a + rng.uniform(0.1, 9.9), r + rng.uniform(0.01, 0.09), t + rng.uniform(0.1, 9.9)))
    return k64(*rows)


@pytest.mark.parametrize("n_buckets,bucket_size", [(1, 3), (5, 2), (64, 3)])
def test_overfull_batch_equals_inserting_one_by_one(n_buckets, bucket_size):
    rng = random.Random(n_buckets)
    cells = [(0.0, 0.0, 1.0, 0.0), (10.0, 350.0, 1.2, 40.0), (-10.0, 20.0, 1.9, 990.0)]  # lower corners
    batched = GridHashTable(DEFAULT_CELL, n_buckets, bucket_size, capacity=64)
    single = GridHashTable(DEFAULT_CELL, n_buckets, bucket_size, capacity=64)
    ref = RefTable([DEFAULT_CELL], n_buckets, bucket_size, capacity=64)
    probe = _cell_keys(rng, cells, [0, 1, 2])
    for pattern in ([0, 1], [0, 1, 0, 0, 1, 0, 2, 0], [2], [1, 1, 1, 1, 1, 0, 2, 2, 0], list(range(3)) * 4):
        B = len(pattern)
        keys = _cell_keys(rng, cells, pattern)
        lats, vals = torch.randn(B, 3), torch.randn(B, 2, 2)
        batched.insert(keys, lats, vals)
        for i in range(B):
            single.insert(keys[i : i + 1], lats[i : i + 1], vals[i : i + 1])
        ref.insert(keys, lats, vals)
        x = torch.randn(3, 3)
        got_b, hit_b = check_query(batched, ref, probe, x)
        got_s, hit_s = single.query(probe, x)
        assert torch.equal(hit_b, hit_s)
        assert torch.allclose(got_b, got_s, rtol=1e-6, atol=1e-7)
        sb, ss = batched.stats, single.stats
        assert (sb.inserts, sb.evictions, sb.entries) == (ss.inserts, ss.evictions, ss.entries)
        check_state(batched, ref)


def test_overfull_batch_keeps_the_last_entries_by_hand():
    table = GridHashTable(DEFAULT_CELL, n_buckets=1, bucket_size=3, capacity=8)
    a, b, c = (5.0, 5.0, 1.05, 5.0), (5.0, 15.0, 1.05, 5.0), (5.0, 25.0, 1.05, 5.0)
    pattern = [a, b, a, a, b, a, c, a]  # one bucket gets 8 samples; the last 3 are a(5), c(6), a(7)
    lats = torch.zeros(8, 1)
    lats[7] = 1.0
    vals = torch.arange(8, dtype=torch.float32)[:, None]
    table.insert(k64(*pattern), lats, vals)
    got, hit = table.query(k64(a, b, c), torch.zeros(3, 1))
    assert hit.tolist() == [True, False, True]
    w5 = 1 / (1 + math.exp(-1.0))  # d² = 0 to entry 5, 1 to entry 7, T = 1
    assert got[0, 0].item() == pytest.approx(w5 * 5 + (1 - w5) * 7, abs=1e-6)
    assert got[2, 0].item() == 6.0
    s = table.stats
    assert (s.inserts, s.evictions, s.entries) == (8, 5, 3)


@pytest.mark.parametrize("capacity", [1, 2, 5])
def test_pool_ring_smaller_than_buckets(capacity):
    table = GridHashTable(DEFAULT_CELL, n_buckets=4, bucket_size=3, capacity=capacity)
    ref = RefTable([DEFAULT_CELL], 4, 3, capacity=capacity)
    a, b = (5.0, 5.0, 1.05, 5.0), (45.0, 125.0, 1.55, 505.0)
    for i in range(3):  # three entries of cell a, one at a time
        key, lat, val = k64(a), torch.full((1, 2), float(i)), torch.full((1, 1), 10.0 * (i + 1))
        table.insert(key, lat, val)
        ref.insert(key, lat, val)
    check_state(table, ref)
    got, hit = check_query(table, ref, k64(a), torch.zeros(1, 2))
    kept = list(range(max(0, 3 - capacity), 3))  # only the last `capacity` entries survive in the pool
    w = [math.exp(-2.0 * i * i) for i in kept]
    assert got.item() == pytest.approx(sum(wi * 10.0 * (i + 1) for wi, i in zip(w, kept)) / sum(w), abs=1e-5)
    assert table.stats.entries == min(3, capacity)
    # inserting elsewhere overwrites the oldest pool entry, which cell a's bucket still refers to
    table.insert(k64(b), torch.zeros(1, 2), torch.ones(1, 1))
    ref.insert(k64(b), torch.zeros(1, 2), torch.ones(1, 1))
    check_state(table, ref)
    got, hit = check_query(table, ref, k64(a, b), torch.zeros(2, 2))
    assert hit.tolist() == [capacity > 1, True]
    # a batch exactly as large as the pool replaces every entry
    table.insert(k64(*[b] * capacity), torch.zeros(capacity, 2), torch.full((capacity, 1), 7.0))
    ref.insert(k64(*[b] * capacity), torch.zeros(capacity, 2), torch.full((capacity, 1), 7.0))
    got, hit = check_query(table, ref, k64(a, b), torch.zeros(2, 2))
    assert hit.tolist() == [False, True] and got[1].item() == pytest.approx(7.0, abs=1e-5)
    check_state(table, ref)


# --------------------------------------------------------------------------------------------- cells
BOUNDARY_CELL = (10.0, 10.0, 0.25, 10.0)  # exact in binary, so boundaries are exact


@pytest.mark.parametrize("dim,boundary", [(0, 20.0), (0, -10.0), (1, 30.0), (1, 0.0), (2, 1.25), (3, 40.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cell_boundaries(dim, boundary, dtype):
    inner = [25.0, 35.0, 1.375, 45.0]
    on, below = list(inner), list(inner)
    on[dim] = boundary
    below[dim] = torch.nextafter(torch.tensor(boundary, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)).item()
    cs = torch.tensor(BOUNDARY_CELL, dtype=torch.float64)
    c_on, c_below = quantize(torch.tensor([on, below], dtype=dtype), cs).tolist()
    expected_on = math.floor(boundary / BOUNDARY_CELL[dim]) if dim != 1 else math.floor((boundary % 360) / 10)
    assert c_on[dim] == expected_on
    assert c_below[dim] == (expected_on - 1) % 36 if dim == 1 else c_below[dim] == expected_on - 1
    assert c_on == list(ref_cell(torch.tensor(on, dtype=dtype).tolist(), BOUNDARY_CELL))
    assert c_below == list(ref_cell(torch.tensor(below, dtype=dtype).tolist(), BOUNDARY_CELL))
    # through the table, with every cell in the same bucket
    table = GridHashTable(BOUNDARY_CELL, n_buckets=1, bucket_size=4)
    table.insert(torch.tensor([on, below], dtype=dtype), torch.zeros(2, 1), torch.tensor([[1.0], [2.0]]))
    up_mid, low_mid = list(inner), list(inner)
    up_mid[dim] = boundary + BOUNDARY_CELL[dim] / 2
    low_mid[dim] = boundary - BOUNDARY_CELL[dim] / 2
    got, hit = table.query(torch.tensor([up_mid, low_mid], dtype=dtype), torch.zeros(2, 1))
    assert hit.all() and got.flatten().tolist() == [1.0, 2.0]


def test_quantize_matches_floor_on_random_keys():
    g = torch.Generator().manual_seed(0)
    keys = torch.rand(4000, 4, generator=g, dtype=torch.float64)
    keys = keys * torch.tensor([100.0, 1080.0, 1.0, 1000.0], dtype=torch.float64) + torch.tensor(
        [-10.0, -360.0, 1.0, 0.0], dtype=torch.float64
    )
    for cs in (DEFAULT_CELL, *DEFAULT_ADAPTIVE_CELLS, (7.0, 7.0, 0.3, 3.0)):
        got = quantize(keys, torch.tensor(cs, dtype=torch.float64)).tolist()
        assert got == [list(ref_cell(k, cs)) for k in keys.tolist()]


def test_azimuth_wrap_and_negative_elevation():
    def fresh():
        return GridHashTable(DEFAULT_CELL, n_buckets=1, bucket_size=8)

    def key(elev=45.0, az=45.0):
        return (elev, az, 1.55, 55.0)

    def hits(table, *azs, elev=45.0):
        got, hit = table.query(k64(*[key(elev, a) for a in azs]), torch.zeros(len(azs), 1))
        return hit.tolist(), got.flatten().tolist()

    t = fresh()
    t.insert(k64(key(az=-5.0)), torch.zeros(1, 1), torch.full((1, 1), 1.0))
    assert hits(t, 355.0, 715.0, -365.0, 351.0, 345.0, 5.0) == ([True] * 4 + [False] * 2, [1.0] * 4 + [0.0] * 2)

    t = fresh()
    t.insert(k64(key(az=359.9)), torch.zeros(1, 1), torch.full((1, 1), 2.0))
    assert hits(t, 0.1, -0.1, 350.5, 719.95, -1e-15)[0] == [False, True, True, True, True]
    t.insert(k64(key(az=0.1)), torch.zeros(1, 1), torch.full((1, 1), 3.0))
    assert hits(t, 9.9, 360.1, -359.9, 10.0, 359.9) == ([True] * 3 + [False, True], [3.0] * 3 + [0.0, 2.0])

    # a tiny negative angle wraps to just below 360°, i.e. into the last cell, never to a cell index of 36
    cells = quantize(k64(key(az=-1e-15), key(az=-0.0), key(az=360.0)), torch.tensor(DEFAULT_CELL, dtype=torch.float64))
    assert cells[:, 1].tolist() == [35, 0, 0]

    t = fresh()
    t.insert(k64(key(elev=-0.5)), torch.zeros(1, 1), torch.full((1, 1), 4.0))
    below_minus10 = math.nextafter(-10.0, -math.inf)
    assert hits(t, 45.0, 45.0, 45.0, 45.0, 45.0, elev=-9.5)[0] == [True] * 5
    for elev, expected in ((-9.5, True), (-10.0, True), (below_minus10, False), (0.0, False), (0.5, False)):
        assert hits(t, 45.0, elev=elev)[0] == [expected], elev


# --------------------------------------------------------------------------------------------- blend
def test_blend_weights_by_hand():
    T = 2.0
    table = GridHashTable(DEFAULT_CELL, n_buckets=1, bucket_size=4, temperature=T)
    keys = k64((5.0, 5.0, 1.12, 5.0), (6.0, 6.0, 1.13, 6.0), (15.0, 5.0, 1.12, 5.0))  # 2 in one cell, 1 elsewhere
    lats = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    vals = torch.tensor([[1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    table.insert(keys, lats, vals)
    q = k64(*[(5.5, 5.5, 1.125, 5.5)] * 3)
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    got, hit = table.query(q, x)
    assert hit.all()
    # query 0: ||x - x1||² = 0, ||x - x2||² = 2 -> weights ∝ (1, e^{-2/T}) = (1, e^{-1})
    w1 = 1.0 / (1.0 + math.exp(-1.0))
    expected = torch.tensor([[w1, 1 - w1], [1 - w1, w1], [0.5, 0.5]])
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    # the unsquared norm (the original code) would give weights ∝ (1, e^{-sqrt(2)/T}): clearly different
    w1_unsquared = 1.0 / (1.0 + math.exp(-math.sqrt(2.0) / T))
    assert abs(w1 - w1_unsquared) > 0.05


# --------------------------------------------------------------------------------------------- adaptive grid
def _adaptive(**kw):
    return AdaptiveGridHashTable(DEFAULT_ADAPTIVE_CELLS, n_buckets=1024, bucket_size=3, temperature=1.0, gamma=0.8, **kw)


def _scores_at(table, key):
    """Score of the bucket of `key` in each grid (read from the table's score array)."""
    out = []
    for g, cs in enumerate(DEFAULT_ADAPTIVE_CELLS):
        b = bucket_index(torch.tensor(ref_cell(key, cs)), table.n_buckets).item()
        out.append(table.storage.score[g, b].item())
    return out


def test_adaptive_coarse_grid_wins_by_hand():
    A, B = (25.0, 25.0, 1.12, 25.0), (5.0, 5.0, 1.12, 5.0)
    q = (6.0, 6.0, 1.13, 6.0)
    # A and B share only the coarse cell; the query's cell is B's in every grid
    assert [ref_cell(A, cs) == ref_cell(B, cs) for cs in DEFAULT_ADAPTIVE_CELLS] == [False, False, True]
    assert all(ref_cell(q, cs) == ref_cell(B, cs) for cs in DEFAULT_ADAPTIVE_CELLS)
    table = _adaptive()
    table.insert(k64(A), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    table.insert(k64(B), torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]))
    # only the coarse bucket saw a same-cell entry: s = 0.8 * 0 + 0.2 * cos((2,0), (1,0)) = 0.2
    assert _scores_at(table, B) == pytest.approx([0.0, 0.0, 0.2], abs=1e-6)
    got, hit = table.query(k64(q), torch.tensor([[0.0, 0.0]]))
    assert hit.item()
    wB = math.exp(-1.0) / (1.0 + math.exp(-1.0))  # d² = 0 to A, 1 to B
    assert got[0].tolist() == pytest.approx([(1 - wB) * 1.0 + wB * 2.0, 0.0], abs=1e-6)  # ≈ 1.269; fine grid: 2.0


def test_adaptive_fine_grid_wins_by_hand():
    A, B, D = (5.0, 5.0, 1.12, 5.0), (6.0, 6.0, 1.13, 6.0), (15.0, 15.0, 1.12, 15.0)
    q = (5.5, 5.5, 1.125, 5.5)
    assert all(ref_cell(A, cs) == ref_cell(B, cs) == ref_cell(q, cs) for cs in DEFAULT_ADAPTIVE_CELLS)
    assert [ref_cell(D, cs) == ref_cell(A, cs) for cs in DEFAULT_ADAPTIVE_CELLS] == [False, True, True]
    table = _adaptive()
    table.insert(k64(A), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    table.insert(k64(B), torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 0.0]]))
    assert _scores_at(table, A) == pytest.approx([0.2, 0.2, 0.2], abs=1e-6)  # cos = 1 in every grid
    table.insert(k64(D), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    # D is orthogonal to A and B: medium and coarse decay to 0.8 * 0.2 + 0.2 * 0 = 0.16, fine keeps 0.2
    assert _scores_at(table, A) == pytest.approx([0.2, 0.16, 0.16], abs=1e-6)
    got, hit = table.query(k64(q), torch.tensor([[0.0, 0.0]]))
    assert hit.item()
    wB = math.exp(-1.0) / (1.0 + math.exp(-1.0))
    assert got[0].tolist() == pytest.approx([(1 - wB) * 1.0 + wB * 3.0, 0.0], abs=1e-6)
    # (the medium/coarse blend over A, B, D would have a second component 1 / (2 + e^-1) ≈ 0.42)


def test_adaptive_ties_go_to_the_first_grid():
    A, D = (5.0, 5.0, 1.12, 5.0), (15.0, 15.0, 1.12, 15.0)
    table = _adaptive()
    # one batch: scores compare against the entries present before it (none), so every score stays 0
    table.insert(k64(A, D), torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert _scores_at(table, A) == [0.0, 0.0, 0.0]
    got, hit = table.query(k64(A), torch.zeros(1, 2))
    assert hit.item() and got[0].tolist() == [1.0, 0.0]  # fine grid holds only A; coarser grids blend A and D


def test_adaptive_batch_scores_compare_against_entries_before_the_batch():
    A, B, C = (5.0, 5.0, 1.12, 5.0), (6.0, 6.0, 1.13, 6.0), (7.0, 7.0, 1.14, 7.0)  # one cell in every grid
    table = _adaptive()
    table.insert(k64(A), torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]))
    table.insert(k64(B, C), torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    # B: cos(B, A) = 1/sqrt2; C: against A only (not B), cos = 0.  s = 0.8 * (0.2 / sqrt2) + 0.2 * 0
    expected = 0.8 * 0.2 / math.sqrt(2.0)
    assert _scores_at(table, A) == pytest.approx([expected] * 3, abs=1e-6)


# --------------------------------------------------------------------------------------------- stats and memory
def test_stats_counters_by_hand():
    table = GridHashTable(DEFAULT_CELL, n_buckets=1, bucket_size=2, capacity=8)
    s = table.stats
    assert (s.queries, s.hits, s.inserts, s.evictions, s.entries, s.hit_rate) == (0, 0, 0, 0, 0, 0.0)
    cell = (5.0, 5.0, 1.05, 5.0)
    got, hit = table.query(k64(cell), torch.zeros(1, 1))  # nothing stored yet
    assert got is None and hit.tolist() == [False]
    table.insert(k64(cell, cell, cell), torch.zeros(3, 1), torch.ones(3, 1))
    got, hit = table.query(k64(cell, (15.0, 5.0, 1.05, 5.0), cell, (5.0, 5.0, 1.05, 15.0)), torch.zeros(4, 1))
    assert hit.tolist() == [True, False, True, False]
    s = table.stats
    assert (s.queries, s.hits, s.inserts, s.evictions, s.entries) == (5, 2, 3, 1, 2)
    assert s.hit_rate == pytest.approx(0.4)
    d = s.as_dict()
    assert d["hit_rate"] == pytest.approx(0.4) and d["queries"] == 5 and d["bytes"] == s.bytes > 0


def _tensor_bytes(obj) -> int:
    total = 0
    for v in vars(obj).values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif type(v).__module__.startswith("hash3d"):
            total += _tensor_bytes(v)
    return total


@pytest.mark.long_sequence
@pytest.mark.parametrize(
    "adaptive,lat_dtype,val_dtype",
    [(False, torch.float32, torch.float32), (False, torch.float32, torch.float16), (True, torch.float32, torch.float32)],
)
def test_bytes_grow_with_entries_then_stay_bounded(adaptive, lat_dtype, val_dtype):
    n, Q = 64, 3
    if adaptive:
        table = AdaptiveGridHashTable(DEFAULT_ADAPTIVE_CELLS, n_buckets=n, bucket_size=Q, capacity=100)
    else:
        table = GridHashTable(DEFAULT_CELL, n_buckets=n, bucket_size=Q)
        assert table.capacity == n * Q  # memory bounded by n_buckets x bucket_size by default
    M, P = table.n_grids, table.capacity
    lat_shape, val_shape = (4, 8, 8), (2, 8, 8)
    item_l, item_v = torch.empty((), dtype=lat_dtype).element_size(), torch.empty((), dtype=val_dtype).element_size()
    entry = math.prod(lat_shape) * item_l + math.prod(val_shape) * item_v + 4 + 8  # latent, value, norm, stamp
    bookkeeping = M * (n + 1) * (Q * 64 + 16) + P * 8  # cells, references, heads, scores, pool ids
    before = table.stats.bytes
    assert 0 < before <= bookkeeping
    untracked = _tensor_bytes(table) - before  # key grid, primes, counters: a few scalars
    assert untracked < 1024
    g = torch.Generator().manual_seed(1)
    lo = torch.tensor([-10.0, -360.0, 1.0, 0.0])
    span = torch.tensor([100.0, 1080.0, 1.0, 999.0])
    full = None
    for step in range(100):  # 10 inserts of one entry (growth from the first rows), then 90 of 100
        B = 1 if step < 10 else 100
        keys = torch.rand(B, 4, generator=g) * span + lo
        table.insert(keys, torch.randn((B,) + lat_shape, dtype=lat_dtype), torch.randn((B,) + val_shape).to(val_dtype))
        if step % 25 == 0:
            table.query(keys, torch.randn((B,) + lat_shape, dtype=lat_dtype))
        s, inserted = table.stats, table.stats.inserts
        rows = min(P, max(16, 2 * inserted))  # the storage at most doubles past what is stored
        assert s.bytes == before + table.rows * entry == _tensor_bytes(table) - untracked
        assert min(P, inserted) <= table.rows <= rows
        if full is None and table.rows == P:
            full = s.bytes
        if full is not None:
            assert s.bytes == full, "memory must not grow once the pool holds `capacity` rows"
        assert s.entries <= P
    assert full is not None
    assert table.stats.inserts == 10 + 90 * 100
    assert table.stats.evictions == table.stats.inserts - table.stats.entries


# --------------------------------------------------------------------------------------------- bad input
KEY = k64((5.0, 5.0, 1.05, 5.0), (15.0, 5.0, 1.05, 5.0))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(cell_size=(10.0, 10.0, 0.1)), "cell_size"),
        (dict(cell_size=(10.0, 10.0, 0.1, 10.0, 1.0)), "cell_size"),
        (dict(cell_size=(10.0, 0.0, 0.1, 10.0)), "cell_size"),
        (dict(cell_size=(10.0, 10.0, -0.1, 10.0)), "cell_size"),
        (dict(cell_size=(10.0, 10.0, 0.1, math.nan)), "cell_size"),
        (dict(cell_size=10.0), "cell_size"),
        (dict(bucket_size=0), "bucket_size"),
        (dict(bucket_size=-2), "bucket_size"),
        (dict(n_buckets=0), "n_buckets"),
        (dict(n_buckets=-1), "n_buckets"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(capacity=0), "capacity"),
    ],
)
def test_bad_grid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GridHashTable(**kwargs)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(cell_sizes=((10.0, 10.0, 0.1, 10.0), (20.0, 20.0, 0.15))), "cell_size"),
        (dict(cell_sizes=((10.0, 10.0, 0.1, 10.0), (20.0, 20.0, 0.0, 20.0))), "cell_size"),
        (dict(cell_sizes=(10.0, 10.0, 0.1, 10.0)), "cell_size"),
        (dict(cell_sizes=()), "cell_size"),
        (dict(bucket_size=0), "bucket_size"),
        (dict(n_buckets=0), "n_buckets"),
        (dict(temperature=0.0), "temperature"),
        (dict(gamma=1.0), "gamma"),
        (dict(gamma=-0.1), "gamma"),
    ],
)
def test_bad_adaptive_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdaptiveGridHashTable(**kwargs)


BAD_KEYS = [
    pytest.param(torch.zeros(2, 3, dtype=torch.float64), id="B x 3"),
    pytest.param(torch.zeros(2, 5, dtype=torch.float64), id="B x 5"),
    pytest.param(torch.zeros(4, dtype=torch.float64), id="1-d"),
    pytest.param(torch.zeros(1, 2, 4, dtype=torch.float64), id="3-d"),
    pytest.param(torch.zeros(2, 4, dtype=torch.int64), id="int64"),
    pytest.param(torch.zeros(2, 4, dtype=torch.int32), id="int32"),
    pytest.param(k64((5.0, math.nan, 1.0, 5.0), (5.0, 5.0, 1.0, 5.0)), id="nan"),
    pytest.param(k64((5.0, 5.0, 1.0, math.inf), (5.0, 5.0, 1.0, 5.0)), id="inf"),
    pytest.param(k64((-math.inf, 5.0, 1.0, 5.0), (5.0, 5.0, 1.0, 5.0)), id="-inf"),
    pytest.param([[5.0, 5.0, 1.0, 5.0]] * 2, id="list"),
]


@pytest.mark.parametrize("keys", BAD_KEYS)
@pytest.mark.parametrize("adaptive", [False, True])
def test_bad_keys(keys, adaptive):
    table = AdaptiveGridHashTable(n_buckets=8) if adaptive else GridHashTable(n_buckets=8)
    B = 2
    with pytest.raises(ValueError, match="keys"):
        table.insert(keys, torch.zeros(B, 3), torch.zeros(B, 2))
    table.insert(KEY, torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="keys"):
        table.query(keys, torch.zeros(B, 3))
    s = table.stats
    assert (s.inserts, s.queries) == (2, 0), "a rejected call must not count"


def test_bad_batch_sizes_and_shapes():
    table = GridHashTable(n_buckets=8, bucket_size=2, capacity=4)
    with pytest.raises(ValueError, match="latents"):
        table.insert(KEY, torch.zeros(3, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="values"):
        table.insert(KEY, torch.zeros(2, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="latents"):
        table.query(KEY, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="capacity"):
        table.insert(k64(*[(5.0, 5.0, 1.05, 5.0)] * 5), torch.zeros(5, 7), torch.zeros(5, 9))
    # the rejected first batch stored nothing, so it fixed no shapes either
    got, hit = table.query(KEY, torch.zeros(2, 3))
    assert got is None and not hit.any()
    table.insert(KEY, torch.zeros(2, 3), torch.ones(2, 2))
    before = table.stats
    with pytest.raises(ValueError, match="values"):
        table.insert(KEY, torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="values"):
        table.insert(KEY, torch.zeros(2, 3), torch.zeros(2, 2, 1))
    with pytest.raises(ValueError, match="latents"):
        table.insert(KEY, torch.zeros(2, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="latents"):
        table.query(KEY, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="latents"):
        table.query(KEY, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="capacity"):
        table.insert(k64(*[(5.0, 5.0, 1.05, 5.0)] * 5), torch.zeros(5, 3), torch.zeros(5, 2))
    assert table.stats == before, "rejected calls leave the table as it was"
    got, hit = table.query(KEY, torch.zeros(2, 3))
    assert hit.all() and torch.equal(got, torch.ones(2, 2))
    # reset() forgets the shapes: new latent and value shapes are accepted afterwards
    table.reset()
    table.insert(KEY, torch.zeros(2, 5, 5), torch.full((2, 3, 1), 2.0))
    got, hit = table.query(KEY, torch.zeros(2, 5, 5))
    assert hit.all() and got.shape == (2, 3, 1) and torch.equal(got, torch.full((2, 3, 1), 2.0))


def test_empty_batches():
    table = GridHashTable(n_buckets=8)
    table.insert(KEY[:0], torch.zeros(0, 3), torch.zeros(0, 2))
    got, hit = table.query(KEY[:0], torch.zeros(0, 3))
    assert got is None and hit.shape == (0,)
    table.insert(KEY, torch.zeros(2, 3), torch.ones(2, 2))
    got, hit = table.query(KEY[:0], torch.zeros(0, 3))
    assert got.shape == (0, 2) and hit.shape == (0,)
    s = table.stats
    assert (s.inserts, s.queries, s.hits, s.entries) == (2, 0, 0, 2)


# --------------------------------------------------------------------------------------------- reset
@pytest.mark.parametrize("adaptive", [False, True])
def test_reset_clears_entries_and_counters(adaptive):
    kw = dict(n_buckets=4, bucket_size=2, capacity=8)
    table = AdaptiveGridHashTable(**kw) if adaptive else GridHashTable(**kw)
    empty_bytes = table.stats.bytes
    keys = k64(*[(5.0, 5.0, 1.05, 5.0)] * 3, (45.0, 5.0, 1.05, 5.0))  # two cells in every grid
    table.insert(keys[:3], torch.zeros(3, 2), torch.ones(3, 2))
    table.insert(keys, torch.zeros(4, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]))
    table.query(keys, torch.zeros(4, 2))
    s = table.stats
    assert s.inserts == 7 and s.queries == 4 and s.hits == 4 and s.evictions > 0 and s.entries > 0
    table.reset()
    s = table.stats
    assert (s.queries, s.hits, s.inserts, s.evictions, s.entries, s.hit_rate) == (0, 0, 0, 0, 0, 0.0)
    assert s.bytes == empty_bytes
    if adaptive:
        assert not table.storage.score.any()
    got, hit = table.query(keys, torch.zeros(4, 2))
    assert got is None and not hit.any()
    table.insert(keys[3:], torch.zeros(1, 2), torch.full((1, 2), 5.0))
    got, hit = table.query(keys, torch.zeros(4, 2))
    assert hit.tolist() == [False, False, False, True] and got[3].tolist() == [5.0, 5.0]


# --------------------------------------------------------------------------------------------- saving and restoring
def _random_batch(g: torch.Generator, n: int):
    """Keys in a few cells of every grid (so queries hit and buckets overflow), latents [n, 2, 3], values [n, 5]."""
    centres = torch.tensor([[5.0, 5.0, 1.05, 105.0], [25.0, 365.0, 1.05, 605.0], [5.0, 205.0, 1.05, 605.0]])
    keys = centres[torch.randint(0, 3, (n,), generator=g)] + torch.rand(n, 4, generator=g) * torch.tensor([4, 4, 0, 4])
    return keys, torch.randn(n, 2, 3, generator=g), torch.randn(n, 5, generator=g)


def _roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as in a checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


TABLE_KINDS = {
    "grid": lambda: GridHashTable((20.0, 90.0, 0.5, 250.0), n_buckets=5, bucket_size=2, capacity=9),
    "adaptive": lambda: AdaptiveGridHashTable(n_buckets=5, bucket_size=2, capacity=9, gamma=0.7),
    "budget": lambda: GridHashTable((20.0, 90.0, 0.5, 250.0), n_buckets=5, bucket_size=2, max_bytes=8 * 56),
}


@pytest.mark.parametrize("kind", list(TABLE_KINDS))
@pytest.mark.slow
def test_state_dict_round_trip_continues_identically(kind):
    g = torch.Generator().manual_seed(7)
    table = TABLE_KINDS[kind]()
    for _ in range(4):
        table.insert(*_random_batch(g, 3))
        table.query(*_random_batch(g, 4)[:2])
    if kind == "budget":
        assert table.capacity == 8 < table.max_capacity  # the pool shrank to the memory budget
    restored = TABLE_KINDS[kind]()
    restored.load_state_dict(_roundtrip(table.state_dict()))
    assert restored.stats == table.stats and restored.capacity == table.capacity
    hits = 0
    for _ in range(5):  # both go on with the same queries and inserts: same answers, same statistics
        keys, latents, values = _random_batch(g, 4)
        (a, hit_a), (b, hit_b) = table.query(keys, latents), restored.query(keys, latents)
        assert torch.equal(hit_a, hit_b) and torch.equal(a, b)
        hits += int(hit_a.sum())
        table.insert(keys, latents, values)
        restored.insert(keys, latents, values)
        assert restored.stats == table.stats
    assert hits > 0
    assert torch.equal(restored.storage.score, table.storage.score)


def test_state_dict_holds_only_live_entries_and_resumes_exactly():
    """Many inserts over few cells: most entries are evicted from their buckets, and the pool wraps. The saved state
    holds the live ones only (its size follows them), and a table restored from it continues exactly."""
    g = torch.Generator().manual_seed(17)
    build = lambda: GridHashTable((20.0, 90.0, 0.5, 250.0), n_buckets=5, bucket_size=2, capacity=40)  # noqa: E731
    table = build()
    for _ in range(12):
        table.insert(*_random_batch(g, 3))
    state = table.state_dict()
    live = table.stats.entries
    assert 0 < live < 36 and table.rows == 40 > live  # 36 inserted, fewer still referenced
    assert state["pool_slots"].shape == (live,) and state["pool_values"].shape[0] == live
    assert state["pool_latents"].shape[0] == state["pool_ids"].shape[0] == state["pool_norms"].shape[0] == live
    saved = sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
    index = sum(state[k].numel() * state[k].element_size() for k in ("cells", "ref_slot", "ref_id", "head", "score"))
    entry = state["pool_values"][0].numel() * 4 + state["pool_latents"][0].numel() * 4 + 8 + 8 + 4
    assert saved <= index + live * entry + 64  # the index, the live entries and a few counters
    restored = build()
    restored.load_state_dict(_roundtrip(state))
    assert restored.stats.entries == live and restored.rows < table.rows  # storage for the live slots only
    for _ in range(6):
        keys, latents, values = _random_batch(g, 3)
        (a, hit_a), (b, hit_b) = table.query(keys, latents), restored.query(keys, latents)
        assert torch.equal(hit_a, hit_b) and torch.equal(a, b)
        table.insert(keys, latents, values)
        restored.insert(keys, latents, values)
        assert restored.stats.entries == table.stats.entries and restored.stats.inserts == table.stats.inserts
    b, a = restored.state_dict(), table.state_dict()
    for name in ("pool_slots", "pool_ids", "pool_latents", "pool_values", "cells", "ref_slot", "ref_id", "head"):
        assert torch.equal(a[name], b[name]), name


def test_state_saved_with_the_full_pool_still_loads():
    """States written before the pool grew on demand hold every row; they load and continue like the saved table."""
    g = torch.Generator().manual_seed(19)
    table = TABLE_KINDS["grid"]()
    for _ in range(3):
        table.insert(*_random_batch(g, 3))
    state = table.state_dict()
    full = {k: v for k, v in state.items() if k != "pool_slots"}
    rows = torch.arange(table.capacity)
    for name in ("pool_ids", "pool_latents", "pool_values", "pool_norms"):  # every row, as the old format had them
        own = getattr(table.storage, name)
        padded = torch.zeros((table.capacity,) + tuple(own.shape[1:]), dtype=own.dtype)
        padded[: own.shape[0]] = own
        if name == "pool_ids":
            padded = table.storage.pool_ids.clone()
        full[name] = padded[rows]
    restored = TABLE_KINDS["grid"]()
    restored.load_state_dict(_roundtrip(full))
    keys, latents, _ = _random_batch(g, 6)
    (a, hit_a), (b, hit_b) = table.query(keys, latents), restored.query(keys, latents)
    assert torch.equal(hit_a, hit_b) and torch.equal(a, b) and restored.stats == table.stats


def test_state_dict_of_an_empty_table_and_state_independence():
    g = torch.Generator().manual_seed(3)
    table = TABLE_KINDS["grid"]()
    empty = table.state_dict()
    assert empty["pool_values"] is None and empty["value_shape"] is None and empty["pool_slots"] is None
    table.insert(*_random_batch(g, 3))
    full = table.state_dict()
    table.insert(*_random_batch(g, 3))  # later inserts do not change a state already taken
    table.load_state_dict(full)
    assert table.stats.inserts == 3 and table.stats.entries == 3
    table.load_state_dict(_roundtrip(empty))  # back to nothing allocated
    assert table.stats == TABLE_KINDS["grid"]().stats and table.storage.pool_values is None
    got, hit = table.query(*_random_batch(g, 2)[:2])
    assert got is None and not hit.any()
    keys, latents, values = _random_batch(g, 2)
    table.insert(keys, latents[:, :1], values[:, :2])  # an empty table takes any entry shape, as a fresh one
    assert table.value_shape == (2,)


def test_load_state_dict_refuses_another_layout():
    g = torch.Generator().manual_seed(5)
    table = TABLE_KINDS["grid"]()
    table.insert(*_random_batch(g, 3))
    state = table.state_dict()
    others = {
        "cell_sizes": GridHashTable((10.0, 90.0, 0.5, 250.0), n_buckets=5, bucket_size=2, capacity=9),
        "n_buckets": GridHashTable((20.0, 90.0, 0.5, 250.0), n_buckets=6, bucket_size=2, capacity=9),
        "bucket_size": GridHashTable((20.0, 90.0, 0.5, 250.0), n_buckets=5, bucket_size=3, capacity=9),
        "capacity": GridHashTable((20.0, 90.0, 0.5, 250.0), n_buckets=5, bucket_size=2, capacity=10),
    }
    for name, other in others.items():
        with pytest.raises(ValueError, match=rf"{name}: .* saved, .* here"):
            other.load_state_dict(state)
        assert other.stats.inserts == 0  # left untouched
    with pytest.raises(ValueError, match="cell_sizes"):
        TABLE_KINDS["adaptive"]().load_state_dict(state)
    restored = TABLE_KINDS["grid"]()
    restored.load_state_dict(state)
    keys, latents, _ = _random_batch(g, 2)
    with pytest.raises(ValueError, match="restored from the checkpoint holds latents .*save_in_checkpoint=false"):
        restored.query(keys, latents[:, :1])


# --------------------------------------------------------------------------------------------- masked insert
def _random_mask(rng: random.Random, B: int) -> torch.Tensor:
    """All False, all True, a single True, or each row kept with a random probability."""
    kind = rng.choice(["none", "all", "one", "random", "random", "random"])
    if kind == "none":
        return torch.zeros(B, dtype=torch.bool)
    if kind == "all":
        return torch.ones(B, dtype=torch.bool)
    if kind == "one":
        return torch.arange(B) == rng.randrange(B)
    p = rng.random()
    return torch.tensor([rng.random() < p for _ in range(B)], dtype=torch.bool)


def _spoil_dropped_rows(rng: random.Random, mask, keys, lats, vals):
    """Rows not kept may hold anything: NaN, inf or huge keys, latents and values."""
    keys, lats, vals = keys.clone(), lats.clone(), vals.clone()
    for i in (~mask).nonzero().flatten().tolist():
        junk = rng.choice([math.nan, math.inf, -math.inf, 1e30])
        keys[i, rng.randrange(4)] = junk
        lats[i].fill_(junk)
        vals[i].fill_(rng.choice([math.nan, -1e30]))
    return keys, lats, vals


def _assert_same_table(masked: HashTable, twin: HashTable):
    """Same counters, ids and bucket index (scratch row n excepted); the pool bit-identical, or, where the twin has
    not allocated one yet (only masked inserts keeping nothing so far), the masked table's pool still empty."""
    sm, st = masked.stats, twin.stats
    fields = ("queries", "hits", "inserts", "evictions", "entries")
    assert [getattr(sm, f) for f in fields] == [getattr(st, f) for f in fields]
    # the masked table reserves pool rows for the rows it drops too: its storage may have grown further
    assert sm.bytes >= st.bytes or twin.storage.pool_values is None
    assert masked.storage.next_id.item() == twin.storage.next_id.item()
    a, b = masked.state_dict(), twin.state_dict()
    n = masked.n_buckets
    for name in ("cells", "ref_slot", "ref_id", "head", "score"):
        assert torch.equal(a[name][:, :n], b[name][:, :n]), name
    for name in ("next_id", "live", "counters"):
        assert torch.equal(a[name], b[name]), name
    assert a["pool_capacity"] == b["pool_capacity"]
    if b["pool_values"] is None:
        assert b["next_id"].item() == 0
        if a["pool_values"] is not None:
            assert a["pool_slots"].numel() == 0  # allocated, but nothing live
    else:
        assert (a["latent_shape"], a["value_shape"]) == (b["latent_shape"], b["value_shape"])
        for name in ("pool_slots", "pool_ids", "pool_latents", "pool_values", "pool_norms"):
            assert torch.equal(a[name], b[name]), name


MASK_CONFIGS = [
    pytest.param(dict(kind="grid", n_buckets=7, bucket_size=3, capacity=10), id="grid-7-capacity10"),
    pytest.param(dict(kind="grid", n_buckets=1, bucket_size=4, capacity=16), id="grid-1"),
    pytest.param(dict(kind="grid", n_buckets=16, bucket_size=2, max_bytes=40 * 20), id="grid-16-max_bytes"),
    pytest.param(dict(kind="adaptive", n_buckets=7, bucket_size=2, capacity=9), id="adaptive-7-capacity9"),
    pytest.param(dict(kind="adaptive", n_buckets=3, bucket_size=3, capacity=13), id="adaptive-3"),
    pytest.param(dict(kind="adaptive", n_buckets=64, bucket_size=3, capacity=24), id="adaptive-64"),
]


@pytest.mark.long_sequence
@pytest.mark.parametrize("cfg", MASK_CONFIGS)
def test_masked_insert_equals_inserting_the_kept_rows(cfg):
    cfg = dict(cfg)
    kind = cfg.pop("kind")
    masked, _ = make_pair(kind, **cfg)
    twin, _ = make_pair(kind, **cfg)
    rng = random.Random(zlib.crc32(repr((kind, sorted(cfg.items()))).encode()))
    sample = KeySampler(rng)
    n_hits = n_queries = n_kept = n_dropped = 0
    seen = set()
    for step in range(300):
        if rng.random() < 0.6:
            B = rng.choice([1, 2, 3, 5, 8])
            keys, lats, vals = sample(B)
            mask = _random_mask(rng, B)
            seen.add("none" if not mask.any() else "all" if mask.all() else "one" if mask.sum() == 1 else "some")
            if rng.random() < 0.3:
                keys, lats, vals = _spoil_dropped_rows(rng, mask, keys, lats, vals)
            masked.insert(keys, lats, vals, mask=mask)
            if mask.any():
                twin.insert(keys[mask], lats[mask], vals[mask])
            n_kept += int(mask.sum())
            n_dropped += int((~mask).sum())
        else:
            B = rng.choice([1, 4, 9])
            keys, lats, _ = sample(B)
            (got_m, hit_m), (got_t, hit_t) = masked.query(keys, lats), twin.query(keys, lats)
            assert torch.equal(hit_m, hit_t)
            if got_t is None:  # the twin has stored nothing yet; the masked table may have allocated its pool
                assert not hit_m.any() and (got_m is None or not got_m.any())
            else:
                assert torch.equal(got_m, got_t)
            n_hits += int(hit_t.sum())
            n_queries += B
        _assert_same_table(masked, twin)
        if step == 200:
            masked.reset()
            twin.reset()
    assert seen == {"none", "all", "one", "some"}
    assert n_kept > 100 and n_dropped > 100
    assert 0 < n_hits < n_queries
    assert twin.stats.evictions > 0 and twin.storage.next_id.item() > twin.capacity  # buckets overflowed, the pool wrapped


@pytest.mark.parametrize("kind", ["grid", "adaptive"])
def test_masked_insert_by_hand(kind):
    table, _ = make_pair(kind, n_buckets=1, bucket_size=2, capacity=4)
    a, b = (5.0, 5.0, 1.05, 5.0), (45.0, 5.0, 1.05, 5.0)  # different cells in every grid, one bucket
    # nothing kept: nothing counted, no id taken (the pool is allocated, as by any first insert)
    table.insert(k64(a, b), torch.zeros(2, 1), torch.ones(2, 1), mask=torch.tensor([False, False]))
    assert table.stats.inserts == table.stats.entries == table.storage.next_id.item() == 0
    got, hit = table.query(k64(a, b), torch.zeros(2, 1))
    assert not hit.any() and not got.any()
    # only b kept, NaN in the dropped row
    junk = k64((math.nan, 0, 0, 0), b)
    table.insert(junk, torch.zeros(2, 1), torch.tensor([[math.nan], [2.0]]), mask=torch.tensor([False, True]))
    got, hit = table.query(k64(a, b), torch.zeros(2, 1))
    assert hit.tolist() == [False, True] and got.flatten().tolist() == [0.0, 2.0]
    s = table.stats
    assert (s.inserts, s.evictions, s.entries, table.storage.next_id.item()) == (1, 0, 1, 1)
    # a kept, then three dropped rows of a: the bucket keeps b and a (bucket_size 2)
    table.insert(k64(a, a, a, a), torch.zeros(4, 1), torch.tensor([[3.0], [7.0], [8.0], [9.0]]), torch.arange(4) == 0)
    got, hit = table.query(k64(a, b), torch.zeros(2, 1))
    assert hit.tolist() == [True, True] and got.flatten().tolist() == [3.0, 2.0]
    s = table.stats
    assert (s.inserts, s.evictions, s.entries, table.storage.next_id.item()) == (2, 0, 2, 2)
    if kind == "adaptive":
        assert not table.storage.score.any()  # no kept row found an entry of its own cell, and dropped rows score nothing


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(torch.ones(3, dtype=torch.bool), id="too long"),
        pytest.param(torch.ones(1, dtype=torch.bool), id="too short"),
        pytest.param(torch.ones(2, 1, dtype=torch.bool), id="2-d"),
        pytest.param(torch.tensor(True), id="0-d"),
        pytest.param(torch.ones(2, dtype=torch.int64), id="int64"),
        pytest.param(torch.ones(2, dtype=torch.uint8), id="uint8"),
        pytest.param(torch.ones(2), id="float"),
        pytest.param([True, True], id="list"),
    ],
)
def test_bad_mask(mask):
    table = GridHashTable(n_buckets=8)
    with pytest.raises(ValueError, match="mask"):
        table.insert(KEY, torch.zeros(2, 3), torch.zeros(2, 2), mask=mask)
    assert table.storage.pool_values is None and table.stats.inserts == 0  # nothing stored, nothing allocated
    table.insert(KEY, torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="mask"):
        table.insert(KEY, torch.zeros(2, 3), torch.zeros(2, 2), mask=mask)
    assert table.stats.inserts == 2


def test_non_finite_keys_rejected_only_in_kept_rows():
    table = GridHashTable(n_buckets=8)
    keys = k64((5.0, 5.0, 1.05, 5.0), (math.nan, 5.0, 1.05, 5.0))
    with pytest.raises(ValueError, match="keys"):
        table.insert(keys, torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="keys"):
        table.insert(keys, torch.zeros(2, 3), torch.zeros(2, 2), mask=torch.tensor([False, True]))
    assert table.stats.inserts == 0
    table.insert(keys, torch.zeros(2, 3), torch.ones(2, 2), mask=torch.tensor([True, False]))
    assert table.stats.inserts == 1


_SYNCING = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere", "masked_select",
            "unique", "unique_consecutive", "repeat_interleave", "numpy", "cpu"}


class _NoSyncMode(torch.overrides.TorchFunctionMode):
    """Raises on every torch call that reads device data on the host or makes a data-dependent shape: the calls of
    `_SYNCING` and indexing with a boolean mask. Records the names of all calls."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", repr(func))
        self.calls.append(name)
        if name in _SYNCING:
            raise AssertionError(f"host synchronisation or data-dependent shape: {name}")
        if name in ("__getitem__", "__setitem__", "index_put", "index_put_", "index", "index_select"):
            index = args[1] if len(args) > 1 else None
            for t in index if isinstance(index, (tuple, list)) else (index,):
                if isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8):
                    raise AssertionError(f"boolean-mask indexing: {name}")
        return func(*args, **(kwargs or {}))


def test_no_sync_mode_catches_syncing_calls():
    x = torch.arange(4)
    for bad in (lambda: x[0].item(), lambda: x.tolist(), lambda: bool(x[0]), lambda: int(x[1]), lambda: x.nonzero(),
                lambda: torch.nonzero(x), lambda: x[x > 1], lambda: x.__setitem__(x > 1, 0), lambda: range(x[2])):
        with pytest.raises(AssertionError, match="synchronisation|boolean"):
            with _NoSyncMode():
                bad()
    with _NoSyncMode():
        torch.where(x > 1, x, 0).cumsum(0)[torch.tensor([0, 2])]


@pytest.mark.parametrize("kind", ["grid", "adaptive"])
def test_insert_core_with_mask_has_no_host_sync(kind, backend):
    g = torch.Generator().manual_seed(11)
    table = TABLE_KINDS[kind]()
    table.insert(*_random_batch(g, 4))  # allocates the pool (the host-side part of insert)
    masks = [torch.tensor([True, False, True, True, False]), torch.zeros(5, dtype=torch.bool)]
    masks.append(torch.ones(5, dtype=torch.bool))
    for mask in masks:
        keys, latents, values = _random_batch(g, 5)
        with _NoSyncMode() as mode:
            table.insert_core(keys, latents, values, mask)
        seen = {"where", "cumsum"} if backend == "torch" else {"contiguous", "empty"}  # fused: kernel arguments
        assert seen <= set(mode.calls)  # the mode really saw the core's calls
    assert table.stats.inserts == 4 + 3 + 0 + 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", ["grid", "adaptive"])
@pytest.mark.parametrize("capacity", [9, 100])  # 100: the pool grows (16, 32, 64, 100 rows) between replays
def test_graphed_masked_insert_matches_eager_twin(kind, capacity):
    def build(graphs):
        if kind == "grid":
            return GridHashTable(DEFAULT_CELL, 7, 2, capacity=capacity, device="cuda", cuda_graphs=graphs,
                                 check_finite=False)
        return AdaptiveGridHashTable(n_buckets=7, bucket_size=2, capacity=capacity, device="cuda", cuda_graphs=graphs,
                                     check_finite=False)

    graphed, twin = build(True), build(False)
    rng = random.Random(3)
    sample = KeySampler(rng)
    for step in range(40):
        keys, lats, vals = sample(5)
        mask = _random_mask(rng, 5)
        graphed.insert(keys.cuda(), lats.cuda(), vals.cuda(), mask=mask.cuda())
        if mask.any():
            twin.insert(keys[mask].cuda(), lats[mask].cuda(), vals[mask].cuda())
        q, x, _ = sample(6)
        (got_g, hit_g), (got_t, hit_t) = graphed.query(q.cuda(), x.cuda()), twin.query(q.cuda(), x.cuda())
        assert torch.equal(hit_g, hit_t)
        if got_t is not None:
            torch.testing.assert_close(got_g, got_t)
        # a graphed insert reserves rows for the whole batch (its mask is not read on the host), the twin for the
        # kept rows: the pools may differ in size, never in what they hold
        assert replace(graphed.stats, bytes=0) == replace(twin.stats, bytes=0)
        assert graphed.stats.bytes >= twin.stats.bytes
    assert graphed.graphs_captured >= 2  # one insert graph for every mask, plus the query
    if capacity == 100:
        assert graphed.rows > 16  # it grew while its graphs were in use (they were dropped and captured again)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures GPU memory")
@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_gpu_memory_of_a_nearly_empty_default_table(backend_name):
    """The default cache table (adaptive, 1024 buckets x 3, 4 GB budget) with SD-sized feature entries takes VRAM
    for the entries it holds, not for its capacity: empty, its index only; with 3 entries, 16 rows."""
    from hash3d.cache.config import CacheConfig
    from hash3d.triton_support import triton_available

    if backend_name == "triton" and not triton_available(torch.device("cuda")):
        pytest.skip("triton not installed")
    keys = torch.tensor([[10.0, 20.0, 1.5, 500.0], [12.0, 40.0, 1.5, 500.0], [30.0, 90.0, 1.5, 300.0]], device="cuda")
    latents = torch.randn(3, 4, 64, 64, device="cuda", dtype=torch.float16)
    values = torch.randn(3, 2, 640, 32, 32, device="cuda", dtype=torch.float16)  # deep features, CFG pair
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()  # the inputs above are not the table's
    table = CacheConfig(adaptive=True, table_backend=backend_name).build_table("cuda")
    empty = torch.cuda.memory_allocated() - base
    table.insert(keys, latents, values)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - base
    entry = latents[0].numel() * 2 + values[0].numel() * 2
    full = table.capacity * entry
    print(f"[{backend_name}] empty table {empty / 2**20:.2f} MiB; 3 entries {held / 2**20:.2f} MiB "
          f"({table.rows} rows); full capacity would be {full / 2**20:.0f} MiB")
    assert empty < 2 * 2**20  # the bucket index only
    assert table.rows == 16 and held < empty + 16 * entry + 2**20
    assert held < full / 50
