"""threestudio-3dgs' `gaussian-mesh-exporter`: the Gaussians as a standard 3DGS .ply plus a mesh of their opacity
field (DreamGaussian's extraction, `hash3d.scene.gaussian_mesh`), with the colour field baked into a texture."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..scene.gaussian_mesh import GaussianField, GaussianMeshConfig, extract_gaussian_mesh
from ..scene.gaussians import GaussianModel
from ..scene.isosurface import NoSurfaceError
from .mesh_files import export_mesh

log = logging.getLogger("hash3d")


@dataclass
class GaussianMeshExporterConfig:
    fmt: Literal["obj-mtl", "obj", "glb", "ply"] = "obj"
    """Mesh file format (obj: OBJ + MTL + baked texture when save_texture)."""
    save_name: str = "model"
    """Stem of the mesh file; the Gaussians go to <save_name>_3dgs.ply."""
    save_texture: bool = True
    texture_size: int = 1024
    resolution: int = 128
    """Grid points per axis of the opacity field."""
    density_thresh: float = 0.8
    """Iso level of the opacity field (threestudio-3dgs: 0.8)."""
    up_axis: Literal["y", "z"] = "y"


def _mesh(model: GaussianModel, cfg: GaussianMeshExporterConfig):
    mesh_cfg = GaussianMeshConfig(resolution=cfg.resolution, density_threshold=cfg.density_thresh)
    try:
        return extract_gaussian_mesh(model, mesh_cfg)
    except NoSurfaceError as exc:
        # short or small runs never reach the level: half the field's peak still gives the user a mesh
        if exc.suggested_threshold is None or exc.suggested_threshold <= 0:
            raise
        log.warning("%s; using density_thresh=%.4g instead", exc, exc.suggested_threshold)
        mesh_cfg.density_threshold = exc.suggested_threshold
        return extract_gaussian_mesh(model, mesh_cfg)


class GaussianMeshExporter:
    def __init__(self, config: GaussianMeshExporterConfig | None = None, **_runtime):
        self.config = config or GaussianMeshExporterConfig()

    def __call__(self, model: GaussianModel, out_dir: str | Path) -> list[Path]:
        cfg = self.config
        out_dir = Path(out_dir)
        ply = out_dir / f"{cfg.save_name}_3dgs.ply"
        model.save_ply(ply)
        if cfg.fmt == "obj-mtl" and not cfg.save_texture:
            raise ValueError("exporter fmt 'obj-mtl' needs save_texture: true (use fmt 'obj' for vertex colours)")
        field = GaussianField.from_model(model, 0.005)
        files = export_mesh(
            _mesh(model, cfg), out_dir / cfg.save_name, fmt=cfg.fmt, texture_size=cfg.texture_size if cfg.save_texture else 0,
            field=field, up_axis=cfg.up_axis, device=model.means.device,
        )  # fmt: skip
        return [ply, *files]
