"""Hash3D cache attached to a stock diffusers `UNet2DConditionModel` through `diffusers.hooks`.

The UNet's code is never copied or changed: `apply_hash_cache(unet, config)` registers named hooks and returns a
`UNetCache` handle; `remove_hash_cache(unet)` (or `handle.remove()`) takes them off again, after which the UNet
gives exactly its original output.

Callers say what a UNet call is about by opening a request around it:

    with cache.request(keys, latents):           # keys [B, 4] (elev °, azim °, radius, t), latents [B, ...] = x_t
        out = unet(x_in, t_in, encoder_hidden_states=ctx).sample

The UNet batch may be a multiple of B (classifier-free guidance stacks [cond(B); uncond(B)]): sample i of every
such group belongs to key i, and one cache entry stores all groups. Calls outside a request run the plain UNet.

Per request the policy decides whether to try the cache (`hash3d.cache.policy`: probability η, or cost-aware).
Keys that hit are answered from the cache; the rest run the full UNet and are inserted. A request that does not try
still inserts under the fixed policy (η only says how often to look), and runs the plain UNet under the cost-aware
one (its "skip" arm costs what the cache-off call costs); that policy's quiet probes query and insert like a try but
answer with the plain UNet, and their hit counts are read back later. Modes:
- `noise`: a hit returns the blended stored UNet output; the UNet does not run for it.
- `features`: a hit runs only the first `depth` down blocks and the last `depth` up blocks, with the blended stored
  input of up block `-depth` in place of the deep path (DeepCache-style; the paper's cache point is depth 1).
Hit/miss decisions, blending and inserts are tensor code on the UNet's device. The only host read per tried call is
the number of hits, which picks among the three paths (all hit / all miss / split batch).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from ..cache.config import CacheConfig
from ..cache.policy import build_policy
from ..cache.table import RESTORE_FIX, HashTable
from ..cuda_graphs import GraphedFunction, count_captured, count_one_offs, cuda_graphs_available
from .cache_graph import bucket_for, from_entries, key_rows, to_entries
from .deferred_count import DeferredCounts
from .request_timer import RequestTimer

NONFINITE_KEYS = "cache keys contain NaN or inf: check the cameras (elevation, azimuth, distance) and timesteps"

_UNET_HOOK = "hash3d_cache"
_SKIP_HOOK = "hash3d_cache_skip"
_FEATURE_HOOK = "hash3d_cache_feature"


@dataclass
class _Request:
    keys: torch.Tensor
    latents: torch.Tensor
    finite: torch.Tensor | None = None
    """[B] bool on a GPU table: keys checked without a host read; non-finite ones never hit and are never stored."""
    tried: bool | None = None
    """The policy's decision when the caller already asked it (`UNetCache.try_now`); None: ask at the UNet call."""
    query: tuple[torch.Tensor, torch.Tensor] | None = None
    """(values, hit) when the caller already queried the table for this request (`UNetCache.query_core`)."""


