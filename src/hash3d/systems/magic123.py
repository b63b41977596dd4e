"""Magic123 (threestudio's magic123-system): image-to-3D guided by two diffusion models at once, a Zero123-family
model (3D prior, `guidance_3d`) and Stable Diffusion with the prompt (2D prior, `guidance`), plus reference-view
RGB and mask losses; a NeRF first (coarse), then a DMTet mesh started from it (refine).

Each guidance has its own Hash3D cache (two UNets, two tables: keys never mix) and its own weight: `lambda_sd` for
Stable Diffusion's SDS, `lambda_3d_sd` for Zero123's. Each SDS term enters the loss once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..config import block, build_block, register
from ..data.batches import SingleImageBatch
from ..diffusion.schedule import ScheduleValue
from ..render.material import Shading
from .convert import GeometryConvertConfig, check_refine_config, start_from_coarse
from .dreamfusion import PromptConfig
from .nerf import NeRFSystem, NeRFSystemConfig, RegularizerWeights, sum_losses


@dataclass
class Magic123LossConfig(RegularizerWeights):
    lambda_sds: ScheduleValue = 0.0
    """Not used: Magic123 weighs its two SDS terms with lambda_sd and lambda_3d_sd."""
    lambda_sd: ScheduleValue = 0.025
    """Stable Diffusion SDS on the random view."""
    lambda_3d_sd: ScheduleValue = 1.0
    """Zero123 SDS on the random view."""
    lambda_rgb: ScheduleValue = 1000.0
    """MSE of the reference render against the input image composited on the rendered background."""
    lambda_mask: ScheduleValue = 100.0
    """BCE of the reference render's opacity against the input mask."""

    def __post_init__(self) -> None:
        if self.lambda_sds != 0:
            raise ValueError(
                "system.loss.lambda_sds is not used by magic123-system: weigh Stable Diffusion's SDS with lambda_sd "
                "and Zero123's with lambda_3d_sd"
            )


@dataclass
class Magic123SystemConfig(NeRFSystemConfig, GeometryConvertConfig):
    material_type: str = "no-material"
    guidance_type: str = "stable-diffusion-guidance"
    guidance_3d_type: str = "stable-zero123-guidance"
    guidance_3d: Any = block("guidance", selector="guidance_3d_type")
    prompt_processor: PromptConfig = field(default_factory=PromptConfig)
    loss: Magic123LossConfig = field(default_factory=Magic123LossConfig)


def binary_cross_entropy(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean −(t·log p + (1 − t)·log(1 − p)), written out: torch's version refuses to run under autocast."""
    p = p.float()
    return -(target * torch.log(p) + (1 - target) * torch.log1p(-p)).mean()


@register("system", "magic123-system", config=Magic123SystemConfig)
class Magic123System(NeRFSystem):
    cfg: Magic123SystemConfig

    def configure(self) -> None:
        if not self.cfg.prompt_processor.prompt.strip():
            raise ValueError('Magic123 needs a prompt: pass system.prompt_processor.prompt="a dog"')
        check_refine_config(self.cfg, self.cfg.geometry_type)
        super().configure()
        self.guidance_3d = None

    def build_guidance(self) -> None:
        super().build_guidance()
        if self.guidance_3d is None:
            self.guidance_3d = build_block(self.cfg, "guidance_3d", device=self.device)

    def update_step(self, step: int, max_steps: int | None = None) -> None:
        super().update_step(step, max_steps)
        if self.guidance_3d is not None:
            self.guidance_3d.update_step(step, max_steps)

    def on_fit_start(self, datamodule) -> None:
        start_from_coarse(self.geometry, self.cfg, self.device, self.resuming)
        self.build_guidance()
        self.guidance.set_prompt(self.cfg.prompt_processor.prompt, self.cfg.prompt_processor.negative_prompt)
        ref = datamodule.cfg
        self.guidance_3d.set_image(
            datamodule.reference_image, ref.default_elevation_deg, ref.default_azimuth_deg, ref.default_camera_distance
        )

    def training_step(self, batch: SingleImageBatch, step: int) -> dict:
        w = self.cfg.loss
        ref = batch.ref
        background = self.background_for(ref)
        out_ref = self.render(ref, Shading("albedo"), background)
        mask = ref.mask.float()
        target = ref.rgb * mask + background.to(out_ref.rgb).expand_as(out_ref.rgb) * (1 - mask)
        terms = {
            "rgb": self.weight(w.lambda_rgb) * F.mse_loss(out_ref.rgb, target),
            "mask": self.weight(w.lambda_mask) * binary_cross_entropy(out_ref.opacity.clamp(1e-5, 1 - 1e-5), mask),
        }
        if batch.random is not None:
            cams = batch.random
            out = self.render(cams, self.training_shading(cams))
            rgb = out.rgb.permute(0, 3, 1, 2)
            if self.weight(w.lambda_sd) > 0:
                sd = self.guidance(rgb, cams.elevation, cams.azimuth, cams.camera_distances)
                terms["sd"] = self.weight(w.lambda_sd) * sd.loss
            if self.weight(w.lambda_3d_sd) > 0:
                zero123 = self.guidance_3d(rgb, cams.elevation, cams.azimuth, cams.camera_distances)
                terms["3d_sd"] = self.weight(w.lambda_3d_sd) * zero123.loss
            terms.update(self.regularizers(out, cams, w, sds_pass=True))
        return sum_losses(terms)
