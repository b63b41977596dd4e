"""The exporter component (threestudio's "mesh-exporter"): isosurface of the geometry -> files in a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config.errors import ConfigError
from ..config.registry import register
from ..scene.field import RadianceField
from ..scene.isosurface import IsosurfaceConfig, Mesh, NoSurfaceError, extract_mesh
from .mesh_files import export_mesh


THRESHOLD_KEY = "system.geometry.isosurface_threshold"
"""The config key of the geometry's isosurface threshold, as a no-surface error names it."""


@dataclass
class MeshExporterConfig:
    """What `--export` writes."""

    fmt: Literal["obj-mtl", "obj", "glb", "ply"] = "obj-mtl"
    """obj-mtl: OBJ + MTL + baked albedo PNG; obj: OBJ (textured when save_texture, else vertex colours); glb; ply."""
    save_name: str = "model"
    """File stem inside the export folder."""
    save_texture: bool = True
    """UV-unwrap (xatlas) and bake the albedo into a texture; off = vertex colours."""
    texture_size: int = 1024
    """Side of the square texture in texels."""
    up_axis: Literal["y", "z"] = "y"
    """Up axis of the written files: y (glTF, Blender's importers) or z (the world frame)."""


@register("exporter", "mesh-exporter", config=MeshExporterConfig)
class MeshExporter:
    def __init__(self, config: MeshExporterConfig | None = None, **_runtime):
        self.config = config or MeshExporterConfig()

    def extract(self, field: RadianceField) -> Mesh:
        """The geometry's own isosurface settings when it has them (ImplicitVolume), else IsosurfaceConfig's."""
        if hasattr(field, "extract_mesh"):
            try:
                return field.extract_mesh()
            except NoSurfaceError as exc:  # the geometry's threshold is a config key of the system
                raise exc.naming(THRESHOLD_KEY) from None
        iso = IsosurfaceConfig()
        return extract_mesh(field, iso.resolution, iso.threshold, iso.coarse_to_fine, iso.min_component_fraction)

    def __call__(self, field: RadianceField, out_dir: str | Path) -> list[Path]:
        cfg = self.config
        mesh = self.extract(field)
        if cfg.fmt == "obj-mtl" and not cfg.save_texture:
            raise ConfigError("exporter fmt 'obj-mtl' needs save_texture: true (use fmt 'obj' for vertex colours)")
        return export_mesh(
            mesh,
            Path(out_dir) / cfg.save_name,
            fmt=cfg.fmt,
            texture_size=cfg.texture_size if cfg.save_texture else 0,
            field=field,
            up_axis=cfg.up_axis,
        )
