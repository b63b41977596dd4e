"""Latent-NeRF (threestudio's latentnerf-system): a NeRF whose colour channels are Stable Diffusion latents.

Latent stage (`refinement: false`): the field has 4 feature channels, the material (`no-material`, 4 channels, no
activation) and the neural environment-map background (4 channels) render a [B, H, W, 4] map that the SD guidance
takes as the latent z directly (`rgb_as_latents`): resized to the UNet's latent size, no VAE encoder. Here the UNet is
nearly the whole SDS step, which is where the Hash3D cache can remove the most.

Refinement (`latentnerf-refine`, `refinement: true`): the same geometry loaded from the latent checkpoint
(`system.weights`, the material and background left out), the `sd-latent-adapter-material` (a learned 4x3 matrix from
latents to RGB, initialised from the known approximation) and a fresh 3-channel background; SDS in RGB through the
VAE encoder.

Evaluation images of the latent stage show the latents through the fixed 4x3 approximation (threestudio decodes them
with the VAE; this keeps evaluation and export free of the diffusion model). `--export` colours the mesh the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, register
from ..data.batches import CameraBatch
from ..diffusion.schedule import ScheduleValue
from ..render.material import latents_to_rgb
from ..scene.field import FieldOutput
from .dreamfusion import DreamFusionSystem, DreamFusionSystemConfig
from .nerf import RegularizerWeights, sum_losses


@dataclass
class LatentNeRFLossConfig(RegularizerWeights):
    lambda_sds: ScheduleValue = 1.0
    lambda_sparsity: ScheduleValue = 5e-4
    lambda_orient: ScheduleValue = 0.0
    lambda_opaque: ScheduleValue = 0.0


@dataclass
class LatentNeRFSystemConfig(DreamFusionSystemConfig):
    refinement: bool = False
    """False: render latents and skip the VAE encoder; True: render RGB through the latent adapter material."""
    material_type: str = "no-material"
    background_type: str = "neural-environment-map-background"
    loss: LatentNeRFLossConfig = field(default_factory=LatentNeRFLossConfig)


class _RecolouredField(nn.Module):
    """The geometry seen through a colour function of its features (for the mesh exporter's albedo)."""

    def __init__(self, geometry: nn.Module, colors):
        super().__init__()
        self.geometry, self.colors = geometry, colors
        self.radius = geometry.radius

    def extract_mesh(self, *args, **kwargs):
        return self.geometry.extract_mesh(*args, **kwargs)

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        return self.geometry.forward_density(points)

    def normal(self, points: torch.Tensor) -> torch.Tensor:
        return self.geometry.normal(points)

    def forward(self, points: torch.Tensor, with_normal: bool = False) -> FieldOutput:
        out = self.geometry(points, with_normal=with_normal)
        return FieldOutput(out.density, self.colors(out.features), out.normal, out.features)


@register("system", "latentnerf-system", config=LatentNeRFSystemConfig)
class LatentNeRFSystem(DreamFusionSystem):
    cfg: LatentNeRFSystemConfig

    def configure(self) -> None:
        super().configure()
        cfg = self.cfg
        want = 3 if cfg.refinement else 4
        bg = getattr(cfg.background, "n_output_dims", 3)
        mat = getattr(cfg.material, "n_output_dims", 3)
        if cfg.refinement:
            if cfg.material_type != "sd-latent-adapter-material":
                raise ConfigError("latentnerf refinement renders RGB through system.material_type: sd-latent-adapter-material")
        elif mat != 4:
            raise ConfigError(f"the latent stage renders 4 latent channels: set system.material.n_output_dims=4 (got {mat})")
        if bg != want:
            raise ConfigError(f"system.background.n_output_dims must be {want} in this stage (got {bg})")
        if cfg.geometry.n_feature_dims < 4:
            raise ConfigError(f"latentnerf needs system.geometry.n_feature_dims: 4 (got {cfg.geometry.n_feature_dims})")

    def training_step(self, batch: CameraBatch, step: int) -> dict:
        w = self.cfg.loss
        out = self.render(batch, self.training_shading(batch))
        terms = {}
        if self.weight(w.lambda_sds) > 0:
            guided = self.guidance(
                out.rgb.permute(0, 3, 1, 2), batch.elevation, batch.azimuth, batch.camera_distances,
                rgb_as_latents=not self.cfg.refinement,
            )
            terms["sds"] = self.weight(w.lambda_sds) * guided.loss
        terms.update(self.regularizers(out, batch, w, sds_pass=True))
        if not terms:
            terms["sds"] = 0.0 * out.rgb.sum()
        return sum_losses(terms)

    def visible_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        """What the eye sees of a render: RGB as it is, latents through the fixed approximation."""
        return rgb.clamp(0.0, 1.0) if self.cfg.refinement else latents_to_rgb(rgb)

    def test_step(self, batch: CameraBatch, index: int) -> dict[str, torch.Tensor]:
        shading = self.material.shading(self.global_step, False, batch.light_positions)
        out = self.render(batch, shading)
        return {"rgb": self.visible_rgb(out.rgb).detach(), "opacity": out.opacity.detach()}

    def export(self, out_dir: Path) -> list[Path]:
        colors = self.material.colors if self.cfg.refinement else lambda f: latents_to_rgb(f[..., :4])
        return self.exporter(_RecolouredField(self.geometry, colors), out_dir)
