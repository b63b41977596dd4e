"""threestudio's scalar schedules as they are written in its files.

`[start_step, start, end, end_step]` (or `[start, end, end_step]`, or `[s0, v0, v1, s1, v2, s2, ...]`): an integer
end step counts training steps, a float one counts epochs. threestudio's training data is an endless stream, so its
epoch stays 0 for the whole run: an epoch schedule is the constant it has at epoch 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def is_schedule(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) >= 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def c_max(value: Any) -> float:
    """The largest value a schedule takes (threestudio's C_max); a number is its own maximum."""
    if not isinstance(value, (list, tuple)):
        return value
    value = list(value)
    if len(value) >= 6:
        return max(value[1], *value[2::2])
    if len(value) == 3:
        value = [0, *value]
    if len(value) != 4:
        raise TypeError(f"a schedule has 3, 4 or 6+ values; got {value!r}")
    return max(value[1], value[2])


def counts_epochs(value: Sequence[Any]) -> bool:
    """True when the (first) piece of a schedule ends at a float, i.e. counts epochs."""
    return isinstance(value[3] if len(value) >= 4 else value[2], float)


def at_epoch_zero(value: Sequence[float]) -> float:
    """The constant an epoch-counted schedule has for a whole threestudio run."""
    v = list(value)
    if len(v) == 3:
        v = [0, *v]
    start_step, start, end, end_step = v[:4]
    t = max(min(1.0, (0 - start_step) / (end_step - start_step)), 0.0)
    return start + (end - start) * t
