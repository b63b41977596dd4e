"""Text-to-3D Gaussians initialised from a 3D prior (GaussianDreamer's gaussiandreamer-system), with the cached
Stable Diffusion SDS guidance.

Recipe (GaussianDreamer 76a38ff; numbers in `../../../gaussian-dreamer-hash3d/configs/gaussiandreamer-sd.yaml`):

1. Initial shape (`hash3d.scene.shape_prior`): Shap-E mesh vertices and colours for the prompt, grown with noisy
   neighbours and scaled by 1.6 (or the user's .ply, or a ball), become 3D Gaussians with kNN scales, identity
   rotations and opacity 0.1 (`GaussianModel.from_points`). The cloud is written to save/shape.ply.
2. Each step: the batch's cameras (random-camera-datamodule, threestudio's z-up frame) are rasterised on a black
   background; SDS from Stable Diffusion (view-dependent prompts, the negative prompt, CFG 100, t in 2–98 % then
   2–55 % after step 500, gradient clip 1.5 → 2.0) plus the sparsity of an opacity proxy (each pixel's accumulated
   depth over the batch's largest, as upstream); Adam with the 3DGS learning rates (means on the log-linear
   schedule); densification statistics summed over the batch's views while step < 900, clone / split / prune
   when step > 300 and step % 100 == 0 (`GaussianDensifyStrategy.gaussiandreamer`).
3. Outputs in the trial folder: checkpoints (the Gaussian count is restored from them), validation images, the
   test orbit video (`save/it{N}-test.mp4`), `save/last_3dgs.ply` (standard 3DGS .ply), `save/shape.ply` (the
   initial point cloud) and `save/it{N}-test-color.ply` (Gaussian centres coloured by their SH DC term);
   `--export` writes the two .ply files of the Gaussians to `save/it{N}-export/`.

Differences from GaussianDreamer: Shap-E runs through diffusers (the base openai/shap-e text300M weights by default,
not the Cap3D-finetuned checkpoint; no shape.gif); cameras come from threestudio's current random-camera sampler
(its sphere-uniform elevation branch is arcsin of a uniform sine, GaussianDreamer's own copy differs); the Shap-E
object is turned to face threestudio's front view (+x) instead of rotating the cameras.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import ConfigError, block, build_block, register
from ..data.batches import CameraBatch
from ..diffusion.schedule import ScheduleValue, schedule_value
from ..profiling import section
from ..render.gaussian_raster import RasterMeta
from ..scene.gaussian_density import GaussianDensifyStrategy
from ..scene.gaussians import GaussianLRConfig, GaussianModel
from ..scene.shape_prior import PointCloud, ShapePrior, ShapePriorConfig
from ..training.system import System, SystemConfig
from . import losses
from .dreamfusion import PromptConfig
from .gaussian_state import GaussianSystemMixin, rasterize_cameras
from .nerf import sum_losses

log = logging.getLogger("hash3d")

NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, cropped, "
    "lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, dehydrated, "
    "bad proportions, unfocused"
)
"""GaussianDreamer's fixed negative prompt."""


def _with_preset_defaults(cls: type, preset: Any, name: str) -> type:
    """A subclass of the dataclass `cls` whose defaults are the values of `preset`, so that a YAML block that sets
    only some keys keeps the preset's values for the others (not the base class's)."""
    hints = typing.get_type_hints(cls)
    fields = [
        (f.name, hints[f.name], field(default=getattr(preset, f.name))) for f in dataclasses.fields(cls) if f.init
    ]
    made = dataclasses.make_dataclass(name, fields, bases=(cls,))
    made.__module__ = __name__
    made.__doc__ = f"{cls.__name__} with GaussianDreamer's defaults ({cls.__name__}.gaussiandreamer())."
    return made


GaussianDreamerLRConfig = _with_preset_defaults(
    GaussianLRConfig, GaussianLRConfig.gaussiandreamer(), "GaussianDreamerLRConfig"
)
"""`system.lr`: the 3DGS Adam learning rates (cameras_extent 4)."""
GaussianDreamerDensifyConfig = _with_preset_defaults(
    GaussianDensifyStrategy, GaussianDensifyStrategy.gaussiandreamer(), "GaussianDreamerDensifyConfig"
)
"""`system.densify`: the densification strategy (its fields are the knobs)."""


