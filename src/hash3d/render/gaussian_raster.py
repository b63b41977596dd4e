"""Rasterise 3D Gaussians: one functional entry point, a pure-torch EWA splatter, and a gsplat adapter.

`rasterize_gaussians` is the only function callers need. It takes plain tensors (world-space Gaussians,
OpenCV world-to-camera view matrices, pinhole intrinsics) and returns `(rgb, alpha, meta)`; leading
camera dimension C, no batch dimensions. Backends:

- ``"torch"``: `_rasterize_gaussians`, differentiated by torch autograd; runs anywhere (the CPU tests,
  small renders). Tiles are used only to cull Gaussians per block of pixels; inside a block every pixel
  composites every Gaussian whose footprint can reach it, so the result does not depend on the tile size.
- ``"gsplat"``: `gsplat.rasterization` (CUDA). Imported only when asked for; gsplat compiles its CUDA
  code on first use, which takes minutes (logged once).
- ``"auto"``: gsplat when the tensors are on a CUDA device and gsplat is importable, else torch.

Conventions (shared with gsplat and the original 3DGS rasteriser):

- Projection. Camera-space mean t = W·μ + w (OpenCV: x right, y down, looking down +z). Pixel mean
  (fx·tx/tz + cx, fy·ty/tz + cy); the centre of pixel (i, j) is at (i + 0.5, j + 0.5). EWA: Σ₂ = J Σ_cam Jᵀ
  with J the Jacobian of the perspective map at t (tx/tz, ty/tz clamped to 1.3× the half field of view, as
  3DGS does), then Σ₂ += eps2d·I (0.3 px² "dilation"). Gaussians with tz ≤ near_plane or ≥ far_plane are
  dropped.
- Compositing, per pixel, front to back by camera-space depth tz:
  αᵢ = min(alpha_max, oᵢ·exp(−½ dᵀ Σ₂⁻¹ d)); Gaussians with αᵢ < 1/255 are skipped; Tᵢ = Π_{j<i}(1 − αⱼ);
  the pixel stops before the first Gaussian that would bring T below 1e-4 (it is not added);
  rgb = Σ αᵢTᵢcᵢ + T_end·background, alpha = 1 − T_end, depth = Σ αᵢTᵢ·tzᵢ.
- SH colours (colors [N, K, 3]): c = max(SH(dir) + 0.5, 0) with dir from the camera centre to the mean.

Known difference between the backends: gsplat clamps α at 0.999, the original 3DGS (and our torch default)
at 0.99. They agree exactly whenever every oᵢ ≤ 0.99.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Literal

import torch
from torch import Tensor

from .backends import choose_backend, has_module, stale_build_lock
from ..splatting import RasterMeta, Splats, covariances_3d, spherical_harmonics
from ..profiling import timed

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "gsplat"]

__all__ = [
    "RasterOptions",
    "RasterMeta",
    "rasterize_gaussians",
    "rasterize_splats",
    "has_gsplat",
    "resolve_backend",
    "project_gaussians",
]


@dataclasses.dataclass(frozen=True)
class RasterOptions:
    """Knobs of the rasteriser that rarely change; both backends read them."""

    near_plane: float = 0.01
    """Gaussians at camera depth ≤ near_plane are dropped."""
    far_plane: float = 1e10
    """Gaussians at camera depth ≥ far_plane are dropped."""
    eps2d: float = 0.3
    """Added to the diagonal of every projected 2D covariance (pixels²)."""
    alpha_max: float = 0.99
    """Per-Gaussian alpha clamp of the torch backend (3DGS: 0.99; gsplat hard-codes 0.999)."""
    alpha_min: float = 1.0 / 255.0
    """Contributions with smaller alpha are skipped (torch backend; gsplat uses the same constant)."""
    min_transmittance: float = 1e-4
    """A pixel stops before the Gaussian that would bring its transmittance below this (torch backend)."""
    tile_size: int = 16
    """Torch backend: side of the pixel blocks used for culling (does not change the result)."""
    max_chunk_elements: int = 1 << 21
    """Torch backend: at most this many (pixel, Gaussian) pairs are evaluated at once (bounds memory)."""


# --------------------------------------------------------------------------------------------------
# entry point


@timed("render")
def rasterize_gaussians(
    means: Tensor,  # [N, 3] world-space centres
    quats: Tensor,  # [N, 4] rotations, wxyz, need not be normalised
    scales: Tensor,  # [N, 3] activated (positive) standard deviations along the local axes
    opacities: Tensor,  # [N] activated opacities in [0, 1]
    colors: Tensor,  # [N, D] colours / features, or [N, K, 3] SH coefficients
    viewmats: Tensor,  # [C, 4, 4] world-to-camera, OpenCV convention
    Ks: Tensor,  # [C, 3, 3] pinhole intrinsics in pixels
    width: int,
    height: int,
    background: Tensor | None = None,  # [D] or [C, D]; None = black
    backend: Backend = "auto",
    *,
    sh_degree: int | None = None,
    options: RasterOptions | None = None,
) -> tuple[Tensor, Tensor, RasterMeta]:
    """Render N Gaussians into C images.

    `colors` of shape [N, K, 3] are read as SH coefficients (degree `sh_degree`, default the largest that
    K allows); of shape [N, D] as colours / features composited as they are.

    Returns `rgb` [C, H, W, D], `alpha` [C, H, W, 1] and a `RasterMeta`. `meta.means2d` keeps its gradient
    after `backward()` in both backends (use `meta.means2d_grad_ndc()` for densification).

    Example::

        rgb, alpha, meta = rasterize_gaussians(means, quats, scales, opacities, colors,
                                               world_to_camera_opencv(c2w), intrinsics(fovy, H, W), W, H)
    """
    options = options or RasterOptions()
    N = means.shape[0]
    C = viewmats.shape[0]
    if means.shape != (N, 3) or quats.shape != (N, 4) or scales.shape != (N, 3) or opacities.shape != (N,):
        raise ValueError(
            "expected means [N,3], quats [N,4], scales [N,3], opacities [N]; got "
            f"{tuple(means.shape)}, {tuple(quats.shape)}, {tuple(scales.shape)}, {tuple(opacities.shape)}"
        )
    if viewmats.shape != (C, 4, 4) or Ks.shape != (C, 3, 3):
        raise ValueError(f"expected viewmats [C,4,4] and Ks [C,3,3]; got {tuple(viewmats.shape)}, {tuple(Ks.shape)}")
    if colors.shape[0] != N or colors.dim() not in (2, 3) or (colors.dim() == 3 and colors.shape[-1] != 3):
        raise ValueError(f"expected colors [N, D] or SH [N, K, 3]; got {tuple(colors.shape)}")
    if colors.dim() == 3:
        K = colors.shape[1]
        max_degree = math.isqrt(K) - 1
        if sh_degree is None:
            sh_degree = max_degree
        if not 0 <= sh_degree <= min(max_degree, 3):
            raise ValueError(f"sh_degree {sh_degree} needs (degree+1)² ≤ K={K} and degree ≤ 3")
    elif sh_degree is not None:
        raise ValueError("sh_degree given but colors are not SH coefficients [N, K, 3]")
    D = 3 if colors.dim() == 3 else colors.shape[-1]
    if background is not None:
        background = torch.as_tensor(background, dtype=means.dtype, device=means.device)
        if background.shape == (D,):
            background = background.expand(C, D)
        if background.shape != (C, D):
            raise ValueError(f"background must be [{D}] or [{C}, {D}]; got {tuple(background.shape)}")

    chosen = resolve_backend(backend, means.device)
    if chosen == "gsplat":
        return _rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, sh_degree, options
        )
    return _rasterize_gaussians(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, sh_degree, options
    )


def rasterize_splats(
    splats: Splats,
    viewmats: Tensor,  # [C, 4, 4] world-to-camera, OpenCV convention
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    background: Tensor | None = None,
    backend: Backend = "auto",
    options: RasterOptions | None = None,
) -> tuple[Tensor, Tensor, RasterMeta]:
    """`rasterize_gaussians` of a model's `Splats` (e.g. `GaussianModel.splats()`)."""
    return rasterize_gaussians(
        splats.means, splats.quats, splats.scales, splats.opacities, splats.colors,
        viewmats, Ks, width, height, background, backend, sh_degree=splats.sh_degree, options=options,
    )  # fmt: skip


