"""Step-dependent values in threestudio's notation.

A value is a number (constant), `[start_step, start_value, end_value, end_step]` (constant, then linear, then
constant; a 3-element list gets a leading 0), or `[s0, v0, v1, s1, v2, s2]` (two linear pieces).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

ScheduleValue = float | int | Sequence[float]


def check_schedule(name: str, value: ScheduleValue) -> None:
    if isinstance(value, (int, float)):
        return
    if not isinstance(value, Sequence) or len(value) not in (3, 4, 6) or not all(isinstance(v, (int, float)) for v in value):
        raise ValueError(
            f"{name} must be a number, [start_step, start, end, end_step], [start, end, end_step] or "
            f"[s0, v0, v1, s1, v2, s2]; got {value!r}"
        )


def _linear(step: float, s0: float, v0: float, v1: float, s1: float, exp: bool = False) -> float:
    if step <= s0:
        return v0
    if step >= s1:
        return v1
    t = (step - s0) / (s1 - s0)
    if exp:  # threestudio's interpolation="exp": linear in log space (both ends must be > 0)
        return math.exp(math.log(v0) + (math.log(v1) - math.log(v0)) * t)
    return v0 + (v1 - v0) * t


def schedule_value(value: ScheduleValue, step: int, interpolation: Literal["linear", "exp"] = "linear") -> float:
    """The value of a schedule at a global step ('exp': interpolated linearly in log space, e.g. 3DGS learning rates)."""
    if isinstance(value, (int, float)):
        return float(value)
    value = [float(v) for v in value]
    if len(value) == 3:
        value = [0.0] + value
    exp = interpolation == "exp"
    if len(value) == 4:
        return _linear(step, *value, exp=exp)
    s0, v0, v1, s1, v2, s2 = value
    if step < s1:
        return _linear(step, s0, v0, v1, s1, exp)
    return _linear(step, s1, v1, v2, s2, exp)
