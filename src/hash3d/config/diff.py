"""Comparing two configs as plain data (`to_data` of a typed config, or a loaded YAML mapping)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ABSENT", "config_diff", "flatten"]

ABSENT = "<absent>"
"""What `config_diff` shows for a key that one side lacks."""


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {dotted key path: leaf value}; a non-mapping is one leaf under `prefix`."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def config_diff(a: Any, b: Any, skip: Callable[[str], bool] = lambda key: False) -> list[str]:
    """'key: a_value vs b_value' for every leaf whose values differ (a missing leaf shows as ABSENT), sorted by key,
    leaving out the keys for which `skip(key)` is true."""
    la, lb = flatten(a), flatten(b)
    return [
        f"{key}: {la.get(key, ABSENT)!r} vs {lb.get(key, ABSENT)!r}"
        for key in sorted(set(la) | set(lb))
        if not skip(key) and la.get(key, ABSENT) != lb.get(key, ABSENT)
    ]
