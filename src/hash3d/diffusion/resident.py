"""Diffusion models kept loaded between runs in one process (a batch worker that runs item after item).

Loading a model from disk and moving it to the GPU is a large share of a short run. Inside `keep_loaded(models)`,
`load_stable_diffusion` / `load_zero123` load each model once and hand every later caller with the same arguments
a copy of it (`copy.deepcopy`: a device-to-device copy). Each run gets its own copy because runs change the modules
they are given (cache hooks, memory format); the kept one is never handed out, so it stays as loaded.
`ResidentModels.end_run()` forgets the models the finished run did not ask for, so a worker holds only the models
of the config it runs now (the cache-on and cache-off twins of a config share theirs).
Outside `keep_loaded` every call loads from disk, as before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class ResidentModels:
    def __init__(self) -> None:
        self._kept: dict[Hashable, Any] = {}
        self._used: set[Hashable] = set()
        self.loads = 0
        """Models loaded from disk."""
        self.reuses = 0
        """Loads answered from memory."""

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        self._used.add(key)
        if key in self._kept:
            self.reuses += 1
        else:
            self._kept[key] = load()
            self.loads += 1
        return copy.deepcopy(self._kept[key])

    def end_run(self) -> None:
        """Forget the models the run that just ended did not use."""
        for key in [k for k in self._kept if k not in self._used]:
            del self._kept[key]
        self._used.clear()

    def __len__(self) -> int:
        return len(self._kept)


_active: ResidentModels | None = None


@contextmanager
def keep_loaded(models: ResidentModels) -> Iterator[ResidentModels]:
    """Within the block, model loads go through `models`."""
    global _active
    before, _active = _active, models
    try:
        yield models
    finally:
        _active = before


def active() -> ResidentModels | None:
    return _active


def load_kept(key: Hashable, load: Callable[[], T]) -> T:
    """`load()`, or a copy of the kept model inside `keep_loaded`."""
    return load() if _active is None else _active.get(key, load)