class _CacheState:
    """Everything the hooks share for one UNet; reset at the start of every run."""

    def __init__(self, config: CacheConfig, table: HashTable, cuda_graphs: bool = False):
        self.config = config
        self.table = table
        # one GraphedFunction per phase when UNet calls are replayed as CUDA graphs
        self.graphs: dict[str, GraphedFunction] | None = {} if cuda_graphs else None
        self.request: _Request | None = None
        # captured-graph counts of callers that graph whole steps around this cache (guidance.hit_step)
        self.graph_sources: list[Callable[[], int]] = []
        # non-finite keys seen by a GPU table (counted on the device: no host read per request)
        self.nonfinite = torch.zeros((), dtype=torch.int64, device=table.device)
        self.policy = build_policy(config.policy)
        # the cost-aware policy reads GPU times; without a CUDA device it has none and tries every request
        self.timer = RequestTimer() if self.policy.measures and table.device.type == "cuda" else None
        # hit counts of quiet probes, read back once the GPU has got there (only where there is a timer)
        self.probe_hits = DeferredCounts() if self.timer is not None else None
        # output structure of the skipped blocks; survives resets, since a replayed CUDA graph of a full pass does
        # not run the Python hooks that record it
        self.block_outputs: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        self.table.reset()
        self.policy.reset()
        if self.timer is not None:
            self.timer.clear()
        if self.probe_hits is not None:
            self.probe_hits.clear()
        self.last_one_offs = -1
        self.quiet = False
        """The latest decision was a quiet probe (read by the request that follows it)."""
        self.tried = 0
        self.skipped = 0
        self.probed = 0
        # tried requests whose every sample hit (no UNet pass at all in noise mode) and those split between hits and
        # misses (a pass over the misses still runs): what a request saves depends on which it was
        self.answered = 0
        self.split = 0
        self.full_samples = 0
        self.cached_samples = 0
        self.phase = "full"  # "full": run blocks; "record": run and keep the deep feature; "reuse": cached feature
        self.deep: torch.Tensor | None = None
        self.last_hits: torch.Tensor | None = None
        self.nonfinite.zero_()

    def state_dict(self) -> dict[str, Any]:
        """The policy's random stream and counters; with `config.save_in_checkpoint`, the table too."""
        with_table = self.config.save_in_checkpoint
        return {
            "mode": self.config.mode,
            "depth": self.config.depth,
            **self.policy.state_dict(),
            "strategy": self.config.policy.strategy,
            "tried": self.tried,
            "skipped": self.skipped,
            "probed": self.probed,
            "answered": self.answered,
            "split": self.split,
            "full_samples": self.full_samples,
            "cached_samples": self.cached_samples,
            "table": self.table.state_dict() if with_table else None,
            "block_outputs": {k: _spec_to_data(v) for k, v in self.block_outputs.items()} if with_table else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`. The table is restored only when both the saved state holds one and
        `config.save_in_checkpoint` is on; otherwise the run goes on with an empty table."""
        table = state.get("table") if self.config.save_in_checkpoint else None
        if table is not None:
            self._check_fits(state, table)
        self.reset()
        if state.get("strategy", "fixed") == self.config.policy.strategy:
            self.policy.load_state_dict(state)
        for name in ("tried", "full_samples", "cached_samples"):
            setattr(self, name, int(state[name]))
        self.skipped = int(state.get("skipped", 0))
        self.probed = int(state.get("probed", 0))
        self.answered, self.split = int(state.get("answered", 0)), int(state.get("split", 0))
        if table is not None:
            self.table.load_state_dict(table)
            device = self.table.device
            self.block_outputs.update({k: _spec_from_data(v, device) for k, v in state["block_outputs"].items()})

    def _check_fits(self, state: Mapping[str, Any], table: Mapping[str, Any]) -> None:
        mismatches = [
            f"{name}: {state.get(name)!r} saved, {getattr(self.config, name)!r} now"
            for name in ("mode", "depth")
            if state.get(name) != getattr(self.config, name)
        ]
        mismatches += self.table.layout_mismatches(table)
        if mismatches:
            raise ValueError(f"the saved Hash3D cache does not fit this cache ({'; '.join(mismatches)}): {RESTORE_FIX}")

    @property
    def calls(self) -> int:
        return self.policy.calls

    def should_try(self, shape: tuple) -> bool:
        """The policy's decision for the next request (latents of `shape`): True to try the cache. A try the policy
        wants quiet returns False and sets `quiet`. A measuring policy's timer marks the request."""
        self.quiet = False
        if self.policy.measures and self.timer is None:
            self.policy.calls += 1
            return True
        if self.probe_hits is not None:
            for probed_shape, hits in self.probe_hits.ready():
                self.policy.observe_hits(probed_shape, hits)
        tried = self.policy.decide(shape)
        if tried and self.probe_hits is not None and self.policy.quiet(shape):
            tried, self.quiet = False, True
        if self.timer is not None:
            for done_shape, done_tried, ms in self.timer.ready():
                self.policy.observe(done_shape, done_tried, ms)
            one_offs = self.one_offs()
            self.timer.mark(shape, tried, previous_one_off=one_offs != self.last_one_offs, measured=not self.quiet)
            self.last_one_offs = one_offs
        return tried

    def probed_hits(self, shape: tuple, hit: torch.Tensor) -> None:
        """A quiet probe of `shape` found the samples marked in `hit`: the policy hears of it once the GPU is there."""
        self.probe_hits.push(shape, hit.sum())

    def found(self, shape: tuple, hits: int) -> None:
        """A tried request of `shape` found `hits` samples in the table: a measuring policy hears of it (GPU timer
        only, like its costs)."""
        if self.timer is not None:
            self.policy.observe_hits(shape, hits)

    def one_offs(self) -> int:
        """Grows whenever the cache (or a caller graphing whole steps around it) paid a one-off cost: a CUDA graph
        captured, a new shape's first eager call."""
        return (count_one_offs((self.graphs or {}).values()) + self.table.graphs_captured
                + sum(source() for source in self.graph_sources))


def _take(obj: Any, index: torch.Tensor, batch: int) -> Any:
    """Select rows `index` of every tensor in obj whose leading dimension is the UNet batch `batch`."""
    if isinstance(obj, torch.Tensor):
        return obj.index_select(0, index.to(obj.device)) if obj.ndim > 0 and obj.shape[0] == batch else obj
    if isinstance(obj, dict):
        return {k: _take(v, index, batch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_take(v, index, batch) for v in obj)
    return obj


def _pad_rows(t: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """Repeat the first row of a tensor whose leading dimension is the batch n until it has `size` rows."""
    if size == n or t.ndim == 0 or t.shape[0] != n:
        return t
    return torch.cat([t, t[:1].expand((size - n,) + t.shape[1:])])


def _misses(hit: torch.Tensor, finite: torch.Tensor | None) -> torch.Tensor:
    """The keys to insert after a lookup: those that missed, less any that are not finite."""
    return ~hit if finite is None else ~hit & finite


def _extra(kwargs: dict) -> dict:
    """Keyword arguments of a UNet call besides return_dict (a call with any is never replayed as a graph)."""
    return {k: v for k, v in kwargs.items() if k != "return_dict"}


def _all_tensors(args: tuple) -> bool:
    return all(isinstance(a, torch.Tensor) for a in args)


class _UNetHook(ModelHook):
    """Replaces the UNet's forward: policy, query, then full / cached / split execution and inserts."""

    def __init__(self, state: _CacheState):
        super().__init__()
        self.state = state

    def new_forward(self, module: torch.nn.Module, sample: torch.Tensor, timestep, encoder_hidden_states, *args, **kwargs):
        st = self.state
        forward = self.fn_ref.original_forward
        req = st.request
        if req is None:
            return forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        n_keys, batch = req.keys.shape[0], sample.shape[0]
        if n_keys == 0 or batch % n_keys:
            raise ValueError(
                f"UNet batch {batch} is not a multiple of the {n_keys} cache keys of this request; "
                "pass one key per sample (CFG halves share their key)"
            )
        groups = batch // n_keys
        call = (sample, timestep, encoder_hidden_states) + args

        out = self._answer(forward, call, kwargs, req, n_keys, groups, batch)
        return UNet2DConditionOutput(sample=out) if kwargs.get("return_dict", True) else (out,)

    def _answer(self, forward, call: tuple, kwargs: dict, req: _Request, n_keys: int, groups: int, batch: int):
        st = self.state
        values, hit = None, None
        tried = st.should_try(tuple(req.latents.shape)) if req.tried is None else req.tried
        quiet, st.quiet = st.quiet, False
        if quiet and not tried:
            return self._probe(forward, call, kwargs, req, n_keys, groups, batch)
        if tried:
            st.tried += 1
            values, hit = self._lookup(req)
            st.last_hits = hit
        elif st.policy.measures:  # the cost-aware policy's skip arm: the cache-off call, nothing stored
            st.skipped += 1
            st.full_samples += n_keys
            return self._execute(forward, "full", call, kwargs, batch)[0]
        n_hits = 0 if values is None else int(hit.sum())  # the one host read of a tried call
        st.found(tuple(req.latents.shape), n_hits)
        if n_hits == 0:
            out, stored = self._full(forward, call, kwargs, batch)
            self._store(req, stored, groups, req.finite)
            st.full_samples += n_keys
        elif n_hits == n_keys:
            out = self._cached(forward, call, kwargs, values, groups, batch)
            st.cached_samples += n_keys
            st.answered += 1
        else:
            st.split += 1
            # misses then hits, each in index order, without another host read
            order = torch.argsort(hit.to(torch.int8), stable=True)
            misses, hits = order[: n_keys - n_hits], order[n_keys - n_hits :]
            miss_rows, hit_rows = key_rows(misses, n_keys, groups), key_rows(hits, n_keys, groups)
            full_out, miss_stored = self._full(forward, _take(call, miss_rows, batch), _take(kwargs, miss_rows, batch), batch)
            cached_out = self._cached(
                forward, _take(call, hit_rows, batch), _take(kwargs, hit_rows, batch), values[hits], groups, batch
            )
            out = full_out.new_empty((batch,) + full_out.shape[1:])
            out[miss_rows] = full_out
            out[hit_rows] = cached_out.to(out.dtype)
            if st.config.mode == "noise":  # what is stored is the output itself
                stored = out
            else:
                stored = miss_stored.new_zeros((batch,) + miss_stored.shape[1:])
                stored[miss_rows] = miss_stored
            # the whole request with its hits masked out: one insert shape per request shape, whatever the split
            self._store(req, stored, groups, _misses(hit, req.finite))
            st.cached_samples += n_hits
            st.full_samples += n_keys - n_hits
        return out

    def _probe(self, forward, call: tuple, kwargs: dict, req: _Request, n_keys: int, groups: int, batch: int):
        """A quiet probe: query, run the whole UNet, insert the misses as a try would; answer with the UNet's output
        and hand the hit count over without reading it."""
        st = self.state
        st.probed += 1
        _, hit = self._lookup(req)
        st.probed_hits(tuple(req.latents.shape), hit)
        out, stored = self._full(forward, call, kwargs, batch)
        self._store(req, stored, groups, _misses(hit, req.finite))
        st.full_samples += n_keys
        return out

    def _lookup(self, req: _Request) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, hit) of the request's keys: the caller's query if it made one, else the table's; a key that is
        not finite never hits."""
        values, hit = req.query if req.query is not None else self.state.table.query(req.keys, req.latents)
        return values, (hit if req.finite is None else hit & req.finite)

    def phase_runner(self, forward, n_call: int, extra: dict):
        """(phase, call tensors, deep feature for "reuse") -> (UNet output, recorded deep feature or None)."""
        st = self.state

        def run(phase: str, tensors: tuple, deep: torch.Tensor | None):
            st.phase = phase
            if phase == "reuse":
                st.deep = deep
            try:
                out = forward(*tensors[:n_call], **extra, return_dict=False)[0]
                return out, (st.deep if phase == "record" else None)
            finally:
                st.phase, st.deep = "full", None

        return run

    def _execute(self, forward, phase: str, call: tuple, kwargs: dict, rows: int, deep: torch.Tensor | None = None):
        """Run the UNet with the block hooks in `phase` -> (output, recorded deep feature or None). rows: the UNet
        batch of the whole request (of which this call may be a part).

        With CUDA graphs on, a plain call (tensors only, no extra keyword arguments) replays a graph per phase
        and batch shape.
        """
        st = self.state
        extra = _extra(kwargs)
        n_call = len(call)
        runner = self.phase_runner(forward, n_call, extra)

        def run(*tensors):
            return runner(phase, tensors[:n_call], tensors[n_call] if phase == "reuse" else None)

        args = tuple(call) + ((deep,) if phase == "reuse" else ())
        if st.graphs is not None and not extra and _all_tensors(args):
            if phase not in st.graphs:
                # a split-batch size may come up only once in a run: capture a shape at its second call
                st.graphs[phase] = GraphedFunction(run, warmup=1, capture_after=2)
            # split batches come in every size from 1 to B: pad to a power of two (at most B) so a handful of graphs
            # serve them all (a launch-bound UNet pass costs about the same for a few more rows), and to at least
            # the rows that hold `split_min_latent_pixels`: below that a pass costs about as much as the floor, and
            # each new size costs its first eager call's set-up and a capture
            n = call[0].shape[0]
            pixels = math.prod(call[0].shape[2:])
            size = bucket_for(n, rows, -(-st.config.split_min_latent_pixels // max(pixels, 1)))
            out, recorded = st.graphs[phase](*(_pad_rows(a, n, size) for a in args))
            return out[:n], (None if recorded is None else recorded[:n])
        return run(*args)

    def _full(self, forward, call, kwargs, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the whole UNet -> (output, what the mode stores: the output itself or the deep feature)."""
        features = self.state.config.mode == "features"
        out, deep = self._execute(forward, "record" if features else "full", call, kwargs, rows)
        return out, (deep if features else out)

    def _store(self, req: _Request, stored: torch.Tensor, groups: int, mask: torch.Tensor | None) -> None:
        """Insert a request's stored rows [groups * B, ...] under its keys: only the keys marked in mask, when given."""
        self.state.table.insert(req.keys, req.latents, to_entries(stored.detach(), groups), mask=mask)

    def _cached(self, forward, call, kwargs, values, groups, rows: int) -> torch.Tensor:
        """Answer from cached values [b, groups, ...]: directly (noise) or through the shallow blocks (features)."""
        if self.state.config.mode == "noise":
            return from_entries(values)
        return self._execute(forward, "reuse", call, kwargs, rows, from_entries(values))[0]


class _TensorSpec(NamedTuple):
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


def _describe(out: Any) -> Any:
    """The structure of a block's output with each tensor replaced by its spec."""
    if isinstance(out, torch.Tensor):
        return _TensorSpec(out.shape, out.dtype, out.device)
    if isinstance(out, (list, tuple)):
        return type(out)(_describe(v) for v in out)
    return out


def _spec_to_data(spec: Any) -> Any:
    """A `_describe` structure as plain data (what a weights-only checkpoint can hold)."""
    if isinstance(spec, _TensorSpec):
        return {"shape": list(spec.shape), "dtype": str(spec.dtype).removeprefix("torch.")}
    if isinstance(spec, (list, tuple)):
        return {"items": [_spec_to_data(v) for v in spec], "tuple": isinstance(spec, tuple)}
    return spec


def _spec_from_data(data: Any, device: torch.device) -> Any:
    if isinstance(data, dict) and "shape" in data:
        return _TensorSpec(torch.Size(data["shape"]), getattr(torch, data["dtype"]), device)
    if isinstance(data, dict) and "items" in data:
        items = [_spec_from_data(v, device) for v in data["items"]]
        return tuple(items) if data["tuple"] else items
    return data


def _placeholder(spec: Any, batch: int) -> Any:
    """Uninitialised tensors with a spec's structure and shapes (batch replaced); the UNet never reads them."""
    if isinstance(spec, _TensorSpec):
        return torch.empty((batch,) + tuple(spec.shape[1:]), dtype=spec.dtype, device=spec.device)
    if isinstance(spec, (list, tuple)):
        return type(spec)(_placeholder(v, batch) for v in spec)
    return spec


class _SkipBlockHook(ModelHook):
    """On a deep block: when reusing, return empty tensors of the recorded output structure instead of running."""

    def __init__(self, state: _CacheState, name: str):
        super().__init__()
        self.state, self.name = state, name

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        st = self.state
        if st.phase == "reuse":
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if self.name not in st.block_outputs:
                raise RuntimeError(f"hash3d cache: no recorded output structure for {self.name}; a full call must come first")
            return _placeholder(st.block_outputs[self.name], hidden.shape[0])
        out = self.fn_ref.original_forward(*args, **kwargs)
        if st.phase == "record":
            st.block_outputs[self.name] = _describe(out)
        return out


class _DeepFeatureHook(ModelHook):
    """On the first shallow up block: record its input on a full call, swap in the cached one on a hit."""

    def __init__(self, state: _CacheState):
        super().__init__()
        self.state = state

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        st = self.state
        if st.phase == "full":
            return args, kwargs
        if "hidden_states" in kwargs:
            current = kwargs["hidden_states"]
        else:
            current = args[0]
        if st.phase == "record":
            st.deep = current.detach().clone()
            return args, kwargs
        deep = st.deep.to(current.dtype)
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": deep}
        else:
            args = (deep,) + tuple(args[1:])
        return args, kwargs


class UNetCache:
    """Handle of a Hash3D cache attached to a UNet (made by `apply_hash_cache`)."""

    def __init__(self, unet: torch.nn.Module, state: _CacheState):
        self.unet = unet
        self._state = state

    @property
    def config(self) -> CacheConfig:
        return self._state.config

    @property
    def table(self) -> HashTable:
        return self._state.table

    @contextlib.contextmanager
    def request(
        self,
        keys: torch.Tensor,
        latents: torch.Tensor,
        tried: bool | None = None,
        query: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> Iterator[None]:
        """Key the UNet calls inside this block: keys [B, 4] and the noisy latents x_t [B, ...] they run on.

        tried: the policy's decision if the caller already took it (`try_now`); query: (values, hit, finite) if the
        caller already queried the table (`query_core`), so that the UNet call neither asks nor queries again.
        """
        if keys.ndim != 2 or keys.shape[1] != 4:
            raise ValueError(f"keys must be [B, 4] (elevation, azimuth, radius, timestep); got {list(keys.shape)}")
        if latents.shape[0] != keys.shape[0]:
            raise ValueError(f"latents batch {latents.shape[0]} must equal the number of keys {keys.shape[0]}")
        finite = None if query is None else query[2]
        if self.config.check_keys and query is None:
            if self._state.table.device.type == "cuda":
                # no host read on a GPU: such keys never hit and are never stored, and `stats` raises about them
                finite = torch.isfinite(keys).all(-1).to(self._state.table.device)
                self._state.nonfinite += (~finite).sum()
            elif not bool(torch.isfinite(keys).all()):
                raise ValueError(NONFINITE_KEYS)
        previous = self._state.request
        self._state.request = _Request(
            keys.detach().float(), latents.detach(), finite, tried, None if query is None else (query[0], query[1])
        )
        self._state.last_hits = None
        try:
            yield
        finally:
            self._state.request = previous

    def reset(self) -> None:
        """Forget all entries and counters (call at the start of every run, prompt or input image)."""
        self._state.reset()

    # ---------------------------------------------------------------- for callers that graph their whole step
    def try_now(self, latents: torch.Tensor) -> bool:
        """Ask the policy whether the next request, on latents like these, tries the cache (pass the answer to
        `request(tried=...)`; when every sample hit without a UNet call, close it with `record_hits`)."""
        return self._state.should_try(tuple(latents.shape))

    def ready_to_query(self, latents: torch.Tensor) -> bool:
        """Whether `query_core` can run now on latents of this shape (the table holds entries of that shape)."""
        table = self._state.table
        if not table.allocated:
            return False
        table.check_latents(latents)
        return True

    def query_core(self, keys: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The table query of one request as capturable tensor code: (values [B, G, ...], hit [B], finite [B]).

        Non-finite keys never hit (and with `check_keys` are counted for `stats` to report). Call only when
        `ready_to_query`; follow with `request(keys, latents, tried=True, query=...)` or `record_hits`."""
        finite = torch.isfinite(keys).all(-1)
        if self.config.check_keys:
            self._state.nonfinite += (~finite).sum()
        values, hit = self._state.table.query_core(torch.where(finite[:, None], keys, torch.zeros_like(keys)), latents)
        return values, hit & finite, finite

    def cached_output(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The UNet output of a request whose samples all hit, as capturable tensor code: the stored outputs (noise)
        or the shallow blocks on the stored deep features (features)."""
        if self.config.mode == "noise":
            return from_entries(values)
        hook = HookRegistry.check_if_exists_or_initialize(self.unet).get_hook(_UNET_HOOK)
        run = hook.phase_runner(hook.fn_ref.original_forward, 3, {})
        return run("reuse", (sample, timestep, context), from_entries(values))[0]

    def add_graph_count(self, source: Callable[[], int]) -> None:
        """Count the CUDA graphs a caller that graphs whole steps around this cache has captured (in `stats`)."""
        self._state.graph_sources.append(source)

    def record_hits(self, hit: torch.Tensor, latents: torch.Tensor) -> None:
        """Count a tried request on `latents` that `cached_output` answered in full (the caller saw every sample hit)."""
        st = self._state
        st.found(tuple(latents.shape), hit.shape[0])
        st.tried += 1
        st.answered += 1
        st.cached_samples += hit.shape[0]
        st.last_hits = hit

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly: the policy's random stream and counters, and (with
        `config.save_in_checkpoint`, the default) the table's entries, indices, scores and counters, on the CPU."""
        return self._state.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`; ValueError when its mode, depth or table layout differ from this cache's.
        With `config.save_in_checkpoint` off only the policy's stream and counters are restored (empty table)."""
        self._state.load_state_dict(state)

    @property
    def last_hits(self) -> torch.Tensor | None:
        """Hit mask [B] of the latest request's UNet call (None when it did not try the cache)."""
        return self._state.last_hits

    @property
    def stats(self) -> dict[str, float]:
        """Table statistics plus UNet work: samples run in full, samples answered from the cache, requests the
        cost-aware policy skipped or ran as quiet probes (`probed`: their queries count in the table's statistics,
        their hits were not used), and that policy's current arm and mean costs (`policy_*`)."""
        st = self._state
        nonfinite = int(st.nonfinite)
        if nonfinite:
            raise ValueError(f"{NONFINITE_KEYS} ({nonfinite} keys since the last reset; those calls ran the full UNet "
                             "and nothing was stored for them)")
        out = st.table.stats.as_dict()
        out.update(
            calls=st.calls,
            tried=st.tried,
            skipped=st.skipped,
            probed=st.probed,
            answered_requests=st.answered,
            split_requests=st.split,
            full_samples=st.full_samples,
            cached_samples=st.cached_samples,
            unet_calls_saved=st.cached_samples,
            # each new batch shape of a phase is captured once (a UNet capture costs a few eager passes): short runs
            # with many split-batch sizes pay for them in the step time
            graphs_captured=count_captured((st.graphs or {}).values()) + st.table.graphs_captured
            + sum(source() for source in st.graph_sources),
            **st.policy.stats(),
        )
        return out

    def remove(self) -> None:
        remove_hash_cache(self.unet)


def _deep_blocks(unet: torch.nn.Module, depth: int) -> dict[str, torch.nn.Module]:
    n_up = len(unet.up_blocks)
    if not 1 <= depth < n_up:
        raise ValueError(f"cache.depth must be in [1, {n_up - 1}] for a UNet with {n_up} up blocks; got {depth}")
    blocks = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks) if i >= depth}
    if unet.mid_block is not None:
        blocks["mid_block"] = unet.mid_block
    blocks.update({f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks) if i < n_up - depth})
    return blocks


