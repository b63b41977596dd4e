"""Typed batches that data modules hand to systems (all camera angles in degrees, threestudio's z-up world)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .cameras import intrinsics, projection_matrix, rays


class TensorBatch:
    """Mixin for batch dataclasses: `.to(device)` moves every tensor (and nested batch) field."""

    def to(self, device: torch.device | str, non_blocking: bool = False):
        changes = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = value.to(device, non_blocking=non_blocking)
            elif isinstance(value, TensorBatch):
                changes[f.name] = value.to(device, non_blocking=non_blocking)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class CameraBatch(TensorBatch):
    """B cameras looking at the origin (or near it, when perturbed), rendered at height x width."""

    c2w: torch.Tensor
    """[B, 4, 4] camera-to-world, OpenGL (columns right, up, back)."""
    elevation: torch.Tensor
    """[B] degrees, as sampled (before any position perturbation): what the guidance is told."""
    azimuth: torch.Tensor
    """[B] degrees."""
    camera_distances: torch.Tensor
    """[B] scene units."""
    fovy: torch.Tensor
    """[B] vertical field of view in degrees."""
    camera_positions: torch.Tensor
    """[B, 3] camera centres (= c2w[:, :3, 3])."""
    light_positions: torch.Tensor
    """[B, 3] point-light positions."""
    height: int
    width: int
    index: torch.Tensor | None = None
    """[B] view indices of an evaluation orbit (None for training batches)."""
    ray_jitter: float = 0.0
    """Std of the noise `rays()` adds to the ray directions by default (the reference view's `rays_noise_scale`)."""

    @property
    def batch_size(self) -> int:
        return int(self.c2w.shape[0])

    def rays(self, jitter: float | None = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space ray origins and unit directions, each [B, H, W, 3], on the batch's device."""
        origins, dirs = rays(self.c2w, self.fovy, self.height, self.width)
        jitter = self.ray_jitter if jitter is None else jitter
        if jitter > 0:
            noise = torch.randn(dirs.shape, device=dirs.device, generator=generator)
            dirs = torch.nn.functional.normalize(dirs + jitter * noise, dim=-1)
        return origins, dirs

    def intrinsics(self) -> torch.Tensor:
        """[B, 3, 3] pinhole intrinsics in pixels."""
        return intrinsics(self.fovy, self.height, self.width)

    def proj_mtx(self, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
        """[B, 4, 4] OpenGL projection."""
        return projection_matrix(self.fovy, self.width / self.height, near, far)

    def mvp_mtx(self, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
        """[B, 4, 4] projection @ world-to-camera (for rasterisers in clip space)."""
        return self.proj_mtx(near, far) @ torch.linalg.inv(self.c2w)


@dataclass
class ReferenceBatch(CameraBatch):
    """The input view of image-to-3D, with its image."""

    rgb: torch.Tensor | None = None
    """[B, H, W, 3] in [0, 1] (colour where the mask is set; not composited on a background)."""
    mask: torch.Tensor | None = None
    """[B, H, W, 1] bool: alpha > 0.5."""
    depth: torch.Tensor | None = None
    """[B, H, W, 1] relative depth in [0, 1] when `requires_depth` (else None)."""
    normal: torch.Tensor | None = None
    """[B, H, W, 3] normals in [-1, 1] when `requires_normal` (else None)."""


@dataclass
class SingleImageBatch(TensorBatch):
    """A training step of image-to-3D: the reference view and (optionally) random views for the SDS guidance."""

    ref: ReferenceBatch
    random: CameraBatch | None = None
