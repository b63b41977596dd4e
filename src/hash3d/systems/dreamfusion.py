"""Text-to-3D (threestudio's dreamfusion-system): Stable Diffusion SDS with view-dependent prompts on random views."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError, register
from ..data.batches import CameraBatch
from ..diffusion.schedule import ScheduleValue
from .nerf import NeRFSystem, NeRFSystemConfig, RegularizerWeights, sum_losses


@dataclass
class PromptConfig:
    """threestudio's `system.prompt_processor` block (the prompt itself; view suffixes live in the guidance)."""

    prompt: str = ""
    negative_prompt: str = ""


@dataclass
class DreamFusionLossConfig(RegularizerWeights):
    lambda_sds: ScheduleValue = 1.0
    lambda_orient: ScheduleValue = (0, 10.0, 1000.0, 5000)
    lambda_sparsity: ScheduleValue = 1.0
    lambda_opaque: ScheduleValue = 0.0


@dataclass
class DreamFusionSystemConfig(NeRFSystemConfig):
    guidance_type: str = "stable-diffusion-guidance"
    prompt_processor: PromptConfig = field(default_factory=PromptConfig)
    loss: DreamFusionLossConfig = field(default_factory=DreamFusionLossConfig)


@register("system", "dreamfusion-system", config=DreamFusionSystemConfig)
class DreamFusionSystem(NeRFSystem):
    cfg: DreamFusionSystemConfig

    def configure(self) -> None:
        if not self.cfg.prompt_processor.prompt.strip():
            raise ConfigError('the prompt is empty: pass system.prompt_processor.prompt="a DSLR photo of a corgi"')
        super().configure()

    def on_fit_start(self, datamodule) -> None:
        self.build_guidance()
        self.guidance.set_prompt(self.cfg.prompt_processor.prompt, self.cfg.prompt_processor.negative_prompt)

    def training_step(self, batch: CameraBatch, step: int) -> dict:
        w = self.cfg.loss
        out = self.render(batch, self.training_shading(batch))
        # as in the image-to-3D system, a zero SDS weight (e.g. a schedule's start) skips the diffusion model
        terms = self.sds(out, batch, w.lambda_sds) if self.weight(w.lambda_sds) > 0 else {}
        terms.update(self.regularizers(out, batch, w, sds_pass=True))
        if not terms:
            terms["sds"] = 0.0 * out.rgb.sum()  # nothing to learn from this step, but keep the loss differentiable
        return sum_losses(terms)
