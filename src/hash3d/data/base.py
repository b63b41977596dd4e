"""The data-module contract the training loop uses, and the milestone schedule shared by the modules."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..config.errors import UserInputError
from .batches import CameraBatch


class DataError(UserInputError, ValueError):
    """Unusable input data (missing or unreadable image, no alpha channel, …), with how to fix it."""


def milestone_index(step: int, milestones: Sequence[int]) -> int:
    """Which entry of a milestone schedule applies at `step` (threestudio: bisect_right([-1] + milestones, step) - 1).

    With milestones [200, 300], steps 0..199 -> 0, 200..299 -> 1, 300.. -> 2: the switch happens at the milestone.
    """
    return bisect.bisect_right([-1, *milestones], step) - 1


def per_milestone(name: str, value: int | Sequence[int], milestones: Sequence[int]) -> list[int]:
    """An int or a list with one entry per milestone interval -> the list (checked against the milestones)."""
    if isinstance(value, int):
        return [value] * (len(milestones) + 1)
    values = list(value)
    if len(values) != len(milestones) + 1:
        raise DataError(
            f"{name} has {len(values)} entries but resolution_milestones {list(milestones)} make "
            f"{len(milestones) + 1} intervals: give one value per interval"
        )
    return values


def check_milestones(name: str, milestones: Sequence[int]) -> None:
    if any(b <= a for a, b in zip(milestones, milestones[1:])) or any(m < 0 for m in milestones):
        raise DataError(f"{name} must be increasing non-negative steps; got {list(milestones)}")


class DataModule:
    """What the training loop needs from a data module (registered under kind 'data').

    Built as `DataModule(cfg, seed=...)`; `setup()` loads files (and raises DataError for bad input) before any
    output is written. Training batches are a pure function of (step, generator state), so a resumed run that
    restores `state_dict()` sees the same cameras as an uninterrupted one.
    """

    def __init__(self, cfg: Any, seed: int = 0):
        self.cfg = cfg
        self.seed = seed

    def setup(self) -> None:
        """Load and check inputs (called once, before the trial folder is created)."""

    def train_batch(self, step: int) -> Any:
        """The batch of training step `step` (0-based)."""
        raise NotImplementedError

    def val_batches(self) -> Iterator[CameraBatch]:
        raise NotImplementedError

    def test_batches(self) -> Iterator[CameraBatch]:
        raise NotImplementedError

    def num_val_views(self) -> int:
        return 0

    def num_test_views(self) -> int:
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

