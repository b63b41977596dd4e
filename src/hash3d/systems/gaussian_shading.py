"""Text-to-3D Gaussians with shading (threestudio-3dgs' gaussian-splatting-system with the
`diff-gaussian-rasterizer-shading` renderer): Stable Diffusion SDS on shaded renders.

A render: the Gaussians are rasterised on black; albedo = colour / (alpha + 1e-6); pixel positions come from the
expected z-depth (accumulated depth / alpha; upstream takes the accumulated depth itself, which pulls pixels of alpha
< 1 towards the camera and tilts their normals) along the camera rays, and the shading normal from those positions (`hash3d.render.depth_normals`);
the diffuse point-light material shades them (albedo only for the first `ambient_only_steps`, then albedo, textureless
or diffuse, soft-shaded: ambient r and diffuse 1 - r with r ~ U(0, 1)); final = shaded·alpha + (1 - alpha)·background(ray
direction), the background a neural environment map that training views replace by pure black or white (prob. 0.8).

A step (upstream order): the SDS loss is backpropagated first and the densification statistics are read then, so they
see only the SDS gradient; then the regularisers (centre distance, scale-weighted opacity, scales, TV of the image,
of the normal map and of the depth) are backpropagated, densification runs, and Adam steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConfigError, block, build_block, register
from ..data.batches import CameraBatch
from ..diffusion.schedule import ScheduleValue
from ..profiling import section
from ..render.depth_normals import normals_from_positions, positions_from_depth, z_depth_rays
from ..render.material import DiffuseWithPointLight, MaterialConfig, Shading, shade
from .dreamfusion import PromptConfig
from .gaussian_splatting import GaussianSplattingSystem, GaussianSplattingSystemConfig
from .gaussiandreamer import NEGATIVE_PROMPT
from .losses import total_variation
from .nerf import GeneratorRandom, sum_losses


@dataclass
class GaussianMaterialConfig(MaterialConfig):
    """threestudio-3dgs' gaussian-diffuse-with-point-light-material."""

    ambient_only_steps: int = 2000
    textureless_prob: float = 0.0
    ambient_light_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    diffuse_light_color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    soft_shading: bool = True


@dataclass
class GaussianShadingLossConfig:
    lambda_sds: ScheduleValue = 0.1
    lambda_position: ScheduleValue = 1.0
    """mean distance of the centres from the origin."""
    lambda_opacity: ScheduleValue = 0.0001
    """Σ |scale| (detached) · opacity."""
    lambda_scales: ScheduleValue = 0.0001
    """Σ scales."""
    lambda_tv_loss: ScheduleValue = 1.0
    """TV of the image."""
    lambda_depth_tv_loss: ScheduleValue = 1.0
    """TV of the normal map plus TV of the depth map."""


@dataclass
class GaussianShadingSystemConfig(GaussianSplattingSystemConfig):
    prompt_processor: PromptConfig = field(default_factory=lambda: PromptConfig(negative_prompt=NEGATIVE_PROMPT))
    guidance_type: str = "stable-diffusion-guidance"
    material: GaussianMaterialConfig = field(default_factory=GaussianMaterialConfig)
    background_type: str = "gaussian-mvdream-neural-environment-map-background"
    background: Any = block("background")
    loss: GaussianShadingLossConfig = field(default_factory=GaussianShadingLossConfig)


@dataclass
class ShadedRender:
    rgb: torch.Tensor  # [B, H, W, 3] composited over the background
    alpha: torch.Tensor  # [B, H, W, 1]
    depth: torch.Tensor  # [B, H, W, 1] accumulated z-depth
    normal: torch.Tensor  # [B, H, W, 3] unit shading normals (world)
    normal_map: torch.Tensor  # [B, H, W, 3] n·0.5·alpha + 0.5, detached where alpha <= 0.99
    meta: Any


