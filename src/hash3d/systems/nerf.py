"""What every NeRF-based SDS system shares: geometry + renderer + material + background, rendering a camera batch,
the regularisers, evaluation images and mesh export. The image-to-3D and text-to-3D systems add their guidance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import block, build_block
from ..data.batches import CameraBatch
from ..diffusion.schedule import ScheduleValue, schedule_value
from ..profiling import timed
from ..render.material import Shading
from ..render.volume import RenderOutput
from ..scene.mesh_ops import laplacian_smoothness, normal_consistency
from ..training.system import System, SystemConfig
from . import losses


@dataclass
class NeRFSystemConfig(SystemConfig):
    geometry_type: str = "implicit-volume"
    geometry: Any = block("geometry")
    material_type: str = "diffuse-with-point-light"
    material: Any = block("material")
    background_type: str = "solid-color-background"
    background: Any = block("background")
    renderer_type: str = "nerf-volume-renderer"
    renderer: Any = block("renderer")
    exporter_type: str = "mesh-exporter"
    exporter: Any = block("exporter")
    guidance_type: str = ""
    guidance: Any = block("guidance")


@dataclass
class RegularizerWeights:
    """Loss weights shared by the NeRF systems (numbers or threestudio schedules)."""

    lambda_sds: ScheduleValue = 1.0
    lambda_orient: ScheduleValue = 0.0
    lambda_sparsity: ScheduleValue = 0.0
    lambda_opaque: ScheduleValue = 0.0
    lambda_normal_smooth: ScheduleValue = 0.0
    """2D smoothness of the rendered normal image."""
    lambda_3d_normal_smooth: ScheduleValue = 0.0
    """|n(x) − n(x + N(0, 0.01))| at the samples."""
    lambda_normal_consistency: ScheduleValue = 0.0
    """Mesh renders: mean over edges of 1 − cos of the vertex normals at its ends."""
    lambda_laplacian_smoothness: ScheduleValue = 0.0
    """Mesh renders: mean |uniform Laplacian| of the vertex positions."""


class GeneratorRandom:
    """`random.Random`'s `.random()` drawn from a torch.Generator (whose state checkpoints hold)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def random(self) -> float:
        return float(torch.rand((), generator=self.generator))


def _images(out: RenderOutput) -> dict[str, torch.Tensor]:
    images = {"rgb": out.rgb}
    if out.normal_vis is not None:
        images["normal"] = out.normal_vis
    images["opacity"] = out.opacity
    return images


