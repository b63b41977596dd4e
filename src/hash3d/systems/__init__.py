"""Training systems: image-to-3D and text-to-3D on NeRF geometry (importing this registers them)."""

from .dreamfusion import DreamFusionSystem, DreamFusionSystemConfig
from .gaussian_shading import GaussianShadingSystem
from .gaussian_splatting import GaussianSplattingSystem, GaussianZero123System
from .gaussiandreamer import GaussianDreamerSystem, GaussianDreamerSystemConfig
from .latentnerf import LatentNeRFSystem, LatentNeRFSystemConfig
from .nerf import NeRFSystem, NeRFSystemConfig
from .zero123 import Zero123System, Zero123SystemConfig

__all__ = [
    "DreamFusionSystem",
    "DreamFusionSystemConfig",
    "GaussianShadingSystem",
    "GaussianSplattingSystem",
    "GaussianZero123System",
    "LatentNeRFSystem",
    "LatentNeRFSystemConfig",
    "NeRFSystem",
    "NeRFSystemConfig",
    "Zero123System",
    "Zero123SystemConfig",
]
