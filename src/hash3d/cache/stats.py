"""Cache statistics: counters kept as one device tensor, read into Python only when someone looks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

_FIELDS = ("queries", "hits", "inserts")


@dataclass(frozen=True)
class CacheStats:
    queries: int = 0
    hits: int = 0
    inserts: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        d["hit_rate"] = self.hit_rate
        return d


class Counters:
    """Accumulates the integer counters on `device` without host synchronisation."""

    def __init__(self, device: torch.device):
        self.values = torch.zeros(len(_FIELDS), dtype=torch.int64, device=device)

    def add_query(self, n: int, hit: torch.Tensor | None) -> None:
        self.values[0] += n
        if hit is not None:
            self.values[1] += hit.sum()

    def add_insert(self, n: int | torch.Tensor) -> None:
        """n: entries inserted, a Python int or a device tensor (e.g. the kept rows of a masked insert)."""
        self.values[2] += n

    def load(self, saved: torch.Tensor) -> None:
        """Continue from saved `values` (states saved with a fourth, evictions, counter load too: it is derived now)."""
        self.values.copy_(saved[: len(_FIELDS)])

    def reset(self) -> None:
        self.values.zero_()

    def read(self) -> dict[str, int]:
        return dict(zip(_FIELDS, self.values.tolist()))
