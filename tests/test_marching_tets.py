"""Generated tetrahedral grids and marching tetrahedra: exact geometry of the grid, a sphere's area and volume, an
independent per-tetrahedron implementation, and gradients with respect to the SDF and the grid positions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import ConvexHull

from hash3d.scene.marching_tets import marching_tetrahedra
from hash3d.scene.tet_grid import tet_grid


def signed_volumes(vertices, tets):
    v = vertices[tets]
    return torch.linalg.det(torch.stack([v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], v[:, 3] - v[:, 0]], 1)) / 6


def area_and_volume(points, faces):
    a, b, c = points[faces[:, 0]], points[faces[:, 1]], points[faces[:, 2]]
    area = torch.cross(b - a, c - a, dim=-1).norm(dim=-1).sum() / 2
    volume = (a * torch.cross(b, c, dim=-1)).sum() / 6
    return float(area), float(volume)


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_grid_fills_the_unit_cube_conformingly(resolution):
    grid = tet_grid(resolution)
    n = resolution // 2
    assert grid.vertices.shape == ((n + 1) ** 3, 3) and grid.tets.shape == (6 * n**3, 4)
    assert grid.vertices.min() == 0 and grid.vertices.max() == 1
    vol = signed_volumes(grid.vertices.double(), grid.tets)
    assert (vol > 0).all() and torch.allclose(vol.sum(), torch.tensor(1.0, dtype=torch.float64))
    if resolution == 32:  # conforming: every triangle is shared by two tetrahedra, or lies on the cube's boundary
        faces = torch.cat([grid.tets[:, [0, 1, 2]], grid.tets[:, [0, 1, 3]], grid.tets[:, [0, 2, 3]], grid.tets[:, [1, 2, 3]]])
        _, counts = torch.unique(faces.sort(1).values, dim=0, return_counts=True)
        boundary_triangles = 6 * 2 * n * n
        assert counts.max() == 2 and int((counts == 1).sum()) == boundary_triangles
    assert tet_grid(resolution) is grid  # built once


def test_grid_resolution_is_checked():
    with pytest.raises(ValueError, match="even integer"):
        tet_grid(33)


@pytest.mark.parametrize("resolution", [32, 64])
def test_sphere_area_and_volume(resolution):
    grid = tet_grid(resolution)
    r = 0.3
    points, faces = marching_tetrahedra(grid.vertices.double(), grid.tets, (grid.vertices.double() - 0.5).norm(dim=-1) - r)
    area, volume = area_and_volume(points, faces)
    tol = 0.02 if resolution == 64 else 0.03
    assert abs(area / (4 * math.pi * r * r) - 1) < tol
    assert abs(volume / (4 / 3 * math.pi * r**3) - 1) < tol  # positive: the faces point outwards
    # a closed surface: every edge belongs to exactly two faces
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(1).values
    _, counts = torch.unique(edges, dim=0, return_counts=True)
    assert (counts == 2).all()


def slow_marching_tets(vertices: np.ndarray, tets: np.ndarray, sdf: np.ndarray):
    """Per tetrahedron, from scratch: the crossing points of its edges, the area of the planar piece of surface
    they span, and the volume of the part of the tetrahedron where the linear interpolant is negative."""
    area = volume = 0.0
    crossings = set()
    for tet in tets:
        s, p = sdf[tet], vertices[tet]
        inside = s < 0
        if inside.all():
            volume += abs(np.linalg.det(p[1:] - p[0])) / 6
            continue
        if not inside.any():
            continue
        cut = []
        for i in range(4):
            for j in range(i + 1, 4):
                if inside[i] != inside[j]:
                    t = s[i] / (s[i] - s[j])
                    cut.append(p[i] + t * (p[j] - p[i]))
        cut = np.array(cut)
        crossings.update(tuple(np.round(c, 9)) for c in cut)
        centre = cut.mean(0)
        normal = np.cross(cut[1] - cut[0], cut[2] - cut[0])
        basis_u = (cut[0] - centre) / np.linalg.norm(cut[0] - centre)
        basis_v = np.cross(normal / np.linalg.norm(normal), basis_u)
        angles = np.arctan2((cut - centre) @ basis_v, (cut - centre) @ basis_u)
        ring = cut[np.argsort(angles)]
        for k in range(1, len(ring) - 1):
            area += np.linalg.norm(np.cross(ring[k] - ring[0], ring[k + 1] - ring[0])) / 2
        volume += ConvexHull(np.concatenate([p[inside], cut])).volume
    return area, volume, crossings


def test_matches_an_independent_per_tetrahedron_implementation():
    grid = tet_grid(12)
    gen = torch.Generator().manual_seed(0)
    vertices = grid.vertices.double() + (torch.rand(grid.vertices.shape, generator=gen, dtype=torch.float64) - 0.5) * 0.05
    x = vertices - 0.5
    sdf = (x / torch.tensor([0.35, 0.25, 0.3], dtype=torch.float64)).norm(dim=-1) - 1 + 0.2 * torch.sin(7 * x[:, 0])
    points, faces = marching_tetrahedra(vertices, grid.tets, sdf)
    area, volume = area_and_volume(points, faces)
    slow_area, slow_volume, slow_points = slow_marching_tets(vertices.numpy(), grid.tets.numpy(), sdf.numpy())
    assert area == pytest.approx(slow_area, rel=1e-9)
    assert volume == pytest.approx(slow_volume, rel=1e-9)
    assert {tuple(np.round(p, 9)) for p in points.numpy()} == slow_points
    assert len(slow_points) == points.shape[0]


def test_empty_and_full_grids_give_no_faces():
    grid = tet_grid(4)
    for value in (1.0, -1.0):
        points, faces = marching_tetrahedra(grid.vertices, grid.tets, torch.full((grid.vertices.shape[0],), value))
        assert points.shape == (0, 3) and faces.shape == (0, 3)


def test_differentiable_in_sdf_and_positions():
    grid = tet_grid(4)
    base = grid.vertices.double()
    sdf0 = (base - 0.5).norm(dim=-1) - 0.33  # no grid vertex within 0.01 of the surface: the topology is fixed
    assert (sdf0.abs() > 0.01).all()
    _, faces = marching_tetrahedra(base, grid.tets, sdf0)

    def surface(sdf, offset):
        points, f = marching_tetrahedra(base + offset, grid.tets, sdf)
        assert torch.equal(f, faces)
        return points

    sdf = sdf0.clone().requires_grad_()
    offset = torch.zeros_like(base, requires_grad=True)
    assert torch.autograd.gradcheck(surface, (sdf, offset), eps=1e-6, atol=1e-6)