@register("system", "gaussian-splatting-system", config=GaussianShadingSystemConfig)
class GaussianShadingSystem(GaussianSplattingSystem):
    cfg: GaussianShadingSystemConfig

    def configure(self) -> None:
        if not self.cfg.prompt_processor.prompt.strip():
            raise ConfigError('the prompt is empty: pass system.prompt_processor.prompt="a hamburger"')
        super().configure()
        self.background = build_block(self.cfg, "background", device=self.device)
        if not getattr(self.background, "needs_directions", False):
            raise ConfigError("gaussian-splatting-system needs a background of the ray direction "
                             "(gaussian-mvdream-neural-environment-map-background or neural-environment-map-background)")
        self.material = DiffuseWithPointLight(self.cfg.material)
        self.shading_generator = torch.Generator().manual_seed(self.cfg.geometry.seed)
        self.shading_rng = GeneratorRandom(self.shading_generator)

    def on_fit_start(self, datamodule) -> None:
        super().on_fit_start(datamodule)
        prompt = self.cfg.prompt_processor
        self.guidance.set_prompt(prompt.prompt, prompt.negative_prompt)

    def other_modules(self) -> dict[str, torch.nn.Module]:
        return {"background": self.background}

    # ------------------------------------------------------------------ rendering
    def shading(self, cams: CameraBatch, training: bool) -> Shading:
        return self.material.shading(self.global_step, training, cams.light_positions, None, self.shading_rng)

    def render_shaded(self, cams: CameraBatch, shading: Shading) -> ShadedRender:
        black = torch.zeros(3, device=cams.c2w.device)
        image, alpha, meta = self.render(cams, black)
        origins, directions = z_depth_rays(cams.c2w.float(), cams.fovy, cams.height, cams.width)
        xyz = positions_from_depth(origins, directions, meta.depth / alpha.clamp_min(1e-6))
        normal = normals_from_positions(xyz)
        B, H, W, _ = image.shape
        albedo = image / (alpha + 1e-6)
        pixel_view = torch.arange(B, device=image.device).repeat_interleave(H * W)
        colour = shade(albedo.reshape(-1, 3), normal.reshape(-1, 3), xyz.reshape(-1, 3), pixel_view, shading)
        background = self.background(directions)
        rgb = colour.reshape(B, H, W, 3) * alpha + (1.0 - alpha) * background
        solid = alpha > 0.99
        normal_map = normal * 0.5 * alpha + 0.5
        normal_map = torch.where(solid, normal_map, normal_map.detach())
        depth = torch.where(solid, meta.depth, meta.depth.detach())
        return ShadedRender(rgb, alpha, depth, normal, normal_map, meta)

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: CameraBatch, step: int) -> dict[str, Any]:
        self.update_learning_rates(step)
        w = self.cfg.loss
        out = self.render_shaded(batch, self.shading(batch, training=True))
        self.strategy.step_pre_backward(out.meta)
        if self.weight(w.lambda_sds) > 0:
            guided = self.guidance(out.rgb.permute(0, 3, 1, 2), batch.elevation, batch.azimuth, batch.camera_distances)
            sds = self.weight(w.lambda_sds) * guided.loss
            with section("backward"):
                sds.backward(retain_graph=True)
        else:  # a zero SDS weight skips the diffusion model (the statistics then see no gradient)
            sds = torch.zeros((), device=out.rgb.device)
        with torch.no_grad():  # statistics from the SDS gradient alone (as upstream)
            self.strategy.update_state(self._sized_state(), out.meta)
        g = self.gaussians
        terms: dict[str, torch.Tensor] = {}
        if self.weight(w.lambda_position) > 0:
            terms["position"] = self.weight(w.lambda_position) * g.means.norm(dim=-1).mean()
        if self.weight(w.lambda_opacity) > 0:
            terms["opacity"] = self.weight(w.lambda_opacity) * (g.scales.detach().norm(dim=-1) * g.opacities).sum()
        if self.weight(w.lambda_scales) > 0:
            terms["scales"] = self.weight(w.lambda_scales) * g.scales.sum()
        if self.weight(w.lambda_tv_loss) > 0:
            terms["tv"] = self.weight(w.lambda_tv_loss) * total_variation(out.rgb)
        if self.weight(w.lambda_depth_tv_loss) > 0:
            terms["depth_tv"] = self.weight(w.lambda_depth_tv_loss) * (
                total_variation(out.normal_map) + total_variation(out.depth)
            )
        result = self.optimise(terms or {"none": torch.zeros((), device=sds.device)}, step, None)
        result["loss"] = result["loss"].detach() + sds.detach()
        result["loss_sds"] = sds.detach()
        return result

    def _sized_state(self):
        n = self.gaussians.num_gaussians
        if self.densify_state.grad2d is None or self.densify_state.grad2d.shape[0] != n:
            self.densify_state.resize(n, self.gaussians.means.device)
        return self.densify_state

    # ------------------------------------------------------------------ evaluation
    def test_step(self, batch: CameraBatch, index: int) -> dict[str, torch.Tensor]:
        self._ensure_initialised()
        out = self.render_shaded(batch, self.shading(batch, training=False))
        return {"rgb": out.rgb.clamp(0.0, 1.0), "normal": out.normal_map.clamp(0.0, 1.0), "opacity": out.alpha.clamp(0.0, 1.0)}
