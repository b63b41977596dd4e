"""Isosurface of a density field: density grid -> marching cubes -> cleaned, coloured triangle mesh.

threestudio's exporter: a grid at `resolution` over the box, the surface density = threshold (25 for the implicit
volume), then a second pass at the same resolution inside the first mesh's bounding box grown by 10%, and
connected components with under 1% of the faces removed. Here marching cubes (PyMCubes) replaces marching
tetrahedra; vertex colours are the field's albedo at the vertices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import torch

from ..config.errors import UserInputError
from .field import RadianceField


@dataclass
class IsosurfaceConfig:
    """Mesh extraction settings (threestudio implicit-volume defaults)."""

    resolution: int = 128
    """Grid vertices per axis (use less on a CPU: 128³ is 2.1M field queries per pass)."""
    threshold: float = 25.0
    """Density of the surface."""
    coarse_to_fine: bool = True
    """Second pass over the first mesh's bounding box grown by 10%."""
    min_component_fraction: float = 0.01
    """Connected components with fewer than this fraction of all faces are dropped."""
    chunk_size: int | None = None
    """Points per field query (None: `field_chunk` of the field's device)."""


@dataclass
class Mesh:
    """Triangle mesh in world coordinates (threestudio frame: z up)."""

    vertices: torch.Tensor
    """[V, 3] float32 positions."""
    faces: torch.Tensor
    """[F, 3] int64 vertex indices, counter-clockwise seen from outside."""
    colors: torch.Tensor | None = None
    """[V, 3] albedo in [0, 1]."""
    uv: torch.Tensor | None = None
    """[V, 2] texture coordinates in [0, 1] (OBJ convention: v = 0 is the bottom row of the image)."""
    texture: torch.Tensor | None = None
    """[S, S, 3] albedo texture in [0, 1], row 0 at the top (v = 1)."""

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])


class NoSurfaceError(UserInputError, ValueError):
    """The density never crosses the threshold on the grid; `suggested_threshold` may help. With `key`, the
    message ends with the setting to try, named by that key."""

    def __init__(self, message: str, suggested_threshold: float | None, key: str | None = None):
        hint = ""
        if key is not None and suggested_threshold is not None:
            hint = f"; try {key}={suggested_threshold:.4g} (a density percentile of this grid)"
        super().__init__(message + hint)
        self.reason = message
        self.suggested_threshold = suggested_threshold

    def naming(self, key: str) -> NoSurfaceError:
        """The same error, its hint naming the setting as the user writes it (e.g. a full config key)."""
        return NoSurfaceError(self.reason, self.suggested_threshold, key)


def field_chunk(device: torch.device | str | None) -> int:
    """Points per field query: 2**18 on a GPU; 2**16 elsewhere, since a hash-grid field's forward holds several KB of
    temporaries per point (a 2**18 chunk took over 2 GB of RAM on a CPU). Chunks never change the results."""
    return 2**18 if torch.device(device or "cpu").type == "cuda" else 2**16


