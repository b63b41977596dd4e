"""Zero123's camera projection: one linear layer from [CLIP image embedding, 4 camera numbers] to the UNet's
cross-attention width.

Two on-disk layouts exist for the same layer:

* ``cc_projection/`` (the diffusers community ``pipeline_zero1to3.py``, e.g. ``kxic/zero123-xl``): config keys
  ``in_channel`` (772) and ``out_channel`` (768), weights ``projection.weight`` / ``projection.bias``.
  `CameraProjection` uses exactly these names, so such folders load into it with ``from_pretrained``.
* ``clip_camera_projection/`` (``ashawkey/stable-zero123-diffusers``, ``bennyguo/zero123-xl-diffusers``): config keys
  ``embedding_dim`` (768) and ``additional_embeddings`` (4), weights ``proj.weight`` / ``proj.bias``. These load
  through `ClipCameraProjectionLayout` and convert with `CameraProjection.from_clip_camera_projection`.
"""

from __future__ import annotations

import torch
from torch import nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


CAMERA_FEATURES = 4  # (elevation, sin azimuth, cos azimuth, radius or reference elevation)


class CameraProjection(ModelMixin, ConfigMixin):
    """``Linear(in_channel, out_channel)`` applied to ``cat([image_embeds, camera], -1)``; ``cc_projection`` layout."""

    @register_to_config
    def __init__(self, in_channel: int = 772, out_channel: int = 768):
        super().__init__()
        self.projection = nn.Linear(in_channel, out_channel)

    @property
    def embedding_dim(self) -> int:
        """Width of the CLIP image embedding this layer expects (``in_channel`` minus the camera features)."""
        return self.config.in_channel - CAMERA_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)

    @classmethod
    def from_clip_camera_projection(cls, other: "ClipCameraProjectionLayout") -> "CameraProjection":
        """Convert a module loaded from a ``clip_camera_projection/`` folder (same maths, other names)."""
        weight = other.proj.weight
        model = cls(in_channel=other.proj.in_features, out_channel=other.proj.out_features)
        nn.Module.to(model, device=weight.device, dtype=weight.dtype)  # (ModelMixin.to warns on any dtype cast)
        with torch.no_grad():
            model.projection.weight.copy_(other.proj.weight)
            model.projection.bias.copy_(other.proj.bias)
        return model


class ClipCameraProjectionLayout(ModelMixin, ConfigMixin):
    """Reads the ``clip_camera_projection/`` layout (config ``embedding_dim``/``additional_embeddings``, Linear
    ``proj``). Only used to load such folders; convert with `CameraProjection.from_clip_camera_projection`."""

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = CAMERA_FEATURES):
        super().__init__()
        self.proj = nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
