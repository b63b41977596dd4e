"""UV unwrap (xatlas) and albedo baking: every texel covered by a triangle gets the field's albedo at the
surface point it maps to; empty texels next to charts are filled from their neighbours so bilinear lookups at
chart borders (and mip-maps) do not bleed the background colour in.

Texel (row i, column j) of an S×S texture has its centre at uv = ((j + 0.5)/S, 1 − (i + 0.5)/S): row 0 is the top
of the image and v = 0 the bottom, as OBJ/MTL, glTF (after its own flip) and Blender expect.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..scene.isosurface import Mesh, field_chunk


def unwrap_uv(mesh: Mesh, texture_size: int = 1024, padding: int = 2) -> Mesh:
    """Mesh with per-vertex uv [V', 2]; vertices (and colours) are duplicated along chart seams."""
    import xatlas

    if mesh.n_faces == 0:
        raise ValueError("cannot unwrap a mesh without faces")
    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.numpy().astype(np.float32), mesh.faces.numpy().astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.padding = padding
    pack.resolution = texture_size
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    vmap = torch.from_numpy(vmapping.astype(np.int64))
    return replace(
        mesh,
        vertices=mesh.vertices[vmap],
        faces=torch.from_numpy(indices.astype(np.int64)),
        colors=None if mesh.colors is None else mesh.colors[vmap],
        uv=torch.from_numpy(uvs.astype(np.float32)),
        texture=None,
    )


def _cross2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def rasterize_uv(
    uv: torch.Tensor,  # [V, 2]
    faces: torch.Tensor,  # [F, 3]
    size: int,
    max_elements: int = 2**22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which triangle covers each texel centre, and where: face id [S, S] (−1 = none), barycentrics [S, S, 3]."""
    px = torch.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], -1).double()  # (column, row)
    tri = px[faces]  # [F, 3, 2]
    lo = tri.amin(1).ceil().clamp(0, size - 1).long()
    hi = tri.amax(1).floor().clamp(0, size - 1).long()
    width = (hi[:, 0] - lo[:, 0] + 1).clamp(min=0)
    height = (hi[:, 1] - lo[:, 1] + 1).clamp(min=0)
    count = width * height
    face_id = torch.full((size, size), -1, dtype=torch.long)
    bary = torch.zeros(size, size, 3)
    ends = torch.cumsum(count, 0)
    start = 0
    while start < faces.shape[0]:
        base = ends[start] - count[start]
        stop = int(torch.searchsorted(ends, base + max_elements, right=True))
        stop = max(stop, start + 1)
        f = torch.arange(start, stop)
        c = count[f]
        rep = f.repeat_interleave(c)
        local = torch.arange(int(c.sum())) - (torch.cumsum(c, 0) - c).repeat_interleave(c)
        col = lo[rep, 0] + local % width[rep]
        row = lo[rep, 1] + local // width[rep].clamp(min=1)
        p = torch.stack([col, row], -1).double()
        a, b, cc = tri[rep, 0], tri[rep, 1], tri[rep, 2]
        area = _cross2(b - a, cc - a)
        ok = area.abs() > 1e-12
        area = torch.where(ok, area, torch.ones_like(area))
        l1 = _cross2(p - a, cc - a) / area
        l2 = _cross2(b - a, p - a) / area
        lam = torch.stack([1.0 - l1 - l2, l1, l2], -1)
        inside = ok & (lam >= -1e-6).all(-1)
        face_id[row[inside], col[inside]] = rep[inside]
        bary[row[inside], col[inside]] = lam[inside].float()
        start = stop
    return face_id, bary


def fill_empty_texels(texture: torch.Tensor, covered: torch.Tensor, iterations: int = 16) -> torch.Tensor:
    """Grow colours [S, S, 3] from covered texels [S, S] into empty ones, `iterations` texels deep; the rest
    gets the mean covered colour."""
    t = (texture * covered[..., None]).permute(2, 0, 1)[None]
    m = covered[None, None].float()
    kernel = torch.ones(1, 1, 3, 3)
    for _ in range(iterations):
        if bool(m.bool().all()):
            break
        s = F.conv2d(t, kernel.expand(3, 1, 3, 3), padding=1, groups=3)
        c = F.conv2d(m, kernel, padding=1)
        new = (c > 0) & (m == 0)
        t = torch.where(new, s / c.clamp(min=1), t)
        m = torch.where(new, torch.ones_like(m), m)
    out = t[0].permute(1, 2, 0)
    filled = m[0, 0].bool()
    if not bool(filled.all()):
        fallback = texture[covered].mean(0) if bool(covered.any()) else torch.full((3,), 0.5)
        out = torch.where(filled[..., None], out, fallback)
    return out


@torch.no_grad()
def bake_texture(
    mesh: Mesh,  # with uv
    albedo_fn: Callable[[torch.Tensor], torch.Tensor],  # world points [K, 3] -> albedo [K, 3]
    texture_size: int = 1024,
    chunk_size: int | None = None,
    device: torch.device | str = "cpu",
) -> Mesh:
    """Texture [S, S, 3] holding albedo_fn at the surface point of every covered texel."""
    if mesh.uv is None:
        raise ValueError("bake_texture needs a mesh with uv (unwrap_uv first)")
    face_id, bary = rasterize_uv(mesh.uv, mesh.faces, texture_size)
    covered = face_id >= 0
    corners = mesh.vertices[mesh.faces[face_id[covered]]]  # [K, 3, 3]
    points = (bary[covered][..., None] * corners).sum(1)
    texture = torch.zeros(texture_size, texture_size, 3)
    if points.shape[0]:
        chunk_size = chunk_size or field_chunk(device)
        colors = torch.cat([albedo_fn(p.to(device)).float().cpu() for p in points.split(chunk_size)])
        texture[covered] = colors.clamp(0, 1)
    return replace(mesh, texture=fill_empty_texels(texture, covered))
