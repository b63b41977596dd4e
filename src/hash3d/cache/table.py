"""Batched hash tables keyed by (elevation °, azimuth °, camera distance, timestep).

One implementation serves both the fixed grid (`GridHashTable`, one grid) and the paper's adaptive grid
(`AdaptiveGridHashTable`, M grids): every grid is an index of buckets holding references into one shared entry
pool, so adding grids does not multiply memory.

Semantics, which tests check against a slow dictionary reference:
- A key's cell in a grid is floor(key / cell size) per dimension (azimuth wrapped into [0, 360) first); the cell
  hashes to one of `n_buckets` buckets. A bucket keeps the last `bucket_size` entries inserted into it (FIFO) with
  their exact cell coordinates, and a query only uses entries of its own cell, so a collision is never a hit.
- The pool keeps the last `capacity` inserted entries (a ring); an entry overwritten there is gone from every grid.
  Its storage grows with the entries (doubling, up to `capacity` rows), so a table that holds little takes little
  memory, and a saved state holds only the live entries (those some bucket still references).
- A batched insert equals inserting its samples one by one in order, except that the adaptive score update of
  each sample compares against the entries present before the batch.
- A masked insert `insert(keys, latents, values, mask=m)` equals `insert(keys[m], latents[m], values[m])` (same
  entries, scores, pool, ids and counters), computed with static shapes only, so it can run inside a CUDA graph.
- A query hits when some grid has an entry of the query's cell. It reads from the grid whose bucket has the highest
  score (ties: the first grid) and returns the blend of that bucket's same-cell entries with weights
  softmax(-||x - x_i||^2 / temperature) over the stored latents x_i (the paper's Eq. 6).
- Adaptive score per bucket: s <- gamma * s + (1 - gamma) * mean_i cos(v_new, v_i) over the same-cell entries
  already in the bucket; unchanged when there are none; starts at 0.
Everything runs as tensor code on the table's device: no Python loop over samples, no host synchronisation
(unless `check_finite` is on, which reads one flag per call). Two implementations of the same semantics: the torch
code below, and fused Triton kernels (`table_triton.py`: two kernels per query, three or four per insert), which
backend "auto" takes on CUDA when triton is installed; tests check one against the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .keys import bucket_index, hash_primes, quantize
from ..cuda_graphs import GraphedFunction, count_captured
from ..triton_support import triton_available
from .stats import CacheStats, Counters
from .storage import TableStorage


RESTORE_FIX = (
    "resume with the same cache config, model and resolution, "
    "or set cache.save_in_checkpoint=false to resume with an empty table"
)
"""How to get past a saved cache state that does not fit the resumed run."""

# storage saved by `HashTable.state_dict` (attribute name without the leading underscore): the index in full, the
# pool's rows only at the live slots (`pool_slots`)
_INDEX_TENSORS = ("cells", "ref_slot", "ref_id", "head", "score", "next_id", "live")
_POOL_TENSORS = ("pool_ids", "pool_latents", "pool_values", "pool_norms")
MIN_ROWS = 16
"""Pool rows allocated at first (fewer when the capacity is smaller); the storage doubles from there as needed
(grows `GRAPHED_GROWTH`-fold with CUDA graphs)."""
GRAPHED_GROWTH = 8
"""Storage growth factor of a table whose query and insert are replayed as CUDA graphs (2 without)."""
BACKENDS = ("auto", "torch", "triton")


def _cpu_copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True)


def _group_rank(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """groups [N] int64 -> (rank of each element among equal values in order of appearance, size of its group)."""
    order = torch.argsort(groups, stable=True)
    ordered = groups[order]
    first = torch.searchsorted(ordered, ordered, right=False)
    last = torch.searchsorted(ordered, ordered, right=True)
    rank = torch.empty_like(groups)
    count = torch.empty_like(groups)
    position = torch.arange(groups.numel(), device=groups.device)
    rank[order] = position - first
    count[order] = last - first
    return rank, count


class HashTable:
    """Hash table over one or more quantization grids that share one entry pool (see the module docstring).

    Args:
        cell_sizes: one (d_elev_deg, d_azim_deg, d_radius, d_t) per grid.
        n_buckets: buckets per grid.
        bucket_size: entries kept per bucket (oldest evicted first).
        temperature: softmax temperature of the latent-distance blend.
        gamma: decay of the adaptive per-bucket similarity score.
        capacity: entries kept in the shared pool; defaults to n_buckets * bucket_size.
        max_bytes: optional memory budget of the pool; the capacity shrinks to fit once the entry size is known.
        device: where all storage lives.
        check_finite: reject NaN/inf keys (costs one host read per call).
        cuda_graphs: replay query and insert as CUDA graphs (CUDA only): a few launches instead of ~100 small ones.
        backend: "torch", "triton" (the fused kernels; CUDA, or anywhere under TRITON_INTERPRET=1) or "auto" (triton
            on CUDA when it is installed, else torch).
    """

    def __init__(
        self,
        cell_sizes: Sequence[Sequence[float]],
        n_buckets: int = 1024,
        bucket_size: int = 3,
        temperature: float = 1.0,
        gamma: float = 0.9,
        capacity: int | None = None,
        device: str | torch.device | None = None,
        check_finite: bool = True,
        max_bytes: int | None = None,
        cuda_graphs: bool = False,
        backend: str = "auto",
    ):
        try:
            cells = torch.as_tensor(cell_sizes, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"cell_size must hold 4 numbers per grid; got {cell_sizes!r}") from e
        if cells.ndim != 2 or cells.shape[1] != 4 or cells.shape[0] < 1:
            raise ValueError(
                f"cell_size must hold 4 numbers (d_elev_deg, d_azim_deg, d_radius, d_t) per grid; got {list(cells.shape)}"
            )
        if not bool(torch.isfinite(cells).all()) or not bool((cells > 0).all()):
            raise ValueError(f"cell_size values must be finite and > 0; got {cells.tolist()}")
        if int(n_buckets) < 1:
            raise ValueError(f"n_buckets must be >= 1; got {n_buckets}")
        if int(bucket_size) < 1:
            raise ValueError(f"bucket_size must be >= 1; got {bucket_size}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1); got {gamma}")
        capacity = int(n_buckets) * int(bucket_size) if capacity is None else int(capacity)
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0; got {max_bytes}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if backend == "triton" and not triton_available(self.device):
            raise ValueError(
                f"the hash table's backend is 'triton', but its fused kernels cannot run on {self.device} (they need "
                "a CUDA GPU and the triton package); set the backend to 'auto' or 'torch'"
            )
        on_gpu = self.device.type == "cuda" and torch.cuda.is_available()
        self.fused = backend == "triton" or (backend == "auto" and on_gpu and triton_available(self.device))
        """Whether query and insert run the fused Triton kernels."""
        self.cell_sizes = cells.to(self.device)
        self.n_grids = cells.shape[0]
        self.n_buckets = int(n_buckets)
        self.bucket_size = int(bucket_size)
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.max_capacity = capacity
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.check_finite = check_finite
        self._use_graphs = bool(cuda_graphs) and self.device.type == "cuda" and torch.cuda.is_available()
        self.counters = Counters(self.device)
        self._grid = torch.arange(self.n_grids, device=self.device)[:, None]
        self._primes = hash_primes(self.device)
        self.reset()

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget every entry, score and counter; the next insert may bring a new value shape."""
        M, n, Q, dev = self.n_grids, self.n_buckets, self.bucket_size, self.device
        self.storage = TableStorage()
        # One extra bucket row per grid (index n) receives writes that must be dropped, so dropping needs no mask.
        self.storage.cells = torch.zeros(M, n + 1, Q, 4, dtype=torch.int64, device=dev)
        self.storage.ref_slot = torch.zeros(M, n + 1, Q, dtype=torch.int64, device=dev)
        self.storage.ref_id = torch.full((M, n + 1, Q), -1, dtype=torch.int64, device=dev)
        self.storage.head = torch.zeros(M, n + 1, dtype=torch.int64, device=dev)
        self.storage.score = torch.zeros(M, n + 1, dtype=torch.float32, device=dev)
        self.capacity = self.max_capacity
        self.storage.pool_ids = torch.full((self.capacity,), -1, dtype=torch.int64, device=dev)
        self._latent_shape: tuple[int, ...] | None = None
        self._value_shape: tuple[int, ...] | None = None
        self.storage.next_id = torch.zeros((), dtype=torch.int64, device=dev)  # on the device: graph replays advance it
        self._id_bound = 0
        """Host-side upper bound of `_next_id` (the ids reserved so far), so that growing needs no host read."""
        self.storage.live = torch.zeros((), dtype=torch.int64, device=dev)
        self._new_live_scratch()
        # new storage tensors: graphs captured on the old ones must not be replayed
        self._graphs: dict[str, GraphedFunction] | None = {} if self._use_graphs else None
        self._dropped_graphs = 0
        self._restored = False
        self.counters.reset()

    def _new_live_scratch(self) -> None:
        """The fused live count's per-slot stamps and epoch (not part of the saved state: any zeros will do)."""
        self.storage.stamp = torch.zeros(self.rows, dtype=torch.int64, device=self.device)
        self.storage.epoch = torch.zeros((), dtype=torch.int64, device=self.device)

    @property
    def allocated(self) -> bool:
        """Whether the pool exists (after the first insert or a restore): queries before it find nothing."""
        return self.storage.pool_values is not None

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """Shape of one stored noisy latent (fixed by the first insert since the last reset)."""
        return self._latent_shape

    @property
    def value_shape(self) -> tuple[int, ...] | None:
        """Shape of one stored value (fixed by the first insert since the last reset)."""
        return self._value_shape

    @property
    def value_dtype(self) -> torch.dtype | None:
        return None if self.storage.pool_values is None else self.storage.pool_values.dtype

    def check_latents(self, latents: torch.Tensor) -> None:
        """ValueError unless `latents` [B, ...] match the stored latents' shape."""
        self._check_shape("latents", latents, self._latent_shape)

    @property
    def rows(self) -> int:
        """Pool rows allocated now (0 before the first insert; at most `capacity`)."""
        return 0 if self.storage.pool_values is None else self.storage.pool_values.shape[0]

    def reserve(self, n: int) -> None:
        """Make sure the next insert of up to `n` rows has pool storage, growing it (new storage tensors) if needed.

        `insert` calls this itself; a caller that runs `insert_core` in a replayed CUDA graph calls it before each
        replay (outside the capture), with the number of rows the graph may insert. Growing reads the entry counter
        once (a host read, at most log2(capacity) times per run); otherwise nothing leaves the device."""
        if self.storage.pool_values is None or self.rows >= self.capacity:
            return
        if self._id_bound + n > self.rows:
            self._id_bound = int(self.storage.next_id)  # the bound counts rows that masks dropped: make it exact
        needed = min(self.capacity, self._id_bound + n)
        if needed > self.rows:
            # growing replaces the storage under every graph captured on it (here and in the guidance's hit step):
            # with graphs, grow in fewer, larger steps
            factor = GRAPHED_GROWTH if self._use_graphs else 2
            self._grow(min(self.capacity, max(needed, factor * self.rows)))
        self._id_bound += n

    def _grow(self, rows: int) -> None:
        """Copy the pool into `rows` rows (the new rows zero). Graphs captured on the old storage are dropped."""
        old = self.rows
        for name in ("pool_latents", "pool_values", "pool_norms", "stamp"):
            t = getattr(self.storage, name)
            grown = t.new_zeros((rows,) + tuple(t.shape[1:]))
            grown[:old] = t
            setattr(self.storage, name, grown)
        if self._graphs is not None:
            self._dropped_graphs += count_captured(self._graphs.values())
            self._graphs = {}

    # ---------------------------------------------------------------- saving and restoring
    def layout(self) -> dict[str, Any]:
        """What fixes the shape and meaning of the stored state: a saved state loads only into the same layout."""
        return {
            "cell_sizes": self.cell_sizes.tolist(),
            "n_buckets": self.n_buckets,
            "bucket_size": self.bucket_size,
            "capacity": self.max_capacity,
        }

    def layout_mismatches(self, state: Mapping[str, Any]) -> list[str]:
        """'name: saved value, this table's value' for every layout entry where `state` differs from this table."""
        saved, own = state.get("layout", {}), self.layout()
        return [f"{k}: {saved.get(k)!r} saved, {v!r} here" for k, v in own.items() if saved.get(k) != v]

    def _live_slots(self) -> torch.Tensor:
        """Pool slots that some bucket references with the entry they hold, ascending."""
        slots, ids = self.storage.ref_slot[:, :-1], self.storage.ref_id[:, :-1]
        live = (ids >= 0) & (self.storage.pool_ids[slots] == ids)
        return torch.unique(slots[live])

    def state_dict(self) -> dict[str, Any]:
        """Bucket indices, scores, counters and the live entries as CPU copies (plain types:
        `torch.load(weights_only=True)` reads them). Only live pool rows are saved (`pool_slots` says where they
        go): an entry no bucket references is never read again. An empty table has no pool yet: its pool entries
        are None."""
        allocated = self.storage.pool_values is not None
        slots = self._live_slots() if allocated else None
        state: dict[str, Any] = {
            "layout": self.layout(),
            "pool_capacity": self.capacity,
            "latent_shape": None if self._latent_shape is None else list(self._latent_shape),
            "value_shape": None if self._value_shape is None else list(self._value_shape),
            "counters": _cpu_copy(self.counters.values),
            "pool_slots": None if slots is None else _cpu_copy(slots),
        }
        for name in _INDEX_TENSORS:
            state[name] = _cpu_copy(getattr(self.storage, name))
        for name in _POOL_TENSORS:
            state[name] = _cpu_copy(getattr(self.storage, name)[slots]) if allocated else None
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state_dict()` of a table with the same layout (ValueError naming what differs)."""
        mismatches = self.layout_mismatches(state)
        if mismatches:
            raise ValueError(
                f"the saved hash table does not fit this one ({'; '.join(mismatches)}); "
                "load it into a table built with the same cell sizes, n_buckets, bucket_size and capacity"
            )
        allocated = state["pool_values"] is not None
        capacity = int(state["pool_capacity"])
        # states saved before the pool grew hold every row: slots 0, 1, ...
        slots = state.get("pool_slots")
        if allocated and slots is None:
            slots = torch.arange(state["pool_values"].shape[0])
        inconsistent = allocated != (state["value_shape"] is not None) or capacity > self.max_capacity
        if allocated and not inconsistent:
            inconsistent = any(state[name].shape[0] != slots.shape[0] for name in _POOL_TENSORS) or bool(
                slots.numel() and (slots.min() < 0 or slots.max() >= capacity)
            )
        if inconsistent:
            raise ValueError("the saved hash table state is inconsistent (its pool and shapes disagree); cannot load it")
        self.reset()
        self.capacity = capacity
        self.storage.pool_ids = torch.full((capacity,), -1, dtype=torch.int64, device=self.device)
        for name in _INDEX_TENSORS:
            setattr(self.storage, name, state[name].to(self.device, copy=True))
        self.counters.load(state["counters"])
        self._id_bound = int(self.storage.next_id)
        if allocated:
            self._latent_shape = tuple(int(d) for d in state["latent_shape"])
            self._value_shape = tuple(int(d) for d in state["value_shape"])
            rows = min(capacity, max(int(slots.max()) + 1 if slots.numel() else 0, MIN_ROWS))
            slots = slots.to(self.device)
            self.storage.pool_ids[slots] = state["pool_ids"].to(self.device)
            for name in ("pool_latents", "pool_values", "pool_norms"):
                saved = state[name]
                pool = torch.zeros((rows,) + tuple(saved.shape[1:]), dtype=saved.dtype, device=self.device)
                pool[slots] = saved.to(self.device)
                setattr(self.storage, name, pool)
        self._new_live_scratch()
        self._restored = True
        if allocated:
            self._prime_kernels()

    @property
    def stats(self) -> CacheStats:
        counts, live = self.counters.read(), int(self.storage.live)
        # every entry inserted since the reset is either still live or was evicted once
        return CacheStats(**counts, evictions=counts["inserts"] - live, entries=live, bytes=self.nbytes)

    @property
    def nbytes(self) -> int:
        tensors = [self.storage.cells, self.storage.ref_slot, self.storage.ref_id, self.storage.head, self.storage.score, self.storage.pool_ids, self.storage.stamp]
        tensors += [t for t in (self.storage.pool_latents, self.storage.pool_values, self.storage.pool_norms) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---------------------------------------------------------------- checks
    def _check_batch(self, keys: torch.Tensor, mask: torch.Tensor | None = None, **tensors: torch.Tensor) -> int:
        """Shape checks (and, with check_finite, one host read of whether the keys of the kept rows are finite)."""
        if not isinstance(keys, torch.Tensor) or keys.ndim != 2 or keys.shape[1] != 4:
            shape = list(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__
            raise ValueError(f"keys must be a [B, 4] tensor of (elevation, azimuth, radius, timestep); got {shape}")
        if not keys.is_floating_point():
            raise ValueError(f"keys must be floating point; got {keys.dtype}")
        B = keys.shape[0]
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.ndim < 1 or t.shape[0] != B:
                shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be a tensor with batch size {B} (the number of keys); got {shape}")
        bad_mask = not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (B,)
        if mask is not None and bad_mask:
            got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a bool tensor of shape [{B}] (one flag per key); got {got}")
        if self.check_finite:
            finite = torch.isfinite(keys).all(-1)
            if mask is not None:  # rows that are not kept may hold anything
                finite = finite | ~mask.to(finite.device)
            if not bool(finite.all()):
                raise ValueError("keys contain NaN or inf; every (elevation, azimuth, radius, timestep) must be finite")
        return B

    def _check_shape(self, name: str, t: torch.Tensor, expected: tuple[int, ...] | None) -> None:
        if expected is not None and tuple(t.shape[1:]) != expected and self._restored:
            raise ValueError(
                f"the cache table restored from the checkpoint holds {name} of shape {list(expected)} per sample, "
                f"this run makes {list(t.shape[1:])}: {RESTORE_FIX}"
            )
        if expected is not None and tuple(t.shape[1:]) != expected:
            raise ValueError(
                f"{name} shape per sample changed from {list(expected)} to {list(t.shape[1:])}; "
                "call reset() before storing tensors of another shape"
            )

    # ---------------------------------------------------------------- helpers
    def _locate(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keys [B, 4] -> cells [M, B, 4], buckets [M, B]."""
        cells = quantize(keys.to(self.device)[None], self.cell_sizes[:, None, :])
        return cells, bucket_index(cells, self.n_buckets, self._primes)

    def _bucket_entries(self, cells: torch.Tensor, buckets: torch.Tensor):
        """Entries of each (grid, sample)'s bucket: slots [M, B, Q] and a mask of live same-cell entries [M, B, Q]."""
        slots = self.storage.ref_slot[self._grid, buckets]
        ids = self.storage.ref_id[self._grid, buckets]
        live = (ids >= 0) & (self.storage.pool_ids[slots] == ids)
        same_cell = (self.storage.cells[self._grid, buckets] == cells[:, :, None, :]).all(-1)
        return slots, live & same_cell

    def _count_live(self) -> torch.Tensor:
        slots, ids = self.storage.ref_slot[:, :-1], self.storage.ref_id[:, :-1]
        live = (ids >= 0) & (self.storage.pool_ids[slots] == ids)
        alive = torch.zeros(self.capacity + 1, dtype=torch.bool, device=self.device)
        alive.index_fill_(0, torch.where(live, slots, torch.full_like(slots, self.capacity)).reshape(-1), True)
        return alive[:-1].sum()

    @property
    def graphs_captured(self) -> int:
        """CUDA graphs captured since the last reset (one per core and batch shape, again after each growth; 0 without
        graphs)."""
        return count_captured(self._graphs.values()) + self._dropped_graphs if self._use_graphs else 0

    def _run(self, name: str, core, *tensors: torch.Tensor):
        """Call a core directly, or replay it as a CUDA graph (captured once per batch shape; no warm-up runs,
        since a core changes the table)."""
        if self._graphs is None:
            return core(*tensors)
        if name not in self._graphs:
            self._graphs[name] = GraphedFunction(core, warmup=0)
        return self._graphs[name](*tensors)

    def _prime_kernels(self) -> None:
        """Fused backend: compile and load the kernels now, eagerly, with a query and an insert that change nothing
        (scratch counters; no row kept), so that no compile falls inside a CUDA graph capture later."""
        if not self.fused:
            return
        from . import table_triton

        keys = torch.zeros(1, 4, dtype=torch.float64, device=self.device)
        latents = torch.zeros((1,) + self._latent_shape, dtype=self.storage.pool_latents.dtype, device=self.device)
        values = torch.zeros((1,) + self._value_shape, dtype=self.storage.pool_values.dtype, device=self.device)
        table_triton.query(self, keys, latents, torch.zeros_like(self.counters.values))
        table_triton.insert(self, keys, latents, values, torch.zeros(1, dtype=torch.bool, device=self.device))

    # ---------------------------------------------------------------- query
    def query(self, keys: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """keys [B, 4], latents [B, ...] -> (blended values [B, ...] (zeros where missed), hit [B] bool).

        Values are None while the table holds nothing yet (their shape is unknown).
        """
        B = self._check_batch(keys, latents=latents)
        if self.storage.pool_values is None:
            self.counters.add_query(B, None)
            return None, torch.zeros(B, dtype=torch.bool, device=self.device)
        self._check_shape("latents", latents, self._latent_shape)
        return self._run("query", self.query_core, keys.to(self.device), latents.to(self.device))

    def query_core(self, keys: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused:
            from . import table_triton

            return table_triton.query(self, keys.to(torch.float64), latents, self.counters.values)
        B = keys.shape[0]
        cells, buckets = self._locate(keys)
        slots, valid = self._bucket_entries(cells, buckets)
        if self.n_grids == 1:
            slots, valid = slots[0], valid[0]  # [B, Q]
            hit = valid.any(-1)
        else:
            has = valid.any(-1)
            score = self.storage.score[self._grid, buckets]
            best = torch.where(has, score, torch.full_like(score, float("-inf"))).argmax(0)
            hit = has.any(0)
            rows = torch.arange(B, device=self.device)
            slots, valid = slots[best, rows], valid[best, rows]  # [B, Q]

        x = latents.reshape(B, 1, self.storage.pool_latents.shape[1]).float()  # B may be 0
        d2 = (self.storage.pool_latents[slots].float() - x).square().sum(-1)
        logits = (-d2 / self.temperature).masked_fill(~valid, float("-inf"))
        weights = torch.where(valid, torch.softmax(logits, -1), 0.0)
        blend = torch.bmm(weights[:, None, :].to(self.storage.pool_values.dtype), self.storage.pool_values[slots])  # [B, 1, D]

        self.counters.add_query(B, hit)
        return blend.reshape((B,) + self._value_shape), hit

    # ---------------------------------------------------------------- insert
    def _allocate(self, latents: torch.Tensor, values: torch.Tensor) -> None:
        entry_bytes = latents[0].numel() * latents.element_size() + values[0].numel() * values.element_size() + 12
        if self.max_bytes is not None:
            fits = self.max_bytes // entry_bytes
            if fits < latents.shape[0]:
                raise ValueError(
                    f"max_bytes={self.max_bytes} holds {fits} entries of {entry_bytes} bytes, fewer than the "
                    f"{latents.shape[0]} being inserted; raise the memory budget"
                )
            self.capacity = min(self.max_capacity, int(fits))
            self.storage.pool_ids = torch.full((self.capacity,), -1, dtype=torch.int64, device=self.device)
        P = min(self.capacity, max(latents.shape[0], MIN_ROWS))  # grown by `reserve` as entries come
        self._latent_shape = tuple(latents.shape[1:])
        self._value_shape = tuple(values.shape[1:])
        self.storage.pool_latents = torch.zeros((P, latents[0].numel()), dtype=latents.dtype, device=self.device)
        self.storage.pool_values = torch.zeros((P, values[0].numel()), dtype=values.dtype, device=self.device)
        self.storage.pool_norms = torch.zeros(P, dtype=torch.float32, device=self.device)
        self._new_live_scratch()
        self._prime_kernels()

    def insert(
        self, keys: torch.Tensor, latents: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Store values [B, ...] under keys [B, 4] with the noisy latents [B, ...] they were computed from.

        mask: optional bool [B]: store only the rows where it is True. The table ends up exactly as after
        `insert(keys[mask], latents[mask], values[mask])`, but without host synchronisation or data-dependent shapes
        (for callers inside a CUDA graph capture that know which rows to keep only on the device). The checks still
        see all B rows (B <= capacity, entry shapes), and the first insert allocates the pool even when no row is
        kept. Rows not kept may hold anything, NaN included: they are never read into the table.
        """
        B = self._check_batch(keys, mask, latents=latents, values=values)
        if B == 0:
            return
        if B > self.capacity:  # checked before allocating, so a rejected first batch leaves the table empty
            raise ValueError(f"cannot insert {B} entries at once into a table of capacity {self.capacity}")
        if self.storage.pool_values is None:
            self._allocate(latents, values)  # may shrink the capacity to max_bytes, never below B
        self._check_shape("latents", latents, self._latent_shape)
        self._check_shape("values", values, self._value_shape)
        self.reserve(B)
        if mask is None:
            mask = torch.ones(B, dtype=torch.bool, device=self.device)  # one core signature with or without a mask
        args = (keys.to(self.device), latents.to(self.device), values.to(self.device), mask.to(self.device))
        self._run("insert", self.insert_core, *args)

    def insert_core(self, keys: torch.Tensor, latents: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> None:
        """Insert the rows where mask [B] is True. Every state update is in place and every shape depends on B only,
        so the whole insert can be replayed as a CUDA graph.

        Rows not kept take no entry id, no bucket position and no score update: they are sent to the scratch bucket
        row n (whose writes nobody reads), and their pool slots (the ones the next inserts would use) are rewritten
        with what those slots already hold.
        """
        if self.fused:
            from . import table_triton

            return table_triton.insert(self, keys.to(torch.float64), latents, values, mask)
        B, M, n, Q = keys.shape[0], self.n_grids, self.n_buckets, self.bucket_size
        cells, buckets = self._locate(keys)
        buckets = torch.where(mask, buckets, torch.full_like(buckets, n))  # [M, B]
        flat_values = values.reshape(B, -1)
        norms = flat_values.float().norm(dim=-1)
        if M > 1:
            self._update_scores(cells, buckets, flat_values, norms, mask)

        # kept rows take ids next_id, next_id + 1, ... in order; the others the ids after them, so all B slots differ
        kept = mask.long()
        n_kept = kept.sum()
        dropped = 1 - kept
        order = torch.where(mask, torch.cumsum(kept, 0) - kept, n_kept + torch.cumsum(dropped, 0) - dropped)
        ids = self.storage.next_id + order
        slots = ids % self.capacity
        keep_row = mask[:, None]
        new_latents = latents.reshape(B, -1).to(self.storage.pool_latents.dtype)
        new_values = flat_values.to(self.storage.pool_values.dtype)
        self.storage.pool_latents[slots] = torch.where(keep_row, new_latents, self.storage.pool_latents[slots])
        self.storage.pool_values[slots] = torch.where(keep_row, new_values, self.storage.pool_values[slots])
        self.storage.pool_norms[slots] = torch.where(mask, norms, self.storage.pool_norms[slots])
        self.storage.pool_ids[slots] = torch.where(mask, ids, self.storage.pool_ids[slots])
        self.storage.next_id += n_kept

        grid = self._grid.expand(M, B)
        # rows not kept sit in bucket n, a group of their own per grid: they do not shift the ranks of kept rows
        rank, count = _group_rank((grid * (n + 1) + buckets).reshape(-1))
        rank, count = rank.view(M, B), count.view(M, B)
        keep = (rank >= count - Q) & mask  # earlier samples of an over-full bucket would be evicted within this batch
        pos = torch.remainder(self.storage.head[grid, buckets] + rank, Q)
        row = torch.where(keep, buckets, torch.full_like(buckets, n))
        pos = torch.where(keep, pos, torch.zeros_like(pos))
        self.storage.ref_slot[grid, row, pos] = slots.expand(M, B)
        self.storage.ref_id[grid, row, pos] = ids.expand(M, B)
        self.storage.cells[grid, row, pos] = cells
        self.storage.head.index_put_((grid, buckets), kept.expand(M, B), accumulate=True)
        self.storage.head.remainder_(Q)

        self.counters.add_insert(n_kept)
        self.storage.live.copy_(self._count_live())

    def _update_scores(self, cells, buckets, flat_values, norms, mask) -> None:
        """Adaptive-grid score update (see the module docstring) for every grid's bucket of every kept sample."""
        dev, M, n, g = self.device, self.n_grids, self.n_buckets, self.gamma
        slots, valid = self._bucket_entries(cells, buckets)  # [M, B, Q]
        unit = (flat_values.float() / norms.clamp_min(1e-12)[:, None]).to(self.storage.pool_values.dtype)
        cos = torch.stack(
            [
                torch.stack([(self.storage.pool_values[slots[m, :, q]] * unit).float().sum(-1) for q in range(self.bucket_size)], -1)
                for m in range(M)
            ]
        ) / self.storage.pool_norms[slots].clamp_min(1e-12)
        n_valid = valid.sum(-1)
        mean_cos = (cos * valid).sum(-1) / n_valid.clamp_min(1)
        updating = (n_valid > 0) & mask  # [M, B]

        grid = torch.arange(M, device=dev)[:, None].expand_as(buckets)
        group = torch.where(updating, grid * (n + 1) + buckets, torch.full_like(buckets, M * (n + 1)))
        rank, count = _group_rank(group.reshape(-1))
        rank, count = rank.view_as(buckets), count.view_as(buckets)
        contribution = torch.where(updating, (1 - g) * g ** (count - 1 - rank).float() * mean_cos, torch.zeros_like(mean_cos))
        target = torch.where(updating, buckets, torch.full_like(buckets, n))  # the others add nothing, to scratch row n
        added = torch.zeros_like(self.storage.score).index_put_((grid, target), contribution, accumulate=True)
        n_updates = torch.zeros_like(self.storage.score).index_put_((grid, target), updating.float(), accumulate=True)
        self.storage.score.mul_(g**n_updates).add_(added)


class GridHashTable(HashTable):
    """A hash table over one fixed grid of cells (d_elev_deg, d_azim_deg, d_radius, d_t)."""

    def __init__(
        self,
        cell_size: Sequence[float] = (10.0, 10.0, 0.1, 10.0),
        n_buckets: int = 1024,
        bucket_size: int = 3,
        temperature: float = 1.0,
        device: str | torch.device | None = None,
        capacity: int | None = None,
        check_finite: bool = True,
        max_bytes: int | None = None,
        cuda_graphs: bool = False,
        backend: str = "auto",
    ):
        if not isinstance(cell_size, (list, tuple, torch.Tensor)) or len(cell_size) != 4:
            raise ValueError(f"cell_size must be (d_elev_deg, d_azim_deg, d_radius, d_t); got {cell_size!r}")
        super().__init__(
            [cell_size], n_buckets, bucket_size, temperature, 0.9, capacity, device, check_finite, max_bytes, cuda_graphs,
            backend,
        )


DEFAULT_ADAPTIVE_CELLS = ((10.0, 10.0, 0.1, 10.0), (20.0, 20.0, 0.15, 20.0), (30.0, 30.0, 0.2, 30.0))


class AdaptiveGridHashTable(HashTable):
    """The paper's adaptive grid (§4.3): M grids, every insert into all, queries read the best-scoring bucket."""

    def __init__(
        self,
        cell_sizes: Sequence[Sequence[float]] = DEFAULT_ADAPTIVE_CELLS,
        n_buckets: int = 1024,
        bucket_size: int = 3,
        temperature: float = 1.0,
        gamma: float = 0.9,
        device: str | torch.device | None = None,
        capacity: int | None = None,
        check_finite: bool = True,
        max_bytes: int | None = None,
        cuda_graphs: bool = False,
        backend: str = "auto",
    ):
        super().__init__(
            cell_sizes, n_buckets, bucket_size, temperature, gamma, capacity, device, check_finite, max_bytes, cuda_graphs,
            backend,
        )