class NeRFSystem(System):
    """Builds the scene components from the config; subclasses implement `training_step` and the guidance."""

    cfg: NeRFSystemConfig

    def configure(self) -> None:
        cfg = self.cfg
        self.geometry = build_block(cfg, "geometry", device=self.device)
        self.material = build_block(cfg, "material")
        self.background = build_block(cfg, "background", device=self.device)
        self.renderer = build_block(cfg, "renderer", device=self.device)
        self.exporter = build_block(cfg, "exporter")
        self.guidance = None  # built on fit start: evaluation and export never load the diffusion model
        # torch generators: the training loop checkpoints them, so a resumed run draws the same shading and samples
        self.shading_generator = torch.Generator().manual_seed(0)
        self.shading_rng = GeneratorRandom(self.shading_generator)
        self.render_generator = torch.Generator(device=self.device).manual_seed(0)

    def build_guidance(self) -> None:
        if self.guidance is None:
            self.guidance = build_block(self.cfg, "guidance", device=self.device)

    def weight(self, value: ScheduleValue) -> float:
        return schedule_value(value, self.global_step)

    def update_step(self, step: int, max_steps: int | None = None) -> None:
        self.global_step = step
        self.max_steps = max_steps or self.max_steps
        self.geometry.update_step(step, max_steps)
        self.renderer.refresh_occupancy(step, self.geometry, self.render_generator)
        if self.guidance is not None:
            self.guidance.update_step(step, max_steps)

    def background_for(self, cams: CameraBatch) -> torch.Tensor:
        """The background of a camera batch: a colour [3], or [B, H, W, 3] for direction-dependent backgrounds."""
        if getattr(self.background, "needs_directions", False):
            return self.background(cams.rays(jitter=0.0)[1])
        return self.background()

    def render(
        self, cams: CameraBatch, shading: Shading | None = None, background: torch.Tensor | None = None
    ) -> RenderOutput:
        bg = self.background_for(cams) if background is None else background
        return self.renderer(
            self.geometry, cams.c2w, cams.fovy, cams.height, cams.width, background=bg, shading=shading,
            generator=self.render_generator,
        )

    def training_shading(self, cams: CameraBatch, ambient_ratio: float | None = None) -> Shading:
        return self.material.shading(self.global_step, True, cams.light_positions, ambient_ratio, self.shading_rng)

    @timed("regularisers")  # outside the render and guidance sections: its own part of the step split
    def regularizers(self, out: RenderOutput, cams: CameraBatch, w: RegularizerWeights, sds_pass: bool) -> dict[str, torch.Tensor]:
        """The weighted regularisers of one render (sparsity, opacity and the mesh terms only on SDS passes)."""
        terms: dict[str, torch.Tensor] = {}
        if self.weight(w.lambda_orient) > 0 and out.sample_normals is not None:
            _, dirs = cams.rays(jitter=0.0)
            directions = dirs.reshape(-1, 3)[out.ray_indices]
            terms["orient"] = self.weight(w.lambda_orient) * losses.orientation(
                out.weights, out.sample_normals, directions, out.opacity
            )
        if self.weight(w.lambda_normal_smooth) > 0 and out.normal_vis is not None:
            terms["normal_smooth"] = self.weight(w.lambda_normal_smooth) * losses.normal_smoothness_2d(out.normal_vis)
        if self.weight(w.lambda_3d_normal_smooth) > 0 and out.sample_normals is not None and out.positions is not None:
            noise = torch.randn(out.positions.shape, device=out.positions.device, generator=self.render_generator)
            perturbed = self.geometry.normal(out.positions + 0.01 * noise)
            terms["3d_normal_smooth"] = self.weight(w.lambda_3d_normal_smooth) * losses.normal_smoothness_3d(
                out.sample_normals, perturbed
            )
        if sds_pass and out.mesh is not None and self.weight(w.lambda_normal_consistency) > 0:
            terms["normal_consistency"] = self.weight(w.lambda_normal_consistency) * normal_consistency(
                out.mesh.vertices, out.mesh.faces
            )
        if sds_pass and out.mesh is not None and self.weight(w.lambda_laplacian_smoothness) > 0:
            terms["laplacian_smoothness"] = self.weight(w.lambda_laplacian_smoothness) * laplacian_smoothness(
                out.mesh.vertices, out.mesh.faces
            )
        if sds_pass and self.weight(w.lambda_sparsity) > 0:
            terms["sparsity"] = self.weight(w.lambda_sparsity) * losses.sparsity(out.opacity)
        if sds_pass and self.weight(w.lambda_opaque) > 0:
            terms["opaque"] = self.weight(w.lambda_opaque) * losses.opaque(out.opacity)
        return terms

    def sds(self, out: RenderOutput, cams: CameraBatch, weight: ScheduleValue) -> dict[str, torch.Tensor]:
        guided = self.guidance(out.rgb.permute(0, 3, 1, 2), cams.elevation, cams.azimuth, cams.camera_distances)
        return {"sds": self.weight(weight) * guided.loss}

    def test_step(self, batch: CameraBatch, index: int) -> dict[str, torch.Tensor]:
        shading = self.material.shading(self.global_step, False, batch.light_positions)
        out = self.render(batch, shading)  # normals are forward values: no autograd graph in evaluation renders
        return {k: v.detach() for k, v in _images(out).items()}

    def export(self, out_dir: Path) -> list[Path]:
        return self.exporter(self.geometry, out_dir)


def sum_losses(terms: dict[str, torch.Tensor]) -> dict[str, Any]:
    """{"loss": Σ terms, "loss_<name>": each term} for the training loop's logs."""
    total = sum(terms.values())
    return {"loss": total, **{f"loss_{k}": v.detach() for k, v in terms.items()}}