def apply_hash_cache(
    unet: torch.nn.Module, config: CacheConfig, device: str | torch.device | None = None, cuda_graphs: bool = False
) -> UNetCache:
    """Attach a Hash3D cache to a stock `UNet2DConditionModel`; returns its handle. Noise mode also takes any
    module called as `unet(sample, timestep, encoder_hidden_states, *tensors, return_dict=...)` (the multi-view UNets).

    cuda_graphs: replay the UNet's full and shallow passes as CUDA graphs (CUDA devices only).
    """
    if config.mode == "features" and (not hasattr(unet, "up_blocks") or not hasattr(unet, "down_blocks")):
        raise TypeError(
            f"cache.mode 'features' needs a diffusers UNet2DConditionModel (down and up blocks); got "
            f"{type(unet).__name__}: use cache.mode noise"
        )
    registry = HookRegistry.check_if_exists_or_initialize(unet)
    if registry.get_hook(_UNET_HOOK) is not None:
        raise RuntimeError("a Hash3D cache is already attached to this UNet; remove it first (remove_hash_cache)")
    if device is None:
        device = next(unet.parameters()).device
    # keys are checked once per request (UNetCache.request), not again inside every table call
    device = torch.device(device)
    graphs = cuda_graphs and cuda_graphs_available(device)
    state = _CacheState(config, config.build_table(device, check_finite=False, cuda_graphs=graphs), graphs)
    if config.mode == "features":
        for name, block in _deep_blocks(unet, config.depth).items():
            HookRegistry.check_if_exists_or_initialize(block).register_hook(_SkipBlockHook(state, name), _SKIP_HOOK)
        first_shallow_up = unet.up_blocks[len(unet.up_blocks) - config.depth]
        HookRegistry.check_if_exists_or_initialize(first_shallow_up).register_hook(_DeepFeatureHook(state), _FEATURE_HOOK)
    registry.register_hook(_UNetHook(state), _UNET_HOOK)
    registry.invalidate_child_registries_cache()
    return UNetCache(unet, state)


def remove_hash_cache(unet: torch.nn.Module) -> None:
    """Take every Hash3D hook off the UNet; afterwards it computes exactly what it did before."""
    registry = getattr(unet, "_diffusers_hook", None)
    if registry is None:
        return
    for name in (_UNET_HOOK, _SKIP_HOOK, _FEATURE_HOOK):
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()


def get_hash_cache(unet: torch.nn.Module) -> UNetCache | None:
    """The handle of the cache attached to `unet`, if any."""
    registry = getattr(unet, "_diffusers_hook", None)
    hook = registry.get_hook(_UNET_HOOK) if registry is not None else None
    return UNetCache(unet, hook.state) if hook is not None else None
