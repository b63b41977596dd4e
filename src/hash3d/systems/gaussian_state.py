"""What every Gaussian-splatting system shares: rasterising a camera batch with the one `GaussianModel`, the
optimiser groups, and checkpoints whose Gaussian count (changed by densification) is restored on load.

A system using `GaussianSystemMixin` holds `self.gaussians` (GaussianModel), `self.densify_state` (DensifyState),
`self.initialised`, and reads `self.cfg.rasterizer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.batches import CameraBatch
from ..data.cameras import world_to_camera_opencv
from ..render.gaussian_raster import RasterMeta, rasterize_splats, resolve_backend
from ..scene.gaussian_ply import write_point_cloud_ply
from ..scene.gaussians import PARAM_NAMES, GaussianModel


def rasterize_cameras(
    gaussians: GaussianModel, cams: CameraBatch, background: torch.Tensor, backend: str = "auto",
    dc_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, RasterMeta]:
    """rgb [B, H, W, 3], alpha [B, H, W, 1] and the rasteriser's meta (projected means, radii, depth) of a camera batch;
    background [3] or [B, 3]; `dc_clip` as `GaussianModel.splats`. Cameras and projections run in fp32 even under
    autocast."""
    with torch.autocast(cams.c2w.device.type, enabled=False):
        viewmats = world_to_camera_opencv(cams.c2w.float())
        Ks = cams.intrinsics().to(viewmats)
        return rasterize_splats(gaussians.splats(dc_clip), viewmats, Ks, cams.width, cams.height, background.float(),
                                resolve_backend(backend, cams.c2w.device))


class GaussianSystemMixin:
    gaussians: GaussianModel

    def update_step(self, step: int, max_steps: int | None = None) -> None:
        """Only the guidance changes with the step (the Gaussians follow their own learning-rate schedules)."""
        self.global_step = step
        self.max_steps = max_steps or self.max_steps
        if self.guidance is not None:
            self.guidance.update_step(step, max_steps)

    def save_color_ply(self, path: Path) -> Path:
        """Gaussian centres with the colour of their degree-0 SH term (a point cloud any viewer opens)."""
        g = self.gaussians
        write_point_cloud_ply(path, g.means.detach().cpu().numpy(), g.rgb.detach().cpu().numpy())
        return path

    def load_checkpoint_state_dict(self, state, ignore: tuple[str, ...] = ()) -> None:
        """Adopt the checkpoint's Gaussian count (densification changes it), then load; an optimizer made before
        is pointed at the new tensors (its moments restart: the loop loads the saved ones right after)."""
        before = {name: self.gaussians.params[name] for name in PARAM_NAMES}
        super().load_checkpoint_state_dict(state, ignore)  # type: ignore[misc]
        self.initialised = True
        n = self.gaussians.num_gaussians
        self.densify_state.resize(n, self.gaussians.means.device)
        if self.optimizer is not None and any(self.gaussians.params[k] is not v for k, v in before.items()):
            own = {id(v): k for k, v in before.items()}
            for group in self.optimizer.param_groups:
                old = group["params"][0]
                if id(old) in own:
                    self.optimizer.state.pop(old, None)
                    group["params"] = [self.gaussians.params[own[id(old)]]]

    def extra_state(self) -> dict[str, Any]:
        state = super().extra_state()  # type: ignore[misc]
        s = self.densify_state
        if s.grad2d is not None:
            state["densify"] = {"grad2d": s.grad2d.detach().cpu(), "count": s.count.detach().cpu(),
                                "max_radii": s.max_radii.detach().cpu()}  # fmt: skip
        return state

    def load_extra_state(self, state) -> None:
        super().load_extra_state(state)  # type: ignore[misc]
        saved = state.get("densify")
        n = self.gaussians.num_gaussians
        if saved is not None and saved["grad2d"].shape[0] == n:
            device = self.gaussians.means.device
            self.densify_state.grad2d = saved["grad2d"].to(device)
            self.densify_state.count = saved["count"].to(device)
            self.densify_state.max_radii = saved["max_radii"].to(device)
