"""3D scene representations: hash-grid encoding, implicit volume (NeRF), isosurface extraction."""

from .field import FieldOutput, RadianceField
from .hash_grid import GridLevel, HashGrid, HashGridConfig, grid_levels, hash_grid_encode
from .implicit_volume import ImplicitVolume, ImplicitVolumeConfig
from .isosurface import IsosurfaceConfig, Mesh, NoSurfaceError, density_grid, extract_mesh
from .mlp import MLPConfig, make_mlp
from .tetrahedra_sdf_grid import TetrahedraSDFGrid, TetrahedraSDFGridConfig

__all__ = [
    "FieldOutput",
    "GridLevel",
    "HashGrid",
    "HashGridConfig",
    "ImplicitVolume",
    "ImplicitVolumeConfig",
    "IsosurfaceConfig",
    "MLPConfig",
    "Mesh",
    "NoSurfaceError",
    "RadianceField",
    "TetrahedraSDFGrid",
    "TetrahedraSDFGridConfig",
    "density_grid",
    "extract_mesh",
    "grid_levels",
    "hash_grid_encode",
    "make_mlp",
]
