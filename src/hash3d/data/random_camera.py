"""Random training cameras and evaluation orbits with threestudio's semantics (`random-camera-datamodule`).

Training cameras, each batch: with probability 0.5 the elevation is uniform in degrees over `elevation_range`,
otherwise uniform on the sphere (arcsin of a uniform sine); azimuth uniform over `azimuth_range` (stratified
across the batch with `batch_uniform_azimuth`); distance and fovy uniform. Then the position is jittered by
U(±camera_perturb), the look-at centre by N(0, center_perturb) and the up vector by N(0, up_perturb). Lights:
'dreamfusion' puts the light along (position + N(0, light_position_perturb)) at a distance drawn from
`light_distance_range`; 'camera' puts it at the camera. Size and batch size follow `resolution_milestones`.

Evaluation orbits: fixed eval elevation / distance / fovy; validation azimuths 0, 360/n, … (n views, 360
excluded); test azimuths n points from 0 to 360 inclusive (the first and last frames coincide), as threestudio.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..config.registry import register
from .base import DataError, DataModule, check_milestones, milestone_index, per_milestone
from .batches import CameraBatch
from .cameras import camera_position, look_at, orbit_azimuths


@dataclass
class RandomCameraConfig:
    """Random training cameras + evaluation orbits (threestudio `RandomCameraDataModuleConfig` names and defaults)."""

    height: int | list[int] = 64
    """Training render height, or one per milestone interval."""
    width: int | list[int] = 64
    batch_size: int | list[int] = 1
    """Cameras per training step, or one per milestone interval."""
    resolution_milestones: list[int] = field(default_factory=list)
    """Steps at which height/width/batch_size move to their next entry."""
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = 1
    n_test_views: int = 120
    elevation_range: tuple[float, float] = (-10.0, 90.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    camera_distance_range: tuple[float, float] = (1.0, 1.5)
    fovy_range: tuple[float, float] = (40.0, 70.0)
    """Vertical field of view in degrees."""
    camera_perturb: float = 0.1
    """Camera positions move by U(-p, p) per axis."""
    center_perturb: float = 0.2
    """Look-at centres move by N(0, p) per axis."""
    up_perturb: float = 0.02
    """Up vectors move by N(0, p) per axis."""
    light_position_perturb: float = 1.0
    light_distance_range: tuple[float, float] = (0.8, 1.5)
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    light_sample_strategy: Literal["dreamfusion", "magic3d", "camera"] = "dreamfusion"
    """dreamfusion: near the camera direction (perturbed); magic3d: azimuth U(−180°, 180°) and elevation U(30°, 90°)
    in the camera's local frame (z towards the camera); camera: at the camera."""
    batch_uniform_azimuth: bool = True
    """Stratify the azimuths of a batch: sample k falls in the k-th of B equal sectors."""
    progressive_until: int = 0
    """Grow the elevation/azimuth ranges from the eval view to the full ranges over this many steps (0: off)."""
    seed: int | None = None
    """Seed of the camera generator (None: the experiment seed)."""

    def __post_init__(self) -> None:
        check_milestones("resolution_milestones", self.resolution_milestones)
        for name in ("height", "width", "batch_size"):
            values = per_milestone(name, getattr(self, name), self.resolution_milestones)
            if any(v < 1 for v in values):
                raise DataError(f"{name} must be positive; got {getattr(self, name)}")
        for name in ("elevation_range", "azimuth_range", "camera_distance_range", "fovy_range", "light_distance_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise DataError(f"{name} must be [low, high] with low <= high; got {[lo, hi]}")
        e0, e1 = self.elevation_range
        if e0 < -90 or e1 > 90:
            raise DataError(f"elevation_range must lie within [-90, 90] degrees; got {[e0, e1]}")
        if not (0 < self.fovy_range[0] and self.fovy_range[1] < 180):
            raise DataError(f"fovy_range must lie within (0, 180) degrees; got {list(self.fovy_range)}")
        if self.n_val_views < 0 or self.n_test_views < 0 or self.eval_batch_size < 1:
            raise DataError("n_val_views and n_test_views must be >= 0 and eval_batch_size >= 1")

    def sizes(self, step: int) -> tuple[int, int, int]:
        """(batch_size, height, width) at a training step."""
        i = milestone_index(step, self.resolution_milestones)
        pick = lambda name: per_milestone(name, getattr(self, name), self.resolution_milestones)[i]  # noqa: E731
        return pick("batch_size"), pick("height"), pick("width")


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def magic3d_light(position: torch.Tensor, noise: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Magic3D's light: direction drawn in a frame whose z axis points at the camera, azimuth U(−π, π), elevation
    U(π/6, π/2). The two uniforms are Φ(noise[:, 0]) and Φ(noise[:, 1]) of the normal draws every strategy makes,
    so each strategy uses the generator alike. position, noise [B, 3], distance [B] -> light positions [B, 3]."""
    u = 0.5 * (1.0 + torch.erf(noise[:, :2] / math.sqrt(2.0)))
    azimuth = u[:, 0] * 2 * math.pi - math.pi
    elevation = u[:, 1] * math.pi / 3 + math.pi / 6
    z = F.normalize(position, dim=-1)
    x = F.normalize(torch.stack([z[:, 1], -z[:, 0], torch.zeros_like(z[:, 0])], -1), dim=-1)
    y = F.normalize(torch.cross(z, x, dim=-1), dim=-1)
    local = torch.stack(
        [torch.cos(elevation) * torch.cos(azimuth), torch.cos(elevation) * torch.sin(azimuth), torch.sin(elevation)], -1
    )
    return distance[:, None] * (local[:, :1] * x + local[:, 1:2] * y + local[:, 2:] * z)


class RandomCameraSampler:
    """Draws training camera batches from its own seeded generator (state saved in checkpoints)."""

    def __init__(self, cfg: RandomCameraConfig, seed: int = 0):
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(seed if cfg.seed is None else cfg.seed)

    def ranges(self, step: int) -> tuple[tuple[float, float], tuple[float, float]]:
        """Elevation and azimuth ranges at a step (narrowed while `progressive_until` is running)."""
        cfg = self.cfg
        if cfg.progressive_until <= 0:
            return cfg.elevation_range, cfg.azimuth_range
        r = min(1.0, step / (cfg.progressive_until + 1))
        e = tuple((1 - r) * cfg.eval_elevation_deg + r * v for v in cfg.elevation_range)
        a = tuple(r * v for v in cfg.azimuth_range)
        return e, a  # type: ignore[return-value]

    def sample(self, step: int) -> CameraBatch:
        cfg, g = self.cfg, self.generator
        batch, height, width = cfg.sizes(step)
        (e0, e1), (a0, a1) = self.ranges(step)
        # every branch draws the same amount of randomness, so the stream does not depend on the options
        coin = torch.rand((), generator=g).item()
        u_elev = torch.rand(batch, generator=g)
        if coin < 0.5:
            elevation = u_elev * (e1 - e0) + e0
        else:
            s0, s1 = math.sin(math.radians(e0)), math.sin(math.radians(e1))
            elevation = torch.rad2deg(torch.asin((u_elev * (s1 - s0) + s0).clamp(-1.0, 1.0)))
        u_az = torch.rand(batch, generator=g)
        if cfg.batch_uniform_azimuth:
            azimuth = (u_az + torch.arange(batch)) / batch * (a1 - a0) + a0
        else:
            azimuth = u_az * (a1 - a0) + a0
        distance = _uniform(g, batch, *cfg.camera_distance_range)
        fovy = _uniform(g, batch, *cfg.fovy_range)
        position = camera_position(elevation, azimuth, distance)
        position = position + (torch.rand(batch, 3, generator=g) * 2 - 1) * cfg.camera_perturb
        center = torch.randn(batch, 3, generator=g) * cfg.center_perturb
        up = torch.tensor([0.0, 0.0, 1.0]) + torch.randn(batch, 3, generator=g) * cfg.up_perturb
        c2w = look_at(position, center, up)
        light_noise = torch.randn(batch, 3, generator=g)
        light_distance = _uniform(g, batch, *cfg.light_distance_range)
        if cfg.light_sample_strategy == "dreamfusion":
            light = F.normalize(position + light_noise * cfg.light_position_perturb, dim=-1) * light_distance[:, None]
        elif cfg.light_sample_strategy == "magic3d":
            light = magic3d_light(position, light_noise, light_distance)
        else:
            light = position.clone()
        return CameraBatch(
            c2w=c2w,
            elevation=elevation,
            azimuth=azimuth,
            camera_distances=distance,
            fovy=fovy,
            camera_positions=c2w[:, :3, 3].clone(),
            light_positions=light,
            height=height,
            width=width,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def orbit_batches(
    n_views: int,
    elevation_deg: float,
    camera_distance: float,
    fovy_deg: float,
    height: int,
    width: int,
    batch_size: int = 1,
    endpoint: bool = True,
) -> Iterator[CameraBatch]:
    """Evaluation cameras around the object at a fixed elevation; the light sits at the camera."""
    azimuth = orbit_azimuths(n_views, 0.0, endpoint=endpoint) if n_views > 1 else torch.zeros(n_views)
    elevation = torch.full((n_views,), float(elevation_deg))
    distance = torch.full((n_views,), float(camera_distance))
    fovy = torch.full((n_views,), float(fovy_deg))
    position = camera_position(elevation, azimuth, distance)
    c2w = look_at(position)
    for start in range(0, n_views, batch_size):
        sl = slice(start, min(start + batch_size, n_views))
        yield CameraBatch(
            c2w=c2w[sl],
            elevation=elevation[sl],
            azimuth=azimuth[sl],
            camera_distances=distance[sl],
            fovy=fovy[sl],
            camera_positions=position[sl],
            light_positions=position[sl].clone(),
            height=height,
            width=width,
            index=torch.arange(sl.start, sl.stop),
        )


def eval_batches(cfg: RandomCameraConfig, split: Literal["val", "test"]) -> Iterator[CameraBatch]:
    n = cfg.n_val_views if split == "val" else cfg.n_test_views
    return orbit_batches(
        n,
        cfg.eval_elevation_deg,
        cfg.eval_camera_distance,
        cfg.eval_fovy_deg,
        cfg.eval_height,
        cfg.eval_width,
        cfg.eval_batch_size,
        endpoint=split == "test",
    )


@register("data", "random-camera-datamodule", config=RandomCameraConfig)
class RandomCameraDataModule(DataModule):
    """Random cameras for text-to-3D; validation and test orbits."""

    cfg: RandomCameraConfig

    def __init__(self, cfg: RandomCameraConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.sampler = RandomCameraSampler(cfg, seed)

    def train_batch(self, step: int) -> CameraBatch:
        return self.sampler.sample(step)

    def val_batches(self) -> Iterator[CameraBatch]:
        return eval_batches(self.cfg, "val")

    def test_batches(self) -> Iterator[CameraBatch]:
        return eval_batches(self.cfg, "test")

    def num_val_views(self) -> int:
        return self.cfg.n_val_views

    def num_test_views(self) -> int:
        return self.cfg.n_test_views

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
