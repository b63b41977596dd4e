"""Renderers: NeRF volume rendering (packed samples, occupancy grid), materials."""

from .background import SolidColorBackground, SolidColorBackgroundConfig
from .env_map import NeuralEnvironmentMapBackground, NeuralEnvironmentMapConfig
from .compositing import accumulate_along_rays, exclusive_segment_sum, render_weights
from .material import DiffuseWithPointLight, MaterialConfig, NoMaterial, Shading, choose_shading, shade
from .mesh_renderer import MeshRenderer, MeshRendererConfig
from .occupancy import OccupancyGrid, OccupancyGridConfig
from .rays import ray_aabb
from .sampling import PackedSamples, march_rays
from .renderer import NeRFVolumeRenderer
from .volume import RenderOutput, VolumeRenderConfig, render_cameras, render_rays

__all__ = [
    "DiffuseWithPointLight",
    "MeshRenderer",
    "MeshRendererConfig",
    "NeRFVolumeRenderer",
    "NeuralEnvironmentMapBackground",
    "NeuralEnvironmentMapConfig",
    "NoMaterial",
    "SolidColorBackground",
    "SolidColorBackgroundConfig",
    "MaterialConfig",
    "OccupancyGrid",
    "OccupancyGridConfig",
    "PackedSamples",
    "RenderOutput",
    "Shading",
    "VolumeRenderConfig",
    "accumulate_along_rays",
    "choose_shading",
    "exclusive_segment_sum",
    "march_rays",
    "ray_aabb",
    "render_cameras",
    "render_rays",
    "render_weights",
    "shade",
]
