"""A trivial system for testing the launcher and the training loop end to end (registered as 'dummy-system').

Import this module (or put it in $HASH3D_PLUGINS) to register it; normal runs never see it. It learns one colour
per camera direction with a tiny MLP, draws from the global torch RNG and from its own generator (so resume tests
see every random stream), renders flat-shaded frames, fakes cache counters and exports a small text file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hash3d.config import register
from hash3d.data.batches import CameraBatch, SingleImageBatch
from hash3d.training.system import System, SystemConfig


@dataclass
class DummySystemConfig(SystemConfig):
    hidden: int = 8
    """Width of the MLP."""
    noise: float = 0.01
    """Std of the noise added to the target each step (drawn from the global torch RNG)."""
    target: tuple[float, float, float] = (0.8, 0.3, 0.1)
    fake_cache: bool = True
    """Report made-up cache counters (half the queries hit)."""


class FakeGuidance(nn.Module):
    """Stands in for a cached guidance: a generator of its own and cache counters."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(1234)
        self.queries = 0
        self.hits = 0
        self.steps_seen: list[int] = []

    def update_step(self, step: int, max_steps: int | None = None) -> None:
        self.steps_seen.append(step)

    def draw(self, n: int) -> torch.Tensor:
        u = torch.rand(n, generator=self.generator)
        self.queries += n
        self.hits += int((u < 0.5).sum())
        return u

    def cache_stats(self) -> dict[str, float]:
        return {"queries": self.queries, "hits": self.hits, "unet_calls_saved": self.hits}


@register("system", "dummy-system", config=DummySystemConfig)
class DummySystem(System):
    cfg: DummySystemConfig

    def configure(self) -> None:
        self.net = nn.Sequential(nn.Linear(4, self.cfg.hidden), nn.Tanh(), nn.Linear(self.cfg.hidden, 3))
        self.guidance = FakeGuidance()
        self.fit_started = False

    def on_fit_start(self, datamodule) -> None:
        self.fit_started = True
        self.guidance.generator.manual_seed(1234)  # as the real guidances' set_image / set_prompt do

    def colour(self, cams: CameraBatch) -> torch.Tensor:
        az = torch.deg2rad(cams.azimuth.float())
        feats = torch.stack([torch.sin(az), torch.cos(az), cams.elevation.float() / 90.0, cams.camera_distances.float()], -1)
        return torch.sigmoid(self.net(feats))

    def training_step(self, batch, step: int) -> dict:
        cams = batch.random if isinstance(batch, SingleImageBatch) else batch
        colour = self.colour(cams)
        u = self.guidance.draw(cams.batch_size)
        target = torch.tensor(self.cfg.target, device=colour.device) + self.cfg.noise * torch.randn(3).to(colour.device)
        loss = ((colour - target - 0.01 * u.to(colour.device)[:, None]) ** 2).mean()
        if isinstance(batch, SingleImageBatch):
            ref = batch.ref
            ref_colour = (ref.rgb * ref.mask).sum((1, 2)) / ref.mask.sum((1, 2)).clamp_min(1)
            loss = loss + ((self.colour(ref) - ref_colour) ** 2).mean()
        return {"loss": loss, "mse": loss.detach(), "batch_size": cams.batch_size}

    def test_step(self, batch: CameraBatch, index: int) -> dict:
        colour = self.colour(batch)
        ramp = torch.linspace(0.3, 1.0, batch.width, device=colour.device)
        shade = ramp[None, None, :, None].expand(batch.batch_size, batch.height, batch.width, 1)
        return {"rgb": colour[:, None, None, :] * shade, "opacity": shade}

    def cache_stats(self) -> dict[str, float]:
        return super().cache_stats() if self.cfg.fake_cache else {}

    def export(self, out_dir: Path) -> list[Path]:
        path = Path(out_dir) / "colour.txt"
        with torch.no_grad():
            front = self.net(torch.tensor([[0.0, 1.0, 0.0, 1.0]], device=next(self.parameters()).device))
        path.write_text(" ".join(f"{v:.6f}" for v in torch.sigmoid(front)[0].tolist()) + "\n")
        return [path]
