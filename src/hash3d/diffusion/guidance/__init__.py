"""SDS guidance per model family, all sharing `sds.SDSGuidance` and the Hash3D UNet cache."""

from .losses import sds_loss
from .multiview import MultiViewGuidance, MultiViewGuidanceConfig
from .sds import GuidanceConfig, GuidanceOutput, SDSGuidance, epsilon_from_prediction, sds_weight
from .stable_diffusion import StableDiffusionGuidance, StableDiffusionGuidanceConfig
from .zero123 import Zero123Guidance, Zero123GuidanceConfig

__all__ = [
    "GuidanceConfig",
    "GuidanceOutput",
    "MultiViewGuidance",
    "MultiViewGuidanceConfig",
    "SDSGuidance",
    "StableDiffusionGuidance",
    "StableDiffusionGuidanceConfig",
    "Zero123Guidance",
    "Zero123GuidanceConfig",
    "epsilon_from_prediction",
    "sds_loss",
    "sds_weight",
]
