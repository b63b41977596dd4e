"""threestudio-3dgs inside the launcher: Gaussian splatting with SDS, on the one `GaussianModel`.

`GaussianSplattingSystem` is what both recipes share: the `gaussian-splatting` geometry block (initial Gaussians,
learning rates on exponential schedules, densification as `GaussianDensifyStrategy`), rendering a camera batch,
a manually driven step (densification replaces parameters), evaluation renders, and export (3DGS .ply + mesh
through the `gaussian-mesh-exporter`). Checkpoints restore the number of Gaussians.

`gaussian-splatting-zero123-system` (threestudio-3dgs' gaussian_zero123.py): each step renders the random views and
the reference view on a white background, SDS from (Stable-)Zero123 on the random views (t range annealed by the
guidance's schedules), MSE of the masked colours and of the mask on the reference view, one backward; the
densification statistics come from the reference view's render (upstream keeps the last substep's), before the Adam
step. Evaluation renders use the inverted (black) background.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..config import ConfigError, block, build_block, register
from ..data.batches import CameraBatch, SingleImageBatch
from ..diffusion.schedule import ScheduleValue, schedule_value
from ..profiling import section
from ..scene.gaussian_splatting import OPACITY_RESET_FACTOR, GaussianSplattingConfig, empty_gaussians, make_gaussians
from ..training.system import System, SystemConfig
from .gaussian_state import GaussianSystemMixin, rasterize_cameras
from .nerf import sum_losses

log = logging.getLogger("hash3d")


@dataclass
class GaussianRendererConfig:
    """threestudio-3dgs' `diff-gaussian-rasterizer-advanced` background rule."""

    back_ground_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Training background; evaluation renders use its inverse (1 - colour)."""
    invert_bg_prob: float = 1.0
    """A training view gets the inverted background when a uniform draw exceeds this (1.0: never)."""
    rasterizer: Literal["auto", "torch", "gsplat"] = "auto"
    """'auto': gsplat on CUDA when installed, the pure-torch splatter otherwise."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.invert_bg_prob <= 1.0:
            raise ValueError(f"renderer.invert_bg_prob must be in [0, 1]; got {self.invert_bg_prob}")


@dataclass
class GaussianSplattingSystemConfig(SystemConfig):
    """`system:` of the Gaussian-splatting systems. `optimizer.args` give Adam's betas and eps; the Gaussians' rates
    come from the geometry block, other modules' from `optimizer.params`."""

    geometry_type: str = "gaussian-splatting"
    geometry: Any = block("geometry")
    exporter_type: str = "gaussian-mesh-exporter"
    exporter: Any = block("exporter")
    guidance_type: str = ""
    guidance: Any = block("guidance")
    renderer: GaussianRendererConfig = field(default_factory=GaussianRendererConfig)

    def __post_init__(self) -> None:
        if self.scheduler is not None:
            raise ValueError("system.scheduler is not used here: the Gaussians' rates follow the geometry block's "
                             "schedules (position_lr, feature_lr, ...); remove it")
        if self.geometry is not None and not isinstance(self.geometry, GaussianSplattingConfig):
            raise ValueError(f"the Gaussian-splatting systems need geometry_type gaussian-splatting; got {self.geometry_type!r}")


