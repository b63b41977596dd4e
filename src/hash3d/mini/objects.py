"""Procedural objects for Hash3D-mini: 1–4 SDF primitives with random sizes, poses, colours and textures.

Every random number is a hash of (object id, field), computed with integer tensor ops, so an object depends only
on its id: the same id gives the same object on any device, in any batch, at any position in the batch. Training
draws ids below `HELD_OUT_ID_BASE`; held-out evaluation uses ids from `HELD_OUT_ID_BASE` up, which training never
sees.

World frame and cameras follow `hash3d.data.cameras` (threestudio): z up, elevation/azimuth in degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

__all__ = [
    "KINDS",
    "TEXTURES",
    "MAX_PRIMITIVES",
    "HELD_OUT_ID_BASE",
    "VIEW_ELEVATION_RANGE",
    "OBJECT_RADIUS_RANGE",
    "Objects",
    "hash_uniform",
    "make_objects",
    "sample_views",
]

KINDS = ("sphere", "box", "cylinder", "cone", "torus")
TEXTURES = ("solid", "stripes", "checker")
MAX_PRIMITIVES = 4
HELD_OUT_ID_BASE = 10**12
"""Object ids >= this are held out: training only ever draws ids below it."""
VIEW_ELEVATION_RANGE = (-10.0, 40.0)
OBJECT_RADIUS_RANGE = (0.46, 0.58)
"""Radius of the sphere around the bounding spheres of an object's parts, after normalisation (scene units)."""

_MASK32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2**27, so products of 32-bit values stay below 2**59: no int64 overflow on any device


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL) & _MASK32
    x = x ^ (x >> 16)
    x = (x * _MUL) & _MASK32
    return x ^ (x >> 16)