def has_gsplat() -> bool:
    """True when the gsplat package can be imported (its CUDA code may still need compiling)."""
    return has_module("gsplat")


def resolve_backend(backend: Backend, device: torch.device | str) -> str:
    """The backend `rasterize_gaussians` runs for tensors on `device`."""
    return choose_backend(backend, device, "gsplat", has_gsplat(), "pip install 'gsplat>=1.5' (or hash3d[gpu])")


@dataclasses.dataclass
class _Projection:
    means2d: Tensor  # [C, N, 2]
    conics: Tensor  # [C, N, 3]
    depths: Tensor  # [C, N]
    radii: Tensor  # [C, N, 2] int32
    valid: Tensor  # [C, N] bool


def project_gaussians(
    means: Tensor,  # [N, 3]
    covars: Tensor,  # [N, 3, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    options: RasterOptions,
) -> _Projection:
    """EWA projection of world Gaussians into C pinhole cameras (differentiable, pure torch)."""
    Rw, tw = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [C, 3, 3], [C, 3]
    t = torch.einsum("cij,nj->cni", Rw, means) + tw[:, None, :]  # [C, N, 3]
    cov_cam = Rw[:, None] @ covars[None] @ Rw.transpose(-1, -2)[:, None]  # [C, N, 3, 3]
    tx, ty, tz = torch.unbind(t, dim=-1)  # [C, N]
    in_range = (tz > options.near_plane) & (tz < options.far_plane)
    z = torch.where(in_range, tz, torch.ones_like(tz))  # safe denominator; culled entries are masked below
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]  # [C, 1]
    means2d = torch.stack([fx * tx / z + cx, fy * ty / z + cy], dim=-1)  # [C, N, 2]

    # the Jacobian is evaluated with the direction clamped to 1.3× the half field of view (3DGS)
    lim_xp = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_xn = cx / fx + 0.3 * (0.5 * width / fx)
    lim_yp = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_yn = cy / fy + 0.3 * (0.5 * height / fy)
    u = torch.maximum(torch.minimum(tx / z, lim_xp), -lim_xn)
    v = torch.maximum(torch.minimum(ty / z, lim_yp), -lim_yn)
    zeros = torch.zeros_like(z)
    J = torch.stack(
        [torch.stack([fx / z, zeros, -fx * u / z], -1), torch.stack([zeros, fy / z, -fy * v / z], -1)], dim=-2
    )  # [C, N, 2, 3]
    cov2d = J @ cov_cam @ J.transpose(-1, -2)  # [C, N, 2, 2]
    a = cov2d[..., 0, 0] + options.eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    c = cov2d[..., 1, 1] + options.eps2d
    det = a * c - b * b
    ok = in_range & (det > 0)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [C, N, 3]

    with torch.no_grad():
        # beyond Mahalanobis distance e = sqrt(2 ln(o / alpha_min)) every alpha is below alpha_min: the
        # axis-aligned box of that ellipse is an exact footprint (gsplat uses the same bound, capped at 3.33σ)
        o = opacities.detach()[None].expand_as(z)
        extend = torch.sqrt(2.0 * torch.log((o / options.alpha_min).clamp_min(1.0)))
        ok = ok & (o > options.alpha_min)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        m2 = means2d.detach()
        inside = (m2[..., 0] + rx > 0) & (m2[..., 0] - rx < width) & (m2[..., 1] + ry > 0) & (m2[..., 1] - ry < height)
        ok = ok & inside & (rx > 0) & (ry > 0) & torch.isfinite(m2).all(-1)
        radii = torch.stack([rx, ry], dim=-1).where(ok[..., None], torch.zeros_like(m2)).to(torch.int32)
    return _Projection(means2d=means2d, conics=conics, depths=tz, radii=radii, valid=ok)


