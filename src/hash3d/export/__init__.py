"""Mesh export: isosurface of a field -> OBJ/MTL + baked albedo texture, GLB or PLY."""

from ..scene.isosurface import IsosurfaceConfig, Mesh, NoSurfaceError, extract_mesh
from .exporter import MeshExporter, MeshExporterConfig
from .mesh_files import export_mesh, to_up_axis, write_obj
from .uv_texture import bake_texture, fill_empty_texels, rasterize_uv, unwrap_uv

__all__ = [
    "IsosurfaceConfig",
    "Mesh",
    "MeshExporter",
    "MeshExporterConfig",
    "NoSurfaceError",
    "bake_texture",
    "export_mesh",
    "extract_mesh",
    "fill_empty_texels",
    "rasterize_uv",
    "to_up_axis",
    "unwrap_uv",
    "write_obj",
]
