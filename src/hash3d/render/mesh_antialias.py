"""Silhouette anti-aliasing of rasterised images, differentiable in the vertex positions (the idea of nvdiffrast's
`antialias`, in torch).

For each pair of horizontally or vertically neighbouring pixels that show different things, one of them is taken
as the front: the covered one when the other shows the background, else (when per-pixel depth is given) the one
nearer the camera. The front pixel's triangle has an edge that crosses the segment between the two pixel centres
at a fraction t of the way (from its screen-space barycentrics, extrapolated to the other pixel). Each pixel is
taken to own the half of the segment next to it: when t > 1/2 the triangle reaches into the far pixel, which gets
the front colour with weight t − 1/2; when t < 1/2 the front pixel gets the far pixel's colour (the background, or
the farther part of the mesh) with weight 1/2 − t. Because t depends on the projected vertices, the image has
gradients with respect to the silhouette's position, which a hard coverage test alone does not give.

Between two triangles of the mesh only silhouette edges are blended (nvdiffrast's rule): the edge through which
the segment leaves the front triangle must be a boundary edge of the mesh (one face), an edge shared by more than
two faces, or an edge whose two faces lie on the same side of it on screen (one faces the camera, the other away).
Edges between neighbouring triangles of one smooth surface are left as rasterised, as are pairs where the segment
does not leave the front triangle. The edge-to-face adjacency comes from `faces` on every call.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _cross(u: Tensor, v: Tensor) -> Tensor:
    """z component of the cross product of screen vectors [..., 2]."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _edge_barycentric(p: Tensor, tri: Tensor) -> Tensor:
    """Screen points p [K, 2], triangles [K, 3, 2] -> barycentrics [K, 3] (may be negative outside)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = _cross(b - a, c - a)
    area = torch.where(area.abs() > 1e-12, area, torch.full_like(area, 1e-12))
    l1 = _cross(p - a, c - a) / area
    l2 = _cross(b - a, p - a) / area
    return torch.stack([1.0 - l1 - l2, l1, l2], -1)


def _opposite_across_edges(faces: Tensor, num_vertices: int) -> Tensor:
    """faces [F, 3] -> [F, 3]: for the edge opposite corner k of face f, the corner of the one other face on that
    edge that is not on the edge; −1 where the edge has one face (boundary) or more than two (non-manifold)."""
    F = faces.shape[0]
    # edge k of a face joins its corners k+1 and k+2, opposite corner k
    ends = torch.stack([faces[:, [1, 2]], faces[:, [2, 0]], faces[:, [0, 1]]], 1).reshape(-1, 2)
    lo, hi = ends.min(1).values, ends.max(1).values
    key = lo * num_vertices + hi
    sorted_key, order = torch.sort(key, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_key, return_inverse=True, return_counts=True)
    pair = counts[inverse] == 2
    pos = torch.arange(sorted_key.shape[0], device=faces.device)
    next_same = torch.zeros_like(pair)
    next_same[:-1] = sorted_key[1:] == sorted_key[:-1]
    partner_pos = torch.where(next_same, pos + 1, pos - 1).clamp(0, max(sorted_key.shape[0] - 1, 0))
    partner = order[partner_pos]  # the other half-edge, as a flat (face, k) index
    opposite_vertex = faces.reshape(-1)[partner]  # corner k of a face lies opposite its edge k
    result = torch.full_like(key, -1)
    result[order] = torch.where(pair, opposite_vertex, torch.full_like(opposite_vertex, -1))
    return result.reshape(F, 3)


def antialias(image: Tensor, face_id: Tensor, pixels: Tensor, faces: Tensor, depth: Tensor | None = None) -> Tensor:
    """image [C, H, W, D] (mesh composited over the background), face_id [C, H, W] (−1 on background), pixels
    [C, V, 2] projected vertices (pixel (row i, column j) has its centre at (j + 0.5, i + 0.5)), faces [F, 3],
    depth [C, H, W] or [C, H, W, 1] camera depth of the visible surface (the rasteriser's `meta.depth`; without it
    only mesh-against-background edges are blended) -> the image with its silhouettes blended."""
    C, H, W, D = image.shape
    faces = faces.long()
    if depth is not None and depth.dim() == 4:
        depth = depth[..., 0]
    if depth is not None and depth.shape != (C, H, W):
        raise ValueError(f"expected depth [C, H, W] or [C, H, W, 1] = [{C}, {H}, {W}(, 1)]; got {tuple(depth.shape)}")
    flat = image.reshape(-1, D)
    delta = torch.zeros_like(flat)
    cams = torch.arange(C, device=image.device)[:, None, None]
    rows = torch.arange(H, device=image.device)[None, :, None]
    cols = torch.arange(W, device=image.device)[None, None, :]
    across = None
    for dr, dc in ((0, 1), (1, 0)):
        a_id, b_id = face_id[:, : H - dr, : W - dc], face_id[:, dr:, dc:]
        to_background = (a_id >= 0) != (b_id >= 0)
        occluding = (a_id >= 0) & (b_id >= 0) & (a_id != b_id) if depth is not None else torch.zeros_like(to_background)
        edge = to_background | occluding
        if not edge.any():
            continue
        c, r, col = (x.expand(C, H - dr, W - dc)[edge] for x in (cams, rows[:, : H - dr], cols[:, :, : W - dc]))
        occ = occluding[edge]
        if depth is not None:
            a_front = torch.where(occ, depth[:, : H - dr, : W - dc][edge] <= depth[:, dr:, dc:][edge], a_id[edge] >= 0)
        else:
            a_front = a_id[edge] >= 0
        # f: the front pixel, g: its neighbour (background or a farther part of the mesh)
        fr, fc = torch.where(a_front, r, r + dr), torch.where(a_front, col, col + dc)
        gr, gc = torch.where(a_front, r + dr, r), torch.where(a_front, col + dc, col)
        front_face = face_id[c, fr, fc]
        tri = pixels[c[:, None], faces[front_face]]  # [K, 3, 2]
        centre = lambda rr, cc: torch.stack([cc, rr], -1).to(pixels.dtype) + 0.5  # noqa: E731
        lf, lg = _edge_barycentric(centre(fr, fc), tri), _edge_barycentric(centre(gr, gc), tri)
        leaves = lg < 0
        crossing = torch.where(leaves, lf / (lf - lg).clamp_min(1e-12), torch.ones_like(lf))
        first, k = crossing.min(-1)
        t = first.clamp(0.0, 1.0)[:, None].to(image.dtype)
        blend = torch.ones_like(occ)
        if occ.any():
            if across is None:
                across = _opposite_across_edges(faces, pixels.shape[1])
            # silhouette test for the edge k of the front face through which the segment leaves it
            other = across[front_face, k]
            p_own = tri[torch.arange(k.shape[0], device=k.device), k]
            p_a = tri.gather(1, ((k + 1) % 3)[:, None, None].expand(-1, 1, 2))[:, 0]
            p_b = tri.gather(1, ((k + 2) % 3)[:, None, None].expand(-1, 1, 2))[:, 0]
            p_other = pixels[c, other.clamp_min(0)]
            # the two faces lie on the same side of the edge on screen: one faces the camera, the other away
            same_side = _cross(p_b - p_a, p_own - p_a) * _cross(p_b - p_a, p_other - p_a) > 0
            silhouette = (other < 0) | same_side
            blend = ~occ | (leaves.any(-1) & silhouette)
        t = torch.where(blend[:, None], t, torch.full_like(t, 0.5))  # t = 1/2: no blending either way
        fi, gi = (c * H + fr) * W + fc, (c * H + gr) * W + gc
        color_f, color_g = flat[fi], flat[gi]
        delta = delta.index_add(0, gi, (t - 0.5).clamp_min(0) * (color_f - color_g))
        delta = delta.index_add(0, fi, (0.5 - t).clamp_min(0) * (color_g - color_f))
    return image + delta.reshape(C, H, W, D)