# --------------------------------------------------------------------------------------------------
# torch backend


def _rasterize_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] or [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    background: Tensor | None,  # [C, D] or None
    sh_degree: int | None,
    options: RasterOptions,
) -> tuple[Tensor, Tensor, RasterMeta]:
    """Pure-torch twin of the gsplat path (same arguments as `rasterize_gaussians`, already validated)."""
    proj = project_gaussians(means, covariances_3d(quats, scales), opacities, viewmats, Ks, width, height, options)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    C = viewmats.shape[0]
    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    rgbs, alphas, depths = [], [], []
    for ci in range(C):
        ids = torch.nonzero(proj.valid[ci]).squeeze(1)  # [M]
        ids = ids[torch.argsort(proj.depths[ci, ids].detach(), stable=True)]  # front to back
        if sh_degree is not None:
            col = spherical_harmonics(sh_degree, means[ids] - campos[ci], colors[ids]) + 0.5
            col = col.clamp_min(0.0)  # [M, 3]
        else:
            col = colors[ids]  # [M, D]
        bg = background[ci] if background is not None else None
        rgb, alpha, depth = _composite_image(
            proj.means2d[ci, ids],
            proj.conics[ci, ids],
            opacities[ids],
            col,
            proj.depths[ci, ids],
            proj.radii[ci, ids],
            width,
            height,
            bg,
            options,
        )
        rgbs.append(rgb)
        alphas.append(alpha)
        depths.append(depth)
    meta = RasterMeta(
        depth=torch.stack(depths),
        means2d=proj.means2d,
        radii=proj.radii,
        depths=proj.depths,
        conics=proj.conics,
        width=width,
        height=height,
        backend="torch",
    )
    return torch.stack(rgbs), torch.stack(alphas), meta


