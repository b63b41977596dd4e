"""Training systems: image-to-3D and text-to-3D on NeRF geometry (importing this registers them)."""

from .dreamfusion import DreamFusionSystem, DreamFusionSystemConfig
from .gaussiandreamer import GaussianDreamerSystem, GaussianDreamerSystemConfig
from .magic123 import Magic123System, Magic123SystemConfig
from .magic3d import Magic3DSystem, Magic3DSystemConfig
from .nerf import NeRFSystem, NeRFSystemConfig
from .zero123 import Zero123System, Zero123SystemConfig
from .gaussian_shading import GaussianShadingSystem
from .gaussian_splatting import GaussianSplattingSystem, GaussianZero123System
from .latentnerf import LatentNeRFSystem, LatentNeRFSystemConfig

__all__ = [
    "DreamFusionSystem",
    "DreamFusionSystemConfig",
    "Magic123System",
    "Magic123SystemConfig",
    "Magic3DSystem",
    "Magic3DSystemConfig",
    "NeRFSystem",
    "NeRFSystemConfig",
    "Zero123System",
    "Zero123SystemConfig",
    "GaussianShadingSystem",
    "GaussianSplattingSystem",
    "GaussianZero123System",
    "LatentNeRFSystem",
    "LatentNeRFSystemConfig",
]