def _field_device(field, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if hasattr(field, "parameters"):
        return next((p.device for p in field.parameters()), torch.device("cpu"))
    return torch.device("cpu")


@torch.no_grad()
def density_grid(
    field: RadianceField,
    lo: torch.Tensor | tuple[float, float, float],
    hi: torch.Tensor | tuple[float, float, float],
    resolution: int,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Density at the vertices of a resolution³ grid spanning [lo, hi] -> [N, N, N] (indexed x, y, z)."""
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    device = _field_device(field, device)
    chunk_size = chunk_size or field_chunk(device)
    axes = [torch.linspace(float(lo[i]), float(hi[i]), resolution, device=device) for i in range(3)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    density = torch.cat([field.forward_density(p).reshape(-1) for p in points.split(chunk_size)])
    return density.reshape(resolution, resolution, resolution).float().cpu()


def suggest_threshold(grid: torch.Tensor) -> float | None:
    """A threshold that does cross the grid's densities: its 95th (or lower) percentile, None if constant."""
    values = grid.flatten()
    if values.numel() > 2**22:
        values = values[:: values.numel() // 2**22 + 1]
    lo, hi = values.min(), values.max()
    for q in (0.95, 0.9, 0.75, 0.5):
        v = torch.quantile(values.double(), q).float()
        if lo < v < hi:
            return float(v)
    return None if lo == hi else float((lo + hi) / 2)


def marching_cubes(
    grid: torch.Tensor,  # [N, N, N] density at grid vertices
    threshold: float,
    lo: torch.Tensor,  # [3]
    hi: torch.Tensor,  # [3]
) -> tuple[np.ndarray, np.ndarray]:
    """Surface {density = threshold} -> vertices [V, 3] float32 (world) and faces [F, 3] int64, outward facing."""
    import mcubes

    verts, faces = mcubes.marching_cubes(grid.double().numpy(), float(threshold))
    n = np.array(grid.shape, dtype=np.float64) - 1
    lo_np, hi_np = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    verts = lo_np + verts / n * (hi_np - lo_np)
    faces = faces.astype(np.int64)
    # PyMCubes faces outward when the inside holds the larger values; check the orientation on the signed volume
    if len(faces) and _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()
    return verts.astype(np.float32), faces


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def remove_small_components(
    vertices: np.ndarray, faces: np.ndarray, min_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected components with fewer than min_fraction · #faces faces, and unused vertices."""
    if len(faces) == 0:
        return vertices, faces
    if min_fraction > 0:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = len(vertices)
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
        graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        face_label = labels[faces[:, 0]]
        sizes = np.bincount(face_label)
        faces = faces[sizes[face_label] >= min_fraction * len(faces)]
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


@torch.no_grad()
def vertex_albedo(field: RadianceField, vertices: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Field albedo [V, 3] at world points [V, 3] (no gradients)."""
    if vertices.shape[0] == 0:
        return vertices.new_zeros(0, 3)
    chunk_size = chunk_size or field_chunk(vertices.device)
    return torch.cat([field(p).albedo.float() for p in vertices.split(chunk_size)]).clamp(0, 1)


def auto_threshold(grid: torch.Tensor) -> float:
    """threestudio's `isosurface_threshold: auto`: the mean of the grid's densities above 1e-5."""
    occupied = grid[grid > 1e-5]
    if occupied.numel() == 0:
        raise NoSurfaceError(f"isosurface threshold 'auto': the density is <= 1e-5 everywhere on the grid", None)
    return float(occupied.double().mean())


Threshold = Union[float, Literal["auto"]]


def _surface(field, lo, hi, resolution, threshold: Threshold, chunk_size, device, min_fraction):
    """-> vertices, faces and the threshold used ('auto' resolved on this grid)."""
    grid = density_grid(field, lo, hi, resolution, chunk_size, device)
    if threshold == "auto":
        threshold = auto_threshold(grid)
    if not (grid.min() < threshold < grid.max()):
        raise NoSurfaceError(
            f"no surface at isosurface threshold {threshold:g}: the density on the {resolution}³ grid lies in "
            f"[{grid.min().item():.4g}, {grid.max().item():.4g}] (mean {grid.mean().item():.4g})",
            suggest_threshold(grid),
            "threshold",
        )
    verts, faces = marching_cubes(grid, threshold, lo, hi)
    verts, faces = remove_small_components(verts, faces, min_fraction)
    return verts, faces, float(threshold)


def grown_box(verts: np.ndarray, radius: float, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The vertices' bounding box grown by 10% per axis and one grid cell, clamped to [−r, r]³ -> (lo [3], hi [3])."""
    vmin, vmax = torch.from_numpy(verts.min(0)), torch.from_numpy(verts.max(0))
    margin = 0.1 * (vmax - vmin) + 2 * radius / (resolution - 1)
    return (vmin - margin).clamp(-radius, radius), (vmax + margin).clamp(-radius, radius)


def surface_box(
    field: RadianceField,
    resolution: int,
    threshold: Threshold,
    min_component_fraction: float = 0.01,
    chunk_size: int = 2**18,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The first, whole-box pass of `extract_mesh`: (lo [3], hi [3]) of the surface's grown bounding box and the
    threshold ('auto' resolved). Raises NoSurfaceError when the threshold gives no surface."""
    r = float(field.radius)
    verts, faces, value = _surface(
        field, torch.full((3,), -r), torch.full((3,), r), resolution, threshold, chunk_size, device, min_component_fraction
    )
    if len(faces) == 0:
        raise NoSurfaceError(f"isosurface threshold {value:g} left no faces after removing small components", None)
    lo, hi = grown_box(verts, r, resolution)
    return lo, hi, value


def extract_mesh(
    field: RadianceField,
    resolution: int = 128,
    threshold: Threshold = 25.0,
    coarse_to_fine: bool = True,
    min_component_fraction: float = 0.01,
    chunk_size: int | None = None,
    with_colors: bool = True,
    device: torch.device | str | None = None,
) -> Mesh:
    """Isosurface {density = threshold} of `field` over [−r, r]³ as a Mesh with albedo vertex colours.

    threshold "auto": the mean density above 1e-5 on the whole-box grid (threestudio), kept for the second pass.

    Raises NoSurfaceError (a ValueError) naming the density range and a threshold that would give a surface.
    """
    r = float(field.radius)
    lo, hi = torch.full((3,), -r), torch.full((3,), r)
    verts, faces, threshold = _surface(field, lo, hi, resolution, threshold, chunk_size, device, min_component_fraction)
    if coarse_to_fine and len(faces):
        lo2, hi2 = grown_box(verts, r, resolution)
        try:  # the threshold found on the whole box ('auto' included) is kept for the second pass
            verts, faces, _ = _surface(field, lo2, hi2, resolution, threshold, chunk_size, device, min_component_fraction)
        except NoSurfaceError:
            pass  # keep the coarse mesh
    if len(faces) == 0:
        raise NoSurfaceError(f"isosurface threshold {threshold:g} left no faces after removing small components", None)
    vertices = torch.from_numpy(verts)
    mesh = Mesh(vertices, torch.from_numpy(faces))
    if with_colors:
        mesh.colors = vertex_albedo(field, vertices.to(_field_device(field, device)), chunk_size).cpu()
    return mesh
