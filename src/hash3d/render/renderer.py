"""The volume renderer as a component: config + its occupancy grid, the state a training run owns.

`render_rays` / `render_cameras` stay the functional core; this module only keeps the grid (an nn.Module, so it
goes into checkpoints) next to the config and refreshes it in `update_step`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config.registry import register
from ..scene.field import RadianceField
from .material import Shading
from .occupancy import OccupancyGrid
from .volume import RenderOutput, VolumeRenderConfig, render_cameras, render_rays
from ..profiling import timed


@register("renderer", "nerf-volume-renderer", config=VolumeRenderConfig)
class NeRFVolumeRenderer(nn.Module):
    """Volume renderer holding an occupancy grid over the field's box."""

    def __init__(self, config: VolumeRenderConfig | None = None, device: torch.device | str | None = None, **_runtime):
        super().__init__()
        self.config = config or VolumeRenderConfig()
        self.grid = OccupancyGrid(None, self.config.grid)
        if device is not None:
            self.to(device)

    def _grid_for(self, field: RadianceField) -> OccupancyGrid | None:
        if not self.config.grid.enabled:
            return None
        self.grid.radius = float(field.radius)
        return self.grid

    @torch.no_grad()
    def refresh_occupancy(
        self, global_step: int, field: RadianceField, generator: torch.Generator | None = None
    ) -> bool:
        """Refresh the occupancy grid from the field's density (every `grid.update_every` steps)."""
        grid = self._grid_for(field)
        if grid is None:
            return False
        return grid.update(global_step, field.forward_density, self.config.step_size(field.radius), generator)

    @timed("render")
    def forward(
        self,
        field: RadianceField,
        c2w: torch.Tensor,  # [B, 4, 4]
        fovy_deg: torch.Tensor,  # [B]
        height: int,
        width: int,
        background: torch.Tensor | None = None,
        shading: Shading | None = None,
        training: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        """Images [B, H, W, C] of the cameras; `training` defaults to the module's training flag."""
        training = self.training if training is None else training
        return render_cameras(
            field, c2w, fovy_deg, height, width, self.config, background, shading, self._grid_for(field), training, generator
        )

    def render_rays(
        self,
        field: RadianceField,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        background: torch.Tensor | None = None,
        shading: Shading | None = None,
        training: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        training = self.training if training is None else training
        return render_rays(field, rays_o, rays_d, self.config, background, shading, self._grid_for(field), training, generator)