@dataclass
class GaussianDreamerLossConfig:
    lambda_sds: ScheduleValue = 1.0
    lambda_sparsity: ScheduleValue = 1.0
    """mean sqrt(o² + 0.01) of the opacity proxy (see `sparsity_source`)."""
    lambda_opaque: ScheduleValue = 0.0
    """Binary cross-entropy of the opacity proxy with itself."""


@dataclass
class GaussianDreamerSystemConfig(SystemConfig):
    """`system:` of gaussiandreamer-system. The `optimizer` block of SystemConfig is not used: the Gaussians have
    their own Adam (`lr`), as upstream."""

    prompt_processor: PromptConfig = field(default_factory=lambda: PromptConfig(negative_prompt=NEGATIVE_PROMPT))
    guidance_type: str = "stable-diffusion-guidance"
    guidance: Any = block("guidance")
    init: ShapePriorConfig = field(default_factory=ShapePriorConfig)
    sh_degree: int = 0
    init_opacity: float = 0.1
    lr: GaussianDreamerLRConfig = field(default_factory=GaussianDreamerLRConfig)
    densify: GaussianDreamerDensifyConfig = field(default_factory=GaussianDreamerDensifyConfig)
    background_color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Solid background of every render (GaussianDreamer: black for training and test)."""
    sparsity_source: Literal["depth", "alpha"] = "depth"
    """What the sparsity / opaque losses see: 'depth' = accumulated depth / its batch maximum (GaussianDreamer's
    proxy), 'alpha' = the rendered opacity."""
    rasterizer: Literal["auto", "torch", "gsplat"] = "auto"
    """'auto': gsplat on CUDA when installed, the pure-torch splatter otherwise."""
    loss: GaussianDreamerLossConfig = field(default_factory=GaussianDreamerLossConfig)

    def __post_init__(self) -> None:
        if self.scheduler is not None:
            raise ValueError("system.scheduler is not used here: the Gaussians' rates come from system.lr; remove it")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3; got {self.sh_degree}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"init_opacity must be in (0, 1); got {self.init_opacity}")


@register("system", "gaussiandreamer-system", config=GaussianDreamerSystemConfig)
class GaussianDreamerSystem(GaussianSystemMixin, System):
    """Stable Diffusion SDS on 3D Gaussians from a Shap-E / .ply / ball start (see the module docstring)."""

    cfg: GaussianDreamerSystemConfig
    automatic_optimization = False  # densification replaces parameters: the step is driven here

    def configure(self) -> None:
        cfg = self.cfg
        prompt = cfg.prompt_processor.prompt
        if not prompt.strip():
            raise ConfigError('the prompt is empty: pass system.prompt_processor.prompt="a fox playing a violin"')
        self.prior = ShapePrior(cfg.init, prompt)  # checks the .ply / Shap-E source now, before any output
        self.gaussians = self._empty_gaussians()
        self.initialised = False
        self.strategy = dataclasses.replace(cfg.densify)
        self.densify_state = self.strategy.initialize_state()
        self.split_generator = torch.Generator(device=self.device).manual_seed(cfg.init.seed)
        self.guidance = None  # built on fit start: evaluation and export never load Stable Diffusion

    # ------------------------------------------------------------------ set-up
    def _empty_gaussians(self) -> GaussianModel:
        k = (self.cfg.sh_degree + 1) ** 2 - 1
        z = lambda *shape: torch.zeros(*shape, device=self.device)  # noqa: E731
        return GaussianModel(z(0, 3), z(0, 1, 3), z(0, k, 3), z(0), z(0, 3), z(0, 4), active_sh_degree=0)

    def initialise(self) -> PointCloud:
        """Gaussians from the initial point cloud (Shap-E is sampled here); writes save/shape.ply."""
        cloud = self.prior.build(self.device)
        model = GaussianModel.from_points(
            torch.from_numpy(cloud.points).to(self.device),
            torch.from_numpy(cloud.colors).to(self.device),
            sh_degree=self.cfg.sh_degree,
            init_opacity=self.cfg.init_opacity,
        )
        self.gaussians = model
        self.initialised = True
        self.densify_state = self.strategy.initialize_state()
        log.info("initial shape: %s, %d Gaussians", cloud.source, len(cloud))
        if self.save_dir is not None:  # set by the loop (`System.set_save_dir`)
            cloud.save(self.save_dir / "shape.ply")
        return cloud

    def _ensure_initialised(self) -> None:
        if not self.initialised:
            self.initialise()

    def on_fit_start(self, datamodule) -> None:
        if not self.initialised and not self.cfg.weights:  # resuming (or weights=) restores the Gaussians instead
            self.initialise()
        if self.guidance is None:
            gcfg = self.cfg.guidance
            if self.device.type == "cpu" and getattr(gcfg, "dtype", "fp32") != "fp32":
                log.info("note: guidance dtype %s -> fp32 on the CPU", gcfg.dtype)
                gcfg = dataclasses.replace(gcfg, dtype="fp32")
            parent = dataclasses.replace(self.cfg, guidance=gcfg)
            self.guidance = build_block(parent, "guidance", device=self.device)
        prompt = self.cfg.prompt_processor
        self.guidance.set_prompt(prompt.prompt, prompt.negative_prompt)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = self.gaussians.make_optimizer(self.cfg.lr)
        self.strategy.check_sanity(self.gaussians.params, optimizer)
        return optimizer

    # ------------------------------------------------------------------ rendering
    def render(self, cams: CameraBatch) -> tuple[torch.Tensor, torch.Tensor, RasterMeta]:
        """rgb [B, H, W, 3], alpha [B, H, W, 1] and the rasteriser's meta (projected means, radii, depth)."""
        background = torch.tensor(self.cfg.background_color, device=cams.c2w.device, dtype=torch.float32)
        return rasterize_cameras(self.gaussians, cams, background, self.cfg.rasterizer)

    def opacity_proxy(self, alpha: torch.Tensor, meta: RasterMeta) -> torch.Tensor:
        if self.cfg.sparsity_source == "alpha":
            return alpha
        return meta.depth / (meta.depth.max() + 1e-5)

    def weight(self, value: ScheduleValue) -> float:
        return schedule_value(value, self.global_step)

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: CameraBatch, step: int) -> dict[str, Any]:
        optimizer = self.optimizer
        GaussianModel.update_learning_rate(optimizer, step, self.cfg.lr)
        rgb, alpha, meta = self.render(batch)
        self.strategy.step_pre_backward(meta)
        w = self.cfg.loss
        guided = self.guidance(rgb.permute(0, 3, 1, 2), batch.elevation, batch.azimuth, batch.camera_distances)
        terms = {"sds": self.weight(w.lambda_sds) * guided.loss}
        if self.weight(w.lambda_sparsity) > 0 or self.weight(w.lambda_opaque) > 0:
            opacity = self.opacity_proxy(alpha, meta)
            if self.weight(w.lambda_sparsity) > 0:
                terms["sparsity"] = self.weight(w.lambda_sparsity) * losses.sparsity(opacity)
            if self.weight(w.lambda_opaque) > 0:
                terms["opaque"] = self.weight(w.lambda_opaque) * losses.opaque(opacity)
        out = sum_losses(terms)
        with section("backward"):
            out["loss"].backward()
        # upstream order: statistics and densification before the Adam step (new Gaussians skip that step)
        with section("densify"):
            report = self.strategy.step_post_backward(
                self.gaussians.params, optimizer, self.densify_state, step, meta, self.split_generator
            )
        with section("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        out["num_gaussians"] = report.num_gaussians
        return out

    # ------------------------------------------------------------------ evaluation and outputs
    def test_step(self, batch: CameraBatch, index: int) -> dict[str, torch.Tensor]:
        self._ensure_initialised()
        rgb, _, _ = self.render(batch)
        return {"rgb": rgb.clamp(0.0, 1.0)}

    def on_test_start(self, datamodule) -> None:
        self._ensure_initialised()
        if self.save_dir is not None:
            self.save_color_ply(self.save_dir / f"it{self.global_step}-test-color.ply")

    def on_fit_end(self) -> None:
        if self.save_dir is not None:
            self.gaussians.save_ply(self.save_dir / "last_3dgs.ply")
            log.info("Gaussians: %s (%d)", self.save_dir / "last_3dgs.ply", self.gaussians.num_gaussians)

    def export(self, out_dir: Path) -> list[Path]:
        self._ensure_initialised()
        ply = Path(out_dir) / "last_3dgs.ply"
        self.gaussians.save_ply(ply)
        return [ply, self.save_color_ply(Path(out_dir) / "color.ply")]
