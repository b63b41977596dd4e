"""How each key of a foreign config file was read: the record `--explain` prints and the start-up notice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError

Verdict = Literal["as is", "mapped", "default", "no effect", "refused"]


@dataclass
class Reading:
    key: str
    """Full key path in the file as written (e.g. 'system.guidance.cache_p')."""
    verdict: Verdict
    detail: str = ""
    """What it became ('-> system.guidance.cache.policy.probability = 0.1'), why it changes nothing, or the fix."""
    ours: bool = False
    """A key of ours that a system does not use: listed for foreign files, and no sign of a foreign file itself."""


@dataclass
class Report:
    """Every reading of one file, in the order they were made. A refused key does not stop the walk, so `--explain`
    lists all of them; `raise_refusals()` turns them into one ConfigError afterwards."""

    dialect: str = "hash3d"
    """'hash3d' (this project's own layout) or the foreign layout recognised, e.g. 'threestudio'."""
    readings: list[Reading] = field(default_factory=list)

    def add(self, key: str, verdict: Verdict, detail: str = "") -> None:
        self.readings.append(Reading(key, verdict, detail))

    def of(self, verdict: Verdict) -> list[Reading]:
        return [r for r in self.readings if r.verdict == verdict]

    @property
    def foreign(self) -> bool:
        return any(r.verdict != "as is" and not r.ours for r in self.readings)

    def no_effect_line(self) -> str | None:
        """One line naming the keys accepted with no effect here, or None when there are none."""
        foreign = self.foreign
        keys = [r.key for r in self.of("no effect") if foreign or not r.ours]
        return f"accepted, no effect here: {', '.join(keys)}" if keys else None

    def raise_refusals(self) -> None:
        refused = self.of("refused")
        if not refused:
            return
        lines = [r.detail if r.detail.startswith("unknown config key") else f"'{r.key}': {r.detail}" for r in refused]
        more = f" (and {len(lines) - 1} more: run with --explain to list them)" if len(lines) > 1 else ""
        plain = lines[0].startswith("unknown config key") or refused[0].detail.startswith("unknown ")
        first = lines[0] if plain else f"not supported here: {lines[0]}"
        raise ConfigError(f"{first}{more}")

    def explain(self) -> str:
        """A table of every key: how it was read."""
        width = max((len(r.key) for r in self.readings), default=10)
        out = [f"config layout: {self.dialect}"]
        for r in self.readings:
            out.append(f"  {r.key:<{width}}  {r.verdict:<9}  {r.detail}".rstrip())
        counts = {v: len(self.of(v)) for v in ("as is", "mapped", "default", "no effect", "refused")}
        out.append("  " + ", ".join(f"{n} {v}" for v, n in counts.items()))
        return "\n".join(out)