class GaussianSplattingSystem(GaussianSystemMixin, System):
    cfg: GaussianSplattingSystemConfig
    automatic_optimization = False  # densification replaces parameters: the step is driven here

    def configure(self) -> None:
        cfg = self.cfg
        self.gaussians = empty_gaussians(cfg.geometry, self.device)
        self.initialised = False
        self.strategy = cfg.geometry.densify_strategy()
        self.densify_state = self.strategy.initialize_state()
        self.split_generator = torch.Generator(device=self.device).manual_seed(cfg.geometry.seed)
        self.background_generator = torch.Generator().manual_seed(cfg.geometry.seed)
        self.exporter = build_block(cfg, "exporter")
        self.guidance = None  # built on fit start: evaluation and export never load the diffusion model

    # ------------------------------------------------------------------ set-up
    def _ensure_initialised(self) -> None:
        if not self.initialised:
            self.gaussians = make_gaussians(self.cfg.geometry, self.device)
            self.densify_state = self.strategy.initialize_state()
            self.initialised = True
            log.info("initial Gaussians: %d", self.gaussians.num_gaussians)

    def build_guidance(self) -> None:
        if self.guidance is None:
            gcfg = self.cfg.guidance
            if self.device.type == "cpu" and getattr(gcfg, "dtype", "fp32") != "fp32":
                log.info("note: guidance dtype %s -> fp32 on the CPU", gcfg.dtype)
                gcfg = dataclasses.replace(gcfg, dtype="fp32")
            self.guidance = build_block(dataclasses.replace(self.cfg, guidance=gcfg), "guidance", device=self.device)

    def on_fit_start(self, datamodule) -> None:
        if not self.cfg.weights:  # resuming (or weights=) restores the Gaussians instead
            self._ensure_initialised()
        self.build_guidance()

    def load_checkpoint_state_dict(self, state, ignore: tuple[str, ...] = ()) -> None:
        super().load_checkpoint_state_dict(state, ignore)
        sphere = self.cfg.geometry.sphere
        if self.gaussians.isotropic != sphere:
            saved = "isotropic (sphere: true)" if self.gaussians.isotropic else "anisotropic (sphere: false)"
            raise ConfigError(
                f"the checkpoint holds {saved} Gaussians but system.geometry.sphere={str(sphere).lower()}; "
                f"pass system.geometry.sphere={str(not sphere).lower()} to load it"
            )

    def other_modules(self) -> dict[str, torch.nn.Module]:
        """Trainable modules besides the Gaussians (the shading system's background), by optimizer group name."""
        return {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One Adam: a group per Gaussian parameter (rates set every step) and one per other module."""
        args = self.cfg.optimizer.args
        rates = self.cfg.geometry.learning_rates(0)
        groups = [{"params": [p], "lr": rates[name], "name": name} for name, p in self.gaussians.params.items()]
        for name, module in self.other_modules().items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                group = self.cfg.optimizer.params.get(name)
                lr = group.lr if group is not None and group.lr is not None else args.lr
                groups.append({"params": params, "lr": lr, "name": name})
        optimizer = torch.optim.Adam(groups, lr=args.lr, betas=args.betas, eps=args.eps)
        self.strategy.check_sanity(self.gaussians.params, optimizer)
        return optimizer

    def update_learning_rates(self, step: int) -> None:
        rates = self.cfg.geometry.learning_rates(step)
        for group in self.optimizer.param_groups:
            if group.get("name") in rates:
                group["lr"] = rates[group["name"]]

    def weight(self, value: ScheduleValue) -> float:
        return schedule_value(value, self.global_step)

    # ------------------------------------------------------------------ rendering
    def background_color(self, n: int, training: bool) -> torch.Tensor:
        """[n, 3] per-view solid backgrounds: the configured colour in training (inverted when a draw exceeds
        invert_bg_prob), its inverse at evaluation."""
        r = self.cfg.renderer
        color = torch.tensor(r.back_ground_color, dtype=torch.float32, device=self.device).expand(n, 3)
        if not training:
            return 1.0 - color
        invert = torch.rand(n, generator=self.background_generator) > r.invert_bg_prob
        return torch.where(invert.to(self.device)[:, None], 1.0 - color, color)

    def render(self, cams: CameraBatch, background: torch.Tensor):
        clip = schedule_value(self.cfg.geometry.color_clip, self.global_step)
        return rasterize_cameras(self.gaussians, cams, background, self.cfg.renderer.rasterizer, dc_clip=clip)

    # ------------------------------------------------------------------ the step
    def optimise(self, terms: dict[str, torch.Tensor], step: int, meta) -> dict[str, Any]:
        """Backward of the summed terms, densification from `meta` (before the Adam step, as upstream), Adam step."""
        out = sum_losses(terms)
        if torch.is_tensor(out["loss"]) and out["loss"].requires_grad:
            with section("backward"):
                out["loss"].backward()
        with section("densify"):
            report = self.strategy.step_post_backward(
                self.gaussians.params, self.optimizer, self.densify_state, step, meta, self.split_generator
            )
        with section("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if report.opacity_reset:
            log.info("step %d: opacities reset (x%g)", step, OPACITY_RESET_FACTOR)
        out["num_gaussians"] = report.num_gaussians
        return out

    # ------------------------------------------------------------------ evaluation and outputs
    def test_step(self, batch: CameraBatch, index: int) -> dict[str, torch.Tensor]:
        self._ensure_initialised()
        rgb, alpha, _ = self.render(batch, self.background_color(batch.batch_size, training=False))
        return {"rgb": rgb.clamp(0.0, 1.0), "opacity": alpha.clamp(0.0, 1.0)}

    def on_fit_end(self) -> None:
        if self.save_dir is not None:
            self.gaussians.save_ply(self.save_dir / "last_3dgs.ply")
            log.info("Gaussians: %s (%d)", self.save_dir / "last_3dgs.ply", self.gaussians.num_gaussians)

    def export(self, out_dir: Path) -> list[Path]:
        self._ensure_initialised()
        return self.exporter(self.gaussians, out_dir)


# ---------------------------------------------------------------------------------------------- zero123


@dataclass
class GaussianZero123LossConfig:
    lambda_sds: ScheduleValue = 0.1
    lambda_rgb: ScheduleValue = (100, 500, 1000, 400)
    """MSE of the masked reference colours."""
    lambda_mask: ScheduleValue = 50.0
    """MSE of the rendered alpha against the reference mask."""


@dataclass
class GaussianZero123SystemConfig(GaussianSplattingSystemConfig):
    guidance_type: str = "stable-zero123-guidance"
    loss: GaussianZero123LossConfig = field(default_factory=GaussianZero123LossConfig)


@register("system", "gaussian-splatting-zero123-system", config=GaussianZero123SystemConfig)
class GaussianZero123System(GaussianSplattingSystem):
    cfg: GaussianZero123SystemConfig

    def on_fit_start(self, datamodule) -> None:
        super().on_fit_start(datamodule)
        ref = datamodule.cfg
        self.guidance.set_image(
            datamodule.reference_image, ref.default_elevation_deg, ref.default_azimuth_deg, ref.default_camera_distance
        )

    def training_step(self, batch: SingleImageBatch, step: int) -> dict[str, Any]:
        self.update_learning_rates(step)
        w = self.cfg.loss
        terms: dict[str, torch.Tensor] = {}
        if batch.random is not None and self.weight(w.lambda_sds) > 0:
            cams = batch.random
            rgb, _, _ = self.render(cams, self.background_color(cams.batch_size, training=True))
            guided = self.guidance(rgb.permute(0, 3, 1, 2), cams.elevation, cams.azimuth, cams.camera_distances)
            terms["sds"] = self.weight(w.lambda_sds) * guided.loss
        ref = batch.ref
        rgb, alpha, meta = self.render(ref, self.background_color(ref.batch_size, training=True))
        self.strategy.step_pre_backward(meta)
        mask = ref.mask.float()
        terms["rgb"] = self.weight(w.lambda_rgb) * F.mse_loss(rgb * mask, ref.rgb * mask)
        terms["mask"] = self.weight(w.lambda_mask) * F.mse_loss(alpha, mask)
        return self.optimise(terms, step, meta)
