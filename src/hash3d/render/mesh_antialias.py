"""Silhouette anti-aliasing of rasterised images, differentiable in the vertex positions (the idea of nvdiffrast's
`antialias`, in torch, for mesh-against-background edges).

For each pair of horizontally or vertically neighbouring pixels where one shows the mesh and the other the
background, the covering triangle's edge crosses the segment between the two pixel centres at a fraction t of the
way (from its screen-space barycentrics, extrapolated to the empty pixel). Each pixel is taken to own the half of
the segment next to it: when t > 1/2 the triangle reaches into the empty pixel, which gets its colour with weight
t − 1/2; when t < 1/2 the covered pixel gets the background's colour with weight 1/2 − t. Because t depends on the
projected vertices, the image has gradients with respect to the silhouette's position, which a hard coverage test
alone does not give. Edges between two triangles of the mesh are left as rasterised.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _edge_barycentric(p: Tensor, tri: Tensor) -> Tensor:
    """Screen points p [K, 2], triangles [K, 3, 2] -> barycentrics [K, 3] (may be negative outside)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]

    def cross(u, v):
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    area = cross(b - a, c - a)
    area = torch.where(area.abs() > 1e-12, area, torch.full_like(area, 1e-12))
    l1 = cross(p - a, c - a) / area
    l2 = cross(b - a, p - a) / area
    return torch.stack([1.0 - l1 - l2, l1, l2], -1)


def antialias(image: Tensor, face_id: Tensor, pixels: Tensor, faces: Tensor) -> Tensor:
    """image [C, H, W, D] (mesh composited over the background), face_id [C, H, W] (−1 on background), pixels
    [C, V, 2] projected vertices (pixel (row i, column j) has its centre at (j + 0.5, i + 0.5)), faces [F, 3]
    -> the image with its silhouettes blended."""
    C, H, W, D = image.shape
    out = image
    flat = image.reshape(-1, D)
    delta = torch.zeros_like(flat)
    cams = torch.arange(C, device=image.device)[:, None, None]
    rows = torch.arange(H, device=image.device)[None, :, None]
    cols = torch.arange(W, device=image.device)[None, None, :]
    for dr, dc in ((0, 1), (1, 0)):
        a_id, b_id = face_id[:, : H - dr, : W - dc], face_id[:, dr:, dc:]
        edge = (a_id >= 0) != (b_id >= 0)
        if not edge.any():
            continue
        c, r, col = (x.expand(C, H - dr, W - dc)[edge] for x in (cams, rows[:, : H - dr], cols[:, :, : W - dc]))
        a_covered = a_id[edge] >= 0
        # f: the covered pixel, g: the empty neighbour
        fr, fc = torch.where(a_covered, r, r + dr), torch.where(a_covered, col, col + dc)
        gr, gc = torch.where(a_covered, r + dr, r), torch.where(a_covered, col + dc, col)
        tri = pixels[c[:, None], faces[face_id[c, fr, fc]]]  # [K, 3, 2]
        centre = lambda rr, cc: torch.stack([cc, rr], -1).to(pixels.dtype) + 0.5  # noqa: E731
        lf, lg = _edge_barycentric(centre(fr, fc), tri), _edge_barycentric(centre(gr, gc), tri)
        crossing = torch.where(lg < 0, lf / (lf - lg).clamp_min(1e-12), torch.ones_like(lf))
        t = crossing.min(-1).values.clamp(0.0, 1.0)[:, None].to(image.dtype)
        fi, gi = (c * H + fr) * W + fc, (c * H + gr) * W + gc
        color_f, color_g = flat[fi], flat[gi]
        delta = delta.index_add(0, gi, (t - 0.5).clamp_min(0) * (color_f - color_g))
        delta = delta.index_add(0, fi, (0.5 - t).clamp_min(0) * (color_g - color_f))
    return out + delta.reshape(C, H, W, D)
