"""Tetrahedral grids for DMTet, generated here (threestudio ships Quartet files `load/tets/{32,64,128}_tets.npz`).

A grid of resolution R fills the unit cube [0, 1]³ with (R/2)³ cubes, each split into the 6 tetrahedra of its
Kuhn (Freudenthal) subdivision: every tetrahedron runs from the cube's corner (0, 0, 0) to (1, 1, 1) along the
three axes in one of the 3! orders. All cubes are split the same way, so neighbouring cubes share their face
diagonals and the grid is conforming. R = 128 gives 65³ = 274,625 vertices and 1,572,864 tetrahedra, the size of
threestudio's Quartet grid of that name; the tetrahedron edges along the axes are 2/R long.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class TetGrid:
    vertices: torch.Tensor
    """[V, 3] float32 positions in [0, 1]³."""
    tets: torch.Tensor
    """[T, 4] int64 vertex indices, each tetrahedron positively oriented."""
    resolution: int

    @property
    def edge_length(self) -> float:
        """Length of the axis-aligned tetrahedron edges (one cube side)."""
        return 2.0 / self.resolution


def _kuhn_corners() -> list[tuple[int, int, int, int]]:
    """The 6 tetrahedra of a unit cube as corner indices (bit 0: x, bit 1: y, bit 2: z), positively oriented."""
    tets = []
    for order in itertools.permutations(range(3)):
        corners, bits = [0], 0
        for axis in order:
            bits |= 1 << axis
            corners.append(bits)
        inversions = sum(1 for i in range(3) for j in range(i + 1, 3) if order[i] > order[j])
        if inversions % 2:  # an odd axis order gives a negative determinant: swap two corners
            corners[1], corners[2] = corners[2], corners[1]
        tets.append(tuple(corners))
    return tets


@lru_cache(maxsize=4)
def _build(resolution: int) -> TetGrid:
    n = resolution // 2  # cubes per axis
    axis = torch.arange(n + 1)
    ix, iy, iz = torch.meshgrid(axis, axis, axis, indexing="ij")
    vertices = torch.stack([ix, iy, iz], -1).reshape(-1, 3).float() / n
    cube = torch.arange(n)
    cx, cy, cz = (c.reshape(-1) for c in torch.meshgrid(cube, cube, cube, indexing="ij"))

    def corner_index(bits: int) -> torch.Tensor:
        x, y, z = cx + (bits & 1), cy + ((bits >> 1) & 1), cz + ((bits >> 2) & 1)
        return (x * (n + 1) + y) * (n + 1) + z

    corners = [corner_index(b) for b in range(8)]
    tets = torch.stack([torch.stack([corners[c] for c in tet], -1) for tet in _kuhn_corners()], 1).reshape(-1, 4)
    return TetGrid(vertices, tets, resolution)


def tet_grid(resolution: int) -> TetGrid:
    """The grid of this resolution (an even number >= 2; threestudio's are 32, 64, 128), built once per process."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2 or resolution % 2:
        raise ValueError(f"tetrahedral grid resolution must be an even integer >= 2 (32, 64, 128); got {resolution!r}")
    return _build(resolution)
