"""Cameras, camera sampling and reference images.

Importing this package registers the data modules `single-image-datamodule` and `random-camera-datamodule`.
"""

from .base import DataError, DataModule, milestone_index, per_milestone
from .batches import CameraBatch, ReferenceBatch, SingleImageBatch, TensorBatch
from .image import ImageFile, SingleImageConfig, SingleImageDataModule, load_rgba, read_rgba, recenter, resize
from .random_camera import (
    RandomCameraConfig,
    RandomCameraDataModule,
    RandomCameraSampler,
    eval_batches,
    orbit_batches,
)

__all__ = [
    "CameraBatch",
    "DataError",
    "DataModule",
    "RandomCameraConfig",
    "RandomCameraDataModule",
    "RandomCameraSampler",
    "ReferenceBatch",
    "SingleImageBatch",
    "SingleImageConfig",
    "SingleImageDataModule",
    "TensorBatch",
    "eval_batches",
    "load_rgba",
    "read_rgba",
    "ImageFile",
    "milestone_index",
    "orbit_batches",
    "per_milestone",
    "recenter",
    "resize",
]
