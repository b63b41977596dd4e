"""Gaussian splat primitives that both scene/ (the Gaussian model, densification, mesh extraction) and render/
(the rasterisers) use: quaternion rotations, 3D covariances, the real SH basis, the `Splats` a model hands to a
rasteriser and the `RasterMeta` a rasteriser hands back to densification. Imports nothing from hash3d."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

__all__ = [
    "SH_C0",
    "RasterMeta",
    "Splats",
    "covariances_3d",
    "quat_to_rotmat",
    "rgb_to_sh",
    "sh_to_rgb",
    "spherical_harmonics",
]




def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] wxyz quaternions (normalised here) -> [..., 3, 3] rotation matrices."""
    w, x, y, z = torch.unbind(quats / quats.norm(dim=-1, keepdim=True), dim=-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariances_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """[N, 4] wxyz, [N, 3] scales -> [N, 3, 3] world covariances R·diag(s²)·Rᵀ."""
    M = quat_to_rotmat(quats) * scales[..., None, :]  # R·diag(s)
    return M @ M.transpose(-1, -2)


SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)  # fmt: skip


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Real SH (3DGS basis order) of `degree` ≤ 3 at directions [..., 3] (normalised here) with coefficients
    [..., K, 3] -> [..., 3] (without the +0.5 offset)."""
    out = SH_C0 * coeffs[..., 0, :]
    if degree == 0:
        return out
    x, y, z = torch.unbind(dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12), dim=-1)
    x, y, z = x[..., None], y[..., None], z[..., None]
    out = out + _SH_C1 * (-y * coeffs[..., 1, :] + z * coeffs[..., 2, :] - x * coeffs[..., 3, :])
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (
        out
        + _SH_C2[0] * xy * coeffs[..., 4, :]
        + _SH_C2[1] * yz * coeffs[..., 5, :]
        + _SH_C2[2] * (2 * zz - xx - yy) * coeffs[..., 6, :]
        + _SH_C2[3] * xz * coeffs[..., 7, :]
        + _SH_C2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree == 2:
        return out
    return (
        out
        + _SH_C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :]
        + _SH_C3[1] * xy * z * coeffs[..., 10, :]
        + _SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
        + _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
        + _SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :]
        + _SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + _SH_C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :]
    )


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Colour in [0, 1] -> degree-0 SH coefficient."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    """Degree-0 SH coefficient -> colour (not clipped)."""
    return sh * SH_C0 + 0.5


@dataclasses.dataclass(frozen=True)
class Splats:
    """N activated Gaussians as a rasteriser takes them (world space)."""

    means: Tensor  # [N, 3] centres
    quats: Tensor  # [N, 4] rotations, wxyz, need not be normalised
    scales: Tensor  # [N, 3] positive standard deviations along the local axes
    opacities: Tensor  # [N] in [0, 1]
    colors: Tensor  # [N, D] colours / features, or [N, K, 3] SH coefficients
    sh_degree: int | None = None  # SH degree to evaluate (None: the largest K allows; must be None for [N, D])


@dataclasses.dataclass
class RasterMeta:
    """Per-render by-products. C cameras, N Gaussians."""

    depth: Tensor  # [C, H, W, 1] accumulated camera depth Σ wᵢ·tzᵢ (divide by alpha for the expected depth)
    means2d: Tensor  # [C, N, 2] projected means in pixels; after backward, `.grad` holds the densification signal
    radii: Tensor  # [C, N, 2] int32 half extents of the footprint in pixels (x, y); 0 where culled
    depths: Tensor  # [C, N] camera-space z of every mean
    conics: Tensor  # [C, N, 3] inverse 2D covariances (a, b, c) of [[a, b], [b, c]]
    width: int
    height: int
    backend: str  # "torch" or "gsplat": the backend that actually ran

    @property
    def n_cameras(self) -> int:
        return int(self.means2d.shape[0])

    @property
    def visible(self) -> Tensor:
        """[C, N] bool: Gaussians that reached the image of each camera."""
        return (self.radii > 0).all(dim=-1)

    def means2d_grad_ndc(self) -> Tensor | None:
        """[C, N, 2] gradient w.r.t. the projected means in NDC units (pixel gradient × (W/2, H/2)), as the
        3DGS densification threshold expects; None before a backward pass reached `means2d`."""
        g = self.means2d.grad
        if g is None:
            return None
        return g * g.new_tensor([self.width / 2.0, self.height / 2.0])
