"""Image-to-3D (threestudio's zero123-system): reference-view losses + Zero123 SDS on random views, every step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import register
from ..data.batches import ReferenceBatch, SingleImageBatch
from ..diffusion.schedule import ScheduleValue
from ..render.material import Shading
from .nerf import NeRFSystem, NeRFSystemConfig, RegularizerWeights, sum_losses


@dataclass
class Zero123LossConfig(RegularizerWeights):
    lambda_sds: ScheduleValue = 0.1
    lambda_rgb: ScheduleValue = (100, 500, 1000, 400)
    lambda_mask: ScheduleValue = 50.0
    lambda_orient: ScheduleValue = 1.0
    lambda_sparsity: ScheduleValue = 0.5
    lambda_opaque: ScheduleValue = 0.5
    lambda_normal_smooth: ScheduleValue = (100, 7.0, 5.0, 150, 10.0, 200)
    lambda_3d_normal_smooth: ScheduleValue = (100, 7.0, 5.0, 150, 10.0, 200)


@dataclass
class Zero123SystemConfig(NeRFSystemConfig):
    guidance_type: str = "stable-zero123-guidance"
    ambient_ratio_min: float = 0.5
    """Random views are shaded with an ambient ratio drawn from [ambient_ratio_min, 1]."""
    loss: Zero123LossConfig = field(default_factory=Zero123LossConfig)


@register("system", "zero123-system", config=Zero123SystemConfig)
class Zero123System(NeRFSystem):
    cfg: Zero123SystemConfig

    def on_fit_start(self, datamodule) -> None:
        self.build_guidance()
        ref = datamodule.cfg
        self.guidance.set_image(
            datamodule.reference_image, ref.default_elevation_deg, ref.default_azimuth_deg, ref.default_camera_distance
        )

    def reference_losses(self, ref: ReferenceBatch) -> dict[str, torch.Tensor]:
        w = self.cfg.loss
        out = self.render(ref, Shading("albedo"))  # threestudio: ambient 1, diffuse shading = the albedo
        mask = ref.mask.float()
        background = self.background_for(ref).to(out.rgb)
        target = ref.rgb * mask + background * (1 - mask)
        terms = {
            "rgb": self.weight(w.lambda_rgb) * F.mse_loss(out.rgb, target),
            "mask": self.weight(w.lambda_mask) * F.mse_loss(out.opacity, mask),
        }
        terms.update({f"ref_{k}": v for k, v in self.regularizers(out, ref, w, sds_pass=False).items()})
        return terms

    def training_step(self, batch: SingleImageBatch, step: int) -> dict:
        w = self.cfg.loss
        terms = self.reference_losses(batch.ref)
        if batch.random is not None and self.weight(w.lambda_sds) > 0:
            cams = batch.random
            ratio = self.cfg.ambient_ratio_min + (1 - self.cfg.ambient_ratio_min) * self.shading_rng.random()
            out = self.render(cams, self.training_shading(cams, ratio))
            terms.update(self.sds(out, cams, w.lambda_sds))
            terms.update(self.regularizers(out, cams, w, sds_pass=True))
        return sum_losses(terms)
