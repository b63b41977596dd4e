"""LPIPS: learned perceptual distance, loaded only when asked for.

An LPIPS function here is any callable `(x, y) -> (N,)` taking two (N, 3, H, W) batches in [0, 1]. The
published one comes from the `lpips` package, imported lazily because it pulls in torchvision and because its
backbone weights are downloaded on first use; when either cannot be had, `load_lpips` says why instead of
returning a number. `LPIPSDistance` computes the same distance over any feature network and per-layer channel
weights, so tests (or users with their own weights) can plug a network in without the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

LPIPSFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LPIPS_NETS = ("vgg", "alex", "squeeze")


@dataclass
class LPIPSStatus:
    """The loaded function, or None with the reason it could not be loaded."""

    fn: LPIPSFn | None
    net: str
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.fn is not None


def _unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPSDistance(nn.Module):
    """LPIPS over a given feature network.

    distance(x, y) = Σ_l mean_{h,w} Σ_c w_lc · (f̂_l(x) − f̂_l(y))²_c, where f̂_l are the layer-l features
    normalised to unit length over channels. Inputs in [0, 1] are mapped to [-1, 1], then (z − shift) / scale.

    features: a module mapping (N, 3, H, W) to a sequence of (N, C_l, H_l, W_l) feature maps.
    weights:  one non-negative (C_l,) tensor per feature map.
    """

    def __init__(
        self,
        features: nn.Module,
        weights: Sequence[torch.Tensor],
        shift: Sequence[float] = (0.0, 0.0, 0.0),
        scale: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        self.features = features
        self.weights = nn.ParameterList([nn.Parameter(torch.as_tensor(w).flatten().clone(), requires_grad=False) for w in weights])
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dtype = self.shift.dtype
        x = ((x.to(dtype) * 2 - 1) - self.shift) / self.scale
        y = ((y.to(dtype) * 2 - 1) - self.shift) / self.scale
        feats_x, feats_y = self.features(x), self.features(y)
        if len(feats_x) != len(self.weights):
            raise ValueError(f"the network gave {len(feats_x)} feature maps for {len(self.weights)} weight vectors")
        total = torch.zeros(x.shape[0], dtype=dtype, device=x.device)
        for fx, fy, w in zip(feats_x, feats_y, self.weights):
            diff = (_unit_normalize(fx) - _unit_normalize(fy)).pow(2)
            total = total + (diff * w.view(1, -1, 1, 1)).sum(1).mean(dim=(1, 2))
        return total


def load_lpips(net: str = "vgg", device: str | torch.device = "cpu") -> LPIPSStatus:
    """The published LPIPS (package `lpips`) with the given backbone, or the reason it is unavailable.

    Imports torchvision (through `lpips`) only here, so nothing else in the evaluation path needs it.
    """
    if net not in LPIPS_NETS:
        return LPIPSStatus(None, net, f"unknown LPIPS network {net!r} (choose from {', '.join(LPIPS_NETS)})")
    try:
        import lpips  # noqa: PLC0415  (deliberately lazy: pulls in torchvision)
    except ImportError as exc:
        return LPIPSStatus(
            None,
            net,
            f"the 'lpips' package is not installed or failed to import ({exc}); "
            "install it with 'pip install lpips' next to a torchvision that matches your torch",
        )
    except Exception as exc:  # a broken torchvision raises all sorts of things at import
        return LPIPSStatus(None, net, f"importing the 'lpips' package failed ({type(exc).__name__}: {exc})")
    try:
        model = lpips.LPIPS(net=net, verbose=False).eval().to(device)
    except Exception as exc:
        hub = torch.hub.get_dir()
        return LPIPSStatus(
            None,
            net,
            f"the pretrained {net} backbone could not be loaded ({type(exc).__name__}: {exc}); torchvision downloads "
            f"it on first use, so run once on a machine with network access or copy the weights into {hub}/checkpoints",
        )

    @torch.no_grad()
    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x.float().to(device), y.float().to(device), normalize=True).flatten()

    return LPIPSStatus(distance, net)
