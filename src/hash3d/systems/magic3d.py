"""Magic3D (threestudio's magic3d-system): text-to-3D in two stages, Stable Diffusion SDS on a NeRF (coarse), then
on a DMTet mesh started from the coarse density (refine). The losses are the text-to-3D system's, weighted by the
config: orientation and sparsity on the NeRF, normal consistency on the mesh."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import register
from .convert import GeometryConvertConfig, check_refine_config, start_from_coarse
from .dreamfusion import DreamFusionSystem, DreamFusionSystemConfig


@dataclass
class Magic3DSystemConfig(DreamFusionSystemConfig, GeometryConvertConfig):
    pass


@register("system", "magic3d-system", config=Magic3DSystemConfig)
class Magic3DSystem(DreamFusionSystem):
    cfg: Magic3DSystemConfig

    def configure(self) -> None:
        check_refine_config(self.cfg, self.cfg.geometry_type)
        super().configure()

    def on_fit_start(self, datamodule) -> None:
        start_from_coarse(self.geometry, self.cfg, self.device, self.resuming)
        super().on_fit_start(datamodule)
