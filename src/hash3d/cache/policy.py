"""When a UNet request tries the cache: a fixed hash probability (the paper's η) or a cost-aware choice.

`FixedPolicy` tries a request with probability η (and never every `force_full_every`-th one).

`AutoPolicy` tries the cache only while trying pays. Per request shape it keeps the measured cost of the two arms,
"try" (query the table; answer hits from it, run and insert the misses) and "skip" (the plain UNet, no query and no
insert: what the request costs with the cache off), as the mean of the latest few measurements. Trying has to show
that it pays: a shape tries while trying measures cheaper than skipping by more than `margin`, and skips otherwise
(costs within the margin go to the plain call, so that a cached run is not slower than the same run with the cache
off). Around that:
- the first `warmup` requests of a shape try (the table fills, the graphs are captured);
- while trying, every `explore_every`-th request skips, so the cost of skipping stays known;
- while skipping, a burst of `probe_len` tries at the end of every probe period (`probe_every` requests) refreshes
  the table and the cost of trying, so a run that changes (annealed timesteps, a new resolution) can win the cache
  back; a burst that finds no sample in the table doubles the period (up to `probe_backoff` times `probe_every`), one
  that finds a sample restores it, so a run where nothing comes back pays fewer and fewer futile tries;
- it stops trying, whatever the times, when none of the latest `window` tried requests found a single sample in the
  table, and does not start trying on the times alone while none of the latest tries found one: such a try cannot
  save anything, and costs its query, its insert and a host read over the plain UNet call (a loss smaller than the
  times' noise, which would otherwise be paid for the whole run, and which the noise could make look like a gain).
A try of a shape whose latest tries found nothing is a quiet probe (`quiet_probes`): it queries and fills the table
like a try but answers from the plain UNet, and its hit count reaches the policy a few requests later, read without
stalling the host. It is not timed (what it costs says nothing about a try that reuses samples). Where nothing ever
comes back, the warm-up and the probe bursts are all quiet, and cost about what skipping costs.
The mean, not the median: a recurring dear try is part of what trying costs. One-off costs are not: the cache does
not report a request during which a CUDA graph was captured or a new batch shape ran its first eager call
(`hash3d.diffusion.request_timer`); paid once, they say nothing about the next request, and counted, they drove the
policy to stop trying right after the captures that make trying cheap. The first `discard` measurements of each arm
and shape are dropped too (eager first calls of the guidance around the cache).

Decisions depend only on the state here and the costs it is given, so they are tested with made-up costs; the cache
feeds it GPU times measured by CUDA events (`hash3d.diffusion.request_timer`).
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import CachePolicyConfig

ARMS = ("try", "skip")


class FixedPolicy:
    """Try with probability η; every `force_full_every`-th request never tries."""

    measures = False

    def __init__(self, config: CachePolicyConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.calls = 0

    def decide(self, shape: tuple) -> bool:
        self.calls += 1
        policy = self.config
        if policy.force_full_every and self.calls % policy.force_full_every == 0:
            return False
        return policy.probability >= 1.0 or self.rng.random() < policy.probability

    def quiet(self, shape: tuple) -> bool:
        """Every try of the fixed policy answers from the table."""
        return False

    def observe(self, shape: tuple, tried: bool, ms: float) -> None:
        """Fixed decisions take no costs."""

    def observe_hits(self, shape: tuple, hits: int) -> None:
        """Nor hit counts."""

    def state_dict(self) -> dict[str, Any]:
        return {"policy_rng": self.rng.getstate(), "calls": self.calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["policy_rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.calls = int(state["calls"])

    def stats(self) -> dict[str, Any]:
        return {}


@dataclass
class _ShapeState:
    requests: int = 0
    arm: str = "try"
    since_probe: int = 0
    period: int = 0
    """The current probe period while skipping (0: not set yet, `probe_every`)."""
    burst_hits: int = 0
    """Samples found by the tries of the current probe period."""
    seen: dict[str, int] = field(default_factory=lambda: {arm: 0 for arm in ARMS})
    costs: dict[str, deque] = field(default_factory=dict)
    hits: deque = field(default_factory=deque)
    """Samples found in the table by each of the latest tried requests."""
    switches: int = 0


class AutoPolicy:
    """Cost-aware: follow the arm (try / skip) with the lower measured cost (see the module docstring)."""

    measures = True

    def __init__(self, config: CachePolicyConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.shapes: dict[tuple, _ShapeState] = {}

    def _state(self, shape: tuple) -> _ShapeState:
        s = self.shapes.get(shape)
        if s is None:
            window = self.config.auto.window
            s = self.shapes[shape] = _ShapeState(costs={arm: deque(maxlen=window) for arm in ARMS},
                                                 hits=deque(maxlen=window))
        return s

    def decide(self, shape: tuple) -> bool:
        auto = self.config.auto
        self.calls += 1
        s = self._state(shape)
        s.requests += 1
        if s.requests <= auto.warmup:
            return True
        if s.arm == "try":
            return auto.explore_every == 0 or s.requests % auto.explore_every != 0
        period = s.period or auto.probe_every
        s.since_probe += 1  # the burst closes each period, so a switch to skipping is not followed by tries at once
        if s.since_probe == period:  # the period's burst is over: it sets the next period
            base = auto.probe_every
            s.period = base if s.burst_hits else min(2 * period, base * auto.probe_backoff)
            s.since_probe, s.burst_hits = 0, 0
            return False
        return s.since_probe >= period - auto.probe_len

    def quiet(self, shape: tuple) -> bool:
        """Whether a try of `shape` (a `decide` that said yes) runs as a quiet probe: none of the shape's latest tries
        found a sample in the table (`AutoPolicyConfig.quiet_probes`)."""
        return self.config.auto.quiet_probes and not any(self._state(shape).hits)

    def observe(self, shape: tuple, tried: bool, ms: float) -> None:
        """One measured request cost (ms) of `shape`, tried or not; may switch that shape's arm."""
        auto = self.config.auto
        s = self._state(shape)
        arm = "try" if tried else "skip"
        s.seen[arm] += 1
        if s.seen[arm] <= auto.discard:
            return
        s.costs[arm].append(float(ms))
        if any(len(s.costs[a]) < auto.min_samples for a in ARMS):
            return
        pays = self.cost(shape, "try") < self.cost(shape, "skip") * (1.0 - auto.margin)
        if pays and s.arm == "skip" and not any(s.hits):
            return  # cheaper on the clock, but the latest tries found nothing to reuse: the times' noise
        if pays != (s.arm == "try"):
            self._switch(s)

    def observe_hits(self, shape: tuple, hits: int) -> None:
        """The number of samples a tried request of `shape` found in the table; may stop that shape's tries."""
        s = self._state(shape)
        s.hits.append(int(hits))
        if s.arm == "skip":
            s.burst_hits += int(hits)
        elif len(s.hits) == s.hits.maxlen and not any(s.hits):
            self._switch(s)

    def _switch(self, s: _ShapeState) -> None:
        s.arm = "skip" if s.arm == "try" else "try"
        s.since_probe, s.period, s.burst_hits = 0, 0, 0
        s.hits.clear()
        s.switches += 1

    def cost(self, shape: tuple, arm: str) -> float | None:
        """The arm's mean measured cost over the window (None before any measurement)."""
        costs = self._state(shape).costs[arm]
        return statistics.fmean(costs) if costs else None

    def arm(self, shape: tuple) -> str:
        return self._state(shape).arm

    def state_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "shapes": [
                {"shape": list(shape), "requests": s.requests, "arm": s.arm, "since_probe": s.since_probe,
                 "period": s.period, "burst_hits": s.burst_hits, "seen": dict(s.seen), "costs": {a: list(c) for a, c in s.costs.items()}, "hits": list(s.hits),
                 "switches": s.switches}
                for shape, s in self.shapes.items()
            ],
        }  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        self.calls = int(state["calls"])
        for item in state["shapes"]:
            s = self._state(tuple(item["shape"]))
            s.requests, s.arm, s.since_probe = int(item["requests"]), str(item["arm"]), int(item["since_probe"])
            s.period, s.burst_hits = int(item.get("period", 0)), int(item.get("burst_hits", 0))
            s.seen = {a: int(n) for a, n in item["seen"].items()}
            for a, values in item["costs"].items():
                s.costs[a].extend(float(v) for v in values)
            s.hits.extend(int(n) for n in item.get("hits", ()))
            s.switches = int(item["switches"])

    def stats(self) -> dict[str, Any]:
        """Whether the most recent shape tries (1) or skips (0), its mean costs, and the number of switches over all shapes."""
        if not self.shapes:
            return {"policy_trying": 1.0, "policy_switches": 0}
        shape = next(reversed(self.shapes))
        out: dict[str, Any] = {"policy_trying": float(self.arm(shape) == "try"),
                               "policy_switches": sum(s.switches for s in self.shapes.values())}
        for a in ARMS:
            m = self.cost(shape, a)
            if m is not None:
                out[f"policy_{a}_ms"] = m
        return out


def build_policy(config: CachePolicyConfig) -> FixedPolicy | AutoPolicy:
    return AutoPolicy(config) if config.strategy == "auto" else FixedPolicy(config)
