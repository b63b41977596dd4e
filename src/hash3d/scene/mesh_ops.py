"""Differentiable quantities of a triangle mesh: vertex normals, unique edges, and the two mesh regularisers of
threestudio's refine stages (normal consistency and the uniform Laplacian)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[V, 3] unit normals: the faces' cross products (area-weighted) summed at their corners; (0, 0, 1) where that
    sum vanishes (isolated or degenerate vertices)."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    face_normal = torch.cross(b - a, c - a, dim=-1)
    summed = torch.zeros_like(vertices).index_add(0, faces.reshape(-1), face_normal.repeat_interleave(3, 0))
    length = summed.norm(dim=-1, keepdim=True)
    fallback = torch.tensor([0.0, 0.0, 1.0], dtype=vertices.dtype, device=vertices.device).expand_as(summed)
    return torch.where(length > 1e-20, summed / length.clamp_min(1e-20), fallback)


def unique_edges(faces: torch.Tensor) -> torch.Tensor:
    """[E, 2] the mesh's edges, each once, smaller index first."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(1).values
    return torch.unique(edges, dim=0)


def normal_consistency(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean over edges of 1 − cos(normal at one end, normal at the other)."""
    n = vertex_normals(vertices, faces)
    e = unique_edges(faces)
    return (1.0 - F.cosine_similarity(n[e[:, 0]], n[e[:, 1]], dim=-1)).mean()


def laplacian_smoothness(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean over vertices of |deg(i)·v_i − Σ_{j ~ i} v_j| (the uniform Laplacian L = D − A applied to the positions)."""
    e = unique_edges(faces)
    both = torch.cat([e, e.flip(1)])  # every edge in both directions
    neighbours = torch.zeros_like(vertices).index_add(0, both[:, 0], vertices[both[:, 1]])
    degree = torch.zeros(vertices.shape[0], 1, dtype=vertices.dtype, device=vertices.device).index_add(
        0, both[:, 0], torch.ones(both.shape[0], 1, dtype=vertices.dtype, device=vertices.device)
    )
    return (degree * vertices - neighbours).norm(dim=-1).mean()
