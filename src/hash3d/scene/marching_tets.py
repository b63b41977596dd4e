"""Marching tetrahedra: the zero level set of an SDF sampled at the vertices of a tetrahedral grid, as triangles.

Inside is sdf < 0. On every grid edge whose ends lie on different sides the surface vertex is the zero of the
linear interpolant, (p_a·s_b − p_b·s_a) / (s_b − s_a), so the mesh's vertices are differentiable functions of the
SDF values and of the (deformed) grid positions; the topology (which edges cross, which triangles exist) is
decided without gradients. A tetrahedron with one vertex on its own side gives one triangle, one with two on each
side a planar quad split into two. Faces are ordered counter-clockwise seen from outside.
"""

from __future__ import annotations

import torch

# the 6 edges of a tetrahedron by local corner index, and per inside-corner bit mask the triangles as edge indices
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _edge(a: int, b: int) -> int:
    return TET_EDGES.index((min(a, b), max(a, b)))


def _triangle_table() -> tuple[torch.Tensor, torch.Tensor]:
    """[16, 2, 3] local edge indices of each case's triangles (−1 padding) and [16] triangle counts."""
    table = torch.full((16, 2, 3), -1, dtype=torch.long)
    count = torch.zeros(16, dtype=torch.long)
    for case in range(16):
        inside = [i for i in range(4) if case >> i & 1]
        outside = [i for i in range(4) if not case >> i & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[case, 0] = torch.tensor([_edge(lone, o) for o in others])
            count[case] = 1
        elif len(inside) == 2:
            (a, b), (c, d) = inside, outside
            quad = [_edge(a, c), _edge(a, d), _edge(b, d), _edge(b, c)]  # cyclic around the quad
            table[case, 0] = torch.tensor([quad[0], quad[1], quad[2]])
            table[case, 1] = torch.tensor([quad[0], quad[2], quad[3]])
            count[case] = 2
    return table, count


_TABLE, _COUNT = _triangle_table()


def marching_tetrahedra(
    vertices: torch.Tensor, tets: torch.Tensor, sdf: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """vertices [V, 3] (grid positions, deformed or not), tets [T, 4], sdf [V] or [V, 1]
    -> surface vertices [M, 3] (differentiable in `vertices` and `sdf`) and faces [F, 3] int64 (outward)."""
    sdf = sdf.reshape(-1)
    device = vertices.device
    with torch.no_grad():
        inside = sdf < 0
        occupied = inside[tets]  # [T, 4]
        n_inside = occupied.sum(1)
        valid = (n_inside > 0) & (n_inside < 4)
        vt, occ = tets[valid], occupied[valid]
        if vt.shape[0] == 0:
            return vertices.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=device)
        pairs = vt[:, torch.tensor(TET_EDGES, device=device)]  # [Tv, 6, 2]
        lo, hi = pairs.min(-1).values, pairs.max(-1).values
        keys, inverse = torch.unique(lo * vertices.shape[0] + hi, return_inverse=True)
        ea, eb = keys // vertices.shape[0], keys % vertices.shape[0]
        crossing = inside[ea] != inside[eb]
        new_index = torch.cumsum(crossing.long(), 0) - 1
        edge_vertex = new_index[inverse].reshape(-1, 6)  # [Tv, 6]; meaningful on crossing edges only
        case = (occ.long() * torch.tensor([1, 2, 4, 8], device=device)).sum(1)
        local = _TABLE.to(device)[case]  # [Tv, 2, 3]
        keep = torch.arange(2, device=device)[None] < _COUNT.to(device)[case][:, None]  # [Tv, 2]
        faces = torch.gather(edge_vertex, 1, local.clamp_min(0).reshape(-1, 6)).reshape(-1, 2, 3)[keep]
        owner = torch.arange(vt.shape[0], device=device)[:, None].expand(-1, 2)[keep]
        a, b = ea[crossing], eb[crossing]

    sa, sb = sdf[a, None], sdf[b, None]
    points = (vertices[a] * sb - vertices[b] * sa) / (sb - sa)

    with torch.no_grad():  # turn every triangle to face from the inside corners towards the outside ones
        p = points.detach()
        normal = torch.cross(p[faces[:, 1]] - p[faces[:, 0]], p[faces[:, 2]] - p[faces[:, 0]], dim=-1)
        corners = vertices.detach()[vt[owner]]  # [F, 4, 3]
        w_in = occ[owner].to(corners.dtype)[..., None]
        outward = (corners * (1 - w_in)).sum(1) / (1 - w_in).sum(1) - (corners * w_in).sum(1) / w_in.sum(1)
        flip = (normal * outward).sum(-1) < 0
        faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    return points, faces
