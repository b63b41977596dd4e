"""The front-ends the batch can run, by the name of their folder."""

from __future__ import annotations

from collections.abc import Callable

from hash3d.config.errors import did_you_mean

from ..errors import BatchError
from .base import PLACEHOLDER, ConfigInfo, FrontEnd, TrainRecord
from .dreamgaussian import DreamGaussianFrontEnd
from .launcher import LauncherFrontEnd

FRONT_ENDS: dict[str, Callable[[], FrontEnd]] = {
    "threestudio-hash3d": lambda: LauncherFrontEnd("threestudio-hash3d"),
    # its launch.py is hash3d.launch.main, like threestudio-hash3d's: same training, checkpoints and test_step
    "gaussian-dreamer-hash3d": lambda: LauncherFrontEnd("gaussian-dreamer-hash3d"),
    "dreamgaussian-hash3d": DreamGaussianFrontEnd,
}


def get_front_end(name: str) -> FrontEnd:
    if name not in FRONT_ENDS:
        raise BatchError(f"unknown front-end {name!r}: choose from {', '.join(FRONT_ENDS)}{did_you_mean(name, FRONT_ENDS)}")
    return FRONT_ENDS[name]()


__all__ = ["FRONT_ENDS", "PLACEHOLDER", "ConfigInfo", "DreamGaussianFrontEnd", "FrontEnd", "LauncherFrontEnd", "TrainRecord", "get_front_end"]