def _composite_image(
    means2d: Tensor,  # [M, 2] sorted front to back
    conics: Tensor,  # [M, 3]
    opacities: Tensor,  # [M]
    colors: Tensor,  # [M, D]
    depths: Tensor,  # [M]
    radii: Tensor,  # [M, 2] int
    width: int,
    height: int,
    background: Tensor | None,  # [D]
    options: RasterOptions,
) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha-composite M depth-sorted 2D Gaussians into one image -> rgb [H, W, D], alpha [H, W, 1],
    depth [H, W, 1]."""
    M, D = colors.shape
    dev, dt = colors.device, colors.dtype
    ts = options.tile_size
    tw, th = -(-width // ts), -(-height // ts)
    T, P = tw * th, ts * ts

    # which tiles each Gaussian's footprint box can reach (pixel centres of a tile span [x0+0.5, x1-0.5])
    with torch.no_grad():
        m = means2d.detach()
        r = radii.to(m.dtype)
        x0 = torch.arange(tw, device=dev, dtype=m.dtype) * ts + 0.5
        x1 = torch.clamp(x0 + ts - 1, max=width - 0.5)
        y0 = torch.arange(th, device=dev, dtype=m.dtype) * ts + 0.5
        y1 = torch.clamp(y0 + ts - 1, max=height - 0.5)
        hit_x = (m[None, :, 0] + r[None, :, 0] >= x0[:, None]) & (m[None, :, 0] - r[None, :, 0] <= x1[:, None])
        hit_y = (m[None, :, 1] + r[None, :, 1] >= y0[:, None]) & (m[None, :, 1] - r[None, :, 1] <= y1[:, None])
        hits = (hit_y[:, None, :] & hit_x[None, :, :]).reshape(T, M)  # [T, M]
        counts = hits.sum(1)  # [T]
        pairs = torch.nonzero(hits)  # [nnz, 2] (tile, gaussian) sorted by tile then depth rank
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(pairs.shape[0], device=dev) - starts[pairs[:, 0]]
        kmax = int(counts.max()) if T > 0 and M > 0 else 0
        table = torch.full((T, max(kmax, 1)), M, dtype=torch.long, device=dev)  # M = padding row
        table[pairs[:, 0], slot] = pairs[:, 1]
        order = torch.argsort(counts, descending=True, stable=True)  # busy tiles first: tight padding per chunk
        counts_sorted = counts[order].tolist()
        # pixel centres of every tile [T, P, 2] (pixels outside the image are computed and cropped)
        py, px = torch.meshgrid(torch.arange(ts, device=dev), torch.arange(ts, device=dev), indexing="ij")
        tyx = torch.stack(torch.meshgrid(torch.arange(th, device=dev), torch.arange(tw, device=dev), indexing="ij"), -1)
        tile_pix = torch.stack(
            [tyx[..., 1].reshape(T, 1) * ts + px.reshape(1, P), tyx[..., 0].reshape(T, 1) * ts + py.reshape(1, P)], -1
        ).to(dt) + 0.5  # [T, P, 2] (x, y)

    # padded attribute tables (row M is a transparent dummy)
    pad = lambda x: torch.cat([x, x.new_zeros((1,) + x.shape[1:])], 0)  # noqa: E731
    means_p, conics_p, opac_p, colors_p, depths_p = (
        pad(means2d), pad(conics), pad(opacities), pad(colors), pad(depths)
    )

    out_rgb, out_acc, out_depth = [], [], []
    i = 0
    while i < T:
        k = counts_sorted[i]
        if k == 0:  # every remaining tile is empty
            n = T - i
            out_rgb.append(colors.new_zeros(n, P, D))
            out_acc.append(colors.new_zeros(n, P))
            out_depth.append(colors.new_zeros(n, P))
            break
        n = max(1, min(T - i, options.max_chunk_elements // (P * k)))
        rows = order[i : i + n]
        idx = table[rows, :k]  # [n, k]
        rgb, acc, dep = _composite_tiles(
            tile_pix[rows], means_p[idx], conics_p[idx], opac_p[idx], colors_p[idx], depths_p[idx], options
        )
        out_rgb.append(rgb)
        out_acc.append(acc)
        out_depth.append(dep)
        i += n

    inv = torch.argsort(order)
    rgb = torch.cat(out_rgb)[inv]  # [T, P, D]
    acc = torch.cat(out_acc)[inv]  # [T, P]
    dep = torch.cat(out_depth)[inv]  # [T, P]

    def to_image(x: Tensor) -> Tensor:  # [T, P, X] -> [H, W, X]
        X = x.shape[-1]
        return x.reshape(th, tw, ts, ts, X).permute(0, 2, 1, 3, 4).reshape(th * ts, tw * ts, X)[:height, :width]

    rgb, acc, dep = to_image(rgb), to_image(acc[..., None]), to_image(dep[..., None])
    if background is not None:
        rgb = rgb + (1.0 - acc) * background
    return rgb, acc, dep


def _composite_tiles(
    pix: Tensor,  # [n, P, 2] pixel centres
    means2d: Tensor,  # [n, k, 2] per tile, front to back
    conics: Tensor,  # [n, k, 3]
    opacities: Tensor,  # [n, k]
    colors: Tensor,  # [n, k, D]
    depths: Tensor,  # [n, k]
    options: RasterOptions,
) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of k Gaussians over the P pixels of each of n tiles -> rgb [n, P, D],
    accumulated alpha [n, P], accumulated depth [n, P]."""
    d = pix[:, :, None, :] - means2d[:, None, :, :]  # [n, P, k, 2]
    dx, dy = d[..., 0], d[..., 1]
    ca, cb, cc = conics[:, None, :, 0], conics[:, None, :, 1], conics[:, None, :, 2]
    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy  # [n, P, k]
    alpha = torch.clamp(opacities[:, None, :] * torch.exp(-sigma), max=options.alpha_max)
    alpha = torch.where((alpha >= options.alpha_min) & (sigma >= 0), alpha, torch.zeros_like(alpha))
    log_t = torch.log1p(-alpha)  # log(1 - αᵢ)
    cum = torch.cumsum(log_t, dim=-1)  # log Tᵢ₊₁
    with torch.no_grad():  # 3DGS: stop before the Gaussian that would take T below the threshold
        keep = cum >= math.log(options.min_transmittance)
    weights = alpha * torch.exp(cum - log_t) * keep  # αᵢ·Tᵢ  [n, P, k]
    rgb = torch.einsum("npk,nkd->npd", weights, colors)
    acc = weights.sum(-1)
    dep = torch.einsum("npk,nk->np", weights, depths)
    return rgb, acc, dep