def hash_uniform(ids: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """Uniform numbers in [0, 1) that depend only on (id, stream, index): ids [N] int64 -> [N, count] float32."""
    ids = ids.to(torch.int64)
    lo, hi = ids & _MASK32, (ids >> 32) & _MASK32
    salt = (stream * 0x9E3779B1 + 0x7F4A7C15) & _MASK32
    base = _mix32(lo ^ _mix32(hi ^ salt))
    j = torch.arange(count, device=ids.device, dtype=torch.int64)
    h = _mix32(base[:, None] ^ _mix32((j + salt * 31 + 1) & _MASK32)[None, :])
    h = _mix32(h ^ (salt >> 3))
    return (h >> 8).to(torch.float32) / float(1 << 24)


@dataclass
class Objects:
    """A batch of N objects of up to `MAX_PRIMITIVES` parts each (tensors with leading dims [N, K])."""

    kind: torch.Tensor  # [N, K] long, index into KINDS
    active: torch.Tensor  # [N, K] bool
    center: torch.Tensor  # [N, K, 3] world position of the part
    rotation: torch.Tensor  # [N, K, 3, 3] world -> part-local rotation: q = R (p - center)
    size: torch.Tensor  # [N, K, 3] shape parameters (see `render.primitive_sdf`)
    color: torch.Tensor  # [N, K, 3] albedo in [0, 1]
    color2: torch.Tensor  # [N, K, 3] second albedo of the texture
    texture: torch.Tensor  # [N, K] long, index into TEXTURES
    frequency: torch.Tensor  # [N, K] texture cycles per scene unit

    def __len__(self) -> int:
        return self.kind.shape[0]

    def take(self, index: torch.Tensor) -> "Objects":
        """The objects at `index` (with repeats: one entry per view to render)."""
        return Objects(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device) -> "Objects":
        return Objects(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @staticmethod
    def single(
        kinds: list[str],
        centers: list[tuple[float, float, float]],
        sizes: list[tuple[float, float, float]],
        colors: list[tuple[float, float, float]],
        device=None,
    ) -> "Objects":
        """One hand-made object (axis-aligned parts, solid colours), e.g. for tests."""
        k = len(kinds)
        if not 1 <= k <= MAX_PRIMITIVES:
            raise ValueError(f"an object has 1 to {MAX_PRIMITIVES} parts, got {k}")
        pad = MAX_PRIMITIVES - k
        kind = torch.tensor([KINDS.index(x) for x in kinds] + [0] * pad, device=device)[None]
        active = torch.tensor([True] * k + [False] * pad, device=device)[None]

        def vec(values):
            return torch.tensor(list(values) + [(0.0, 0.0, 0.0)] * pad, dtype=torch.float32, device=device)[None]

        eye = torch.eye(3, device=device).expand(1, MAX_PRIMITIVES, 3, 3).clone()
        zeros = torch.zeros(1, MAX_PRIMITIVES, device=device)
        return Objects(kind=kind, active=active, center=vec(centers), rotation=eye, size=vec(sizes),
                       color=vec(colors), color2=vec(colors), texture=zeros.long(), frequency=zeros + 1.0)


def _rotation_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """Uniformly distributed rotations from three uniforms per item (Shoemake): u [..., 3] -> [..., 3, 3]."""
    u1, u2, u3 = u.unbind(-1)
    a, b = torch.sqrt(1 - u1), torch.sqrt(u1)
    x, y = a * torch.sin(2 * math.pi * u2), a * torch.cos(2 * math.pi * u2)
    z, w = b * torch.sin(2 * math.pi * u3), b * torch.cos(2 * math.pi * u3)
    return torch.stack(
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
         2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
         2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1,
    ).reshape(*u.shape[:-1], 3, 3)


def _rotation_about_z(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(*angle.shape, 3, 3)


def _lerp(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * u


def bounding_radius(kind: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Radius of a sphere around each part's own centre that holds the whole part: [..., K]."""
    s0, s1, s2 = size.unbind(-1)
    radius = torch.stack(
        [
            s0,  # sphere
            size.norm(dim=-1),  # box half-extents
            torch.sqrt(s0**2 + s1**2),  # cylinder (radius, half-height)
            torch.sqrt(torch.maximum(s0, s2) ** 2 + s1**2),  # cone (base radius, half-height, tip radius)
            s0 + s1,  # torus (ring radius, tube radius)
        ],
        -1,
    )
    return radius.gather(-1, kind[..., None]).squeeze(-1)


def make_objects(ids: torch.Tensor, device=None) -> Objects:
    """The objects of the given ids ([N] int64), normalised to lie around the origin (see OBJECT_RADIUS_RANGE)."""
    ids = torch.as_tensor(ids, dtype=torch.int64, device=device).reshape(-1)
    device = ids.device
    N, K = ids.shape[0], MAX_PRIMITIVES
    U = lambda stream, count: hash_uniform(ids, stream, count)  # noqa: E731

    n_parts = 1 + (U(1, 1)[:, 0] * K).long().clamp(max=K - 1)  # 1..4, uniform
    active = torch.arange(K, device=device)[None] < n_parts[:, None]
    kind = (U(2, K) * len(KINDS)).long().clamp(max=len(KINDS) - 1)

    base = _lerp(U(3, K), 0.14, 0.32)[..., None]  # [N, K, 1] part scale
    a = U(4, K * 3).view(N, K, 3)
    shape = torch.zeros(N, K, 3, device=device)
    sphere = base.expand(-1, -1, 3)
    box = base * _lerp(a, 0.45, 1.15)
    cylinder = torch.cat([base * _lerp(a[..., :1], 0.45, 1.0), base * _lerp(a[..., 1:2], 0.6, 1.4),
                          torch.zeros_like(base)], -1)
    cone_r = base * _lerp(a[..., :1], 0.7, 1.2)
    cone = torch.cat([cone_r, base * _lerp(a[..., 1:2], 0.7, 1.4), cone_r * _lerp(a[..., 2:3], 0.0, 0.4)], -1)
    torus = torch.cat([base * _lerp(a[..., :1], 0.8, 1.1), base * _lerp(a[..., :1], 0.8, 1.1) * _lerp(a[..., 1:2], 0.25, 0.45),
                       torch.zeros_like(base)], -1)
    for i, value in enumerate((sphere, box, cylinder, cone, torus)):
        shape = torch.where((kind == i)[..., None], value, shape)

    center = _lerp(U(5, K * 3).view(N, K, 3), -0.32, 0.32)
    center[:, 0] = 0.0  # the first part sits at the middle, the others around it

    upright = U(6, K) < 0.5  # half of the parts only turn about the vertical axis
    rotation = torch.where(
        upright[..., None, None],
        _rotation_about_z(2 * math.pi * U(7, K)),
        _rotation_from_uniform(U(8, K * 3).view(N, K, 3)),
    )

    color = _lerp(U(9, K * 3).view(N, K, 3), 0.05, 0.85)
    color2 = _lerp(U(10, K * 3).view(N, K, 3), 0.05, 0.85)
    t = U(11, K)
    texture = torch.where(t < 0.5, 0, torch.where(t < 0.75, 1, 2))
    frequency = 1.0 / _lerp(U(12, K), 0.16, 0.35)  # one cycle every 0.16–0.35 units (before normalisation)

    # normalise: centre the box around the parts' bounding spheres at the origin, scale to a random radius
    rb = bounding_radius(kind, shape)
    big = torch.full_like(rb, 1e3)
    lo = torch.where(active[..., None], center - rb[..., None], big[..., None]).amin(1)
    hi = torch.where(active[..., None], center + rb[..., None], -big[..., None]).amax(1)
    center = center - ((lo + hi) / 2)[:, None]
    extent = torch.where(active, center.norm(dim=-1) + rb, torch.zeros_like(rb)).amax(1)
    scale = _lerp(U(13, 1)[:, 0], *OBJECT_RADIUS_RANGE) / extent
    center = center * scale[:, None, None]
    shape = shape * scale[:, None, None]
    frequency = frequency / scale[:, None]
    return Objects(kind=kind, active=active, center=center, rotation=rotation, size=shape, color=color,
                   color2=color2, texture=texture, frequency=frequency)


def sample_views(ids: torch.Tensor, views: int, stream: int = 100,
                 elevation_range: tuple[float, float] = VIEW_ELEVATION_RANGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Random cameras per object: elevation uniform in `elevation_range`, azimuth uniform in [0, 360).

    ids [N] -> (elevation, azimuth), each [N, views] in degrees; deterministic per (id, stream).
    """
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
    elevation = _lerp(hash_uniform(ids, stream, views), *elevation_range)
    azimuth = 360.0 * hash_uniform(ids, stream + 1, views)
    return elevation, azimuth