# --------------------------------------------------------------------------------------------------
# gsplat backend

_gsplat_announced = False


def _import_gsplat():
    global _gsplat_announced
    import gsplat  # noqa: PLC0415  (lazy: importing must never need CUDA)

    if not _gsplat_announced:
        logger.warning(
            "gsplat %s: its CUDA kernels are compiled on first use (about 2 minutes on an H100, cached afterwards)",
            getattr(gsplat, "__version__", "?"),
        )
        stale = stale_build_lock("gsplat_cuda")
        if stale is not None:
            logger.warning(
                "gsplat's CUDA build lock %s is %d minutes old: unless another process is compiling gsplat right now, "
                "an earlier build was interrupted and this run will wait on it forever; delete that file and run again",
                stale[0], stale[1] // 60,
            )
        _gsplat_announced = True
    return gsplat


def _rasterize_gsplat(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] or [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    background: Tensor | None,  # [C, D] or None
    sh_degree: int | None,
    options: RasterOptions,
) -> tuple[Tensor, Tensor, RasterMeta]:
    gsplat = _import_gsplat()
    render, alpha, info = gsplat.rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane=options.near_plane,
        far_plane=options.far_plane,
        eps2d=options.eps2d,
        sh_degree=sh_degree,
        packed=False,  # keeps means2d / radii as dense [C, N, ...] tensors
        backgrounds=background,
        render_mode="RGB+D",  # depth is the last channel (Σ wᵢ·zᵢ); gsplat pads the background with 0
        rasterize_mode="classic",
    )
    means2d = info["means2d"]  # [C, N, 2]
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = info["radii"]
    if radii.dim() == 2:  # gsplat < 1.5: one radius per Gaussian
        radii = radii[..., None].expand(-1, -1, 2)
    meta = RasterMeta(
        depth=render[..., -1:],
        means2d=means2d,
        radii=radii.to(torch.int32),
        depths=info["depths"],
        conics=info["conics"],
        width=width,
        height=height,
        backend="gsplat",
    )
    return render[..., :-1], alpha, meta
