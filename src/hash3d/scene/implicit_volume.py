"""Implicit volume: hash-grid encoding + small MLPs for density and albedo (threestudio's "implicit-volume").

World points in the box [−r, r]³ are mapped to [0, 1]³, encoded by the hash grid, and read by two MLPs:
one for the raw density, one for the colour features. The raw density gets a "blob" bias computed on the world
points (so a fresh field already holds a soft ball at the centre) before the density activation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config.errors import ConfigError
from ..config.registry import register
from .field import FieldOutput
from .hash_grid import HashGrid, HashGridConfig
from .isosurface import Mesh, extract_mesh
from .mlp import MLPConfig, make_mlp, mlp_with_jacobian


@dataclass
class ImplicitVolumeConfig:
    """Geometry of a NeRF-style scene (threestudio implicit-volume defaults with the zero123 MLP)."""

    radius: float = 2.0
    """The scene is the box [−radius, radius]³."""
    n_feature_dims: int = 3
    """Channels of the feature network; the first 3 give the albedo."""
    pos_encoding_config: HashGridConfig = field(default_factory=HashGridConfig)
    """Hash-grid encoding of the contracted points."""
    mlp_network_config: MLPConfig = field(default_factory=MLPConfig)
    """Shape of both the density and the feature network."""
    density_activation: Literal["softplus", "shifted_softplus", "exp"] = "softplus"
    """softplus(x); softplus(x − 1); or exp(x) with its gradient clamped at x = 15."""
    density_bias: Literal["blob_magic3d", "blob_dreamfusion", "none"] = "blob_magic3d"
    """Added to the raw density before the activation: scale·(1 − |x|/std), scale·exp(−|x|²/(2·std²)), or nothing."""
    density_blob_scale: float = 10.0
    """Height of the blob bias."""
    density_blob_std: float = 0.5
    """Width of the blob bias (world units)."""
    normal_type: Literal["analytic", "finite_difference", "none"] = "analytic"
    """Normals: −∇σ/|∇σ| with ∇σ computed exactly in the forward pass, by central differences, or not available."""
    finite_difference_normal_eps: float = 0.01
    """Step (world units) of the central differences."""
    albedo_activation: Literal["sigmoid", "none"] = "sigmoid"
    """Feature -> albedo map (threestudio's materials apply a sigmoid)."""
    isosurface_resolution: int = 128
    """Mesh export: grid vertices per axis."""
    isosurface_threshold: float | Literal["auto"] = 25.0
    """Mesh export (and DMTet conversion): density of the surface, or "auto": the mean density above 1e-5."""
    isosurface_coarse_to_fine: bool = True
    """Mesh export: second pass inside the first mesh's bounding box grown by 10%."""
    isosurface_outlier_fraction: float = 0.01
    """Mesh export: connected components with fewer than this fraction of the faces are dropped."""
    mlp_precision: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of the density and feature networks' matrix products: float32, or bfloat16 / float16 under autocast
    on the field's device (the hash grid, the blob and the outputs stay float32). Half precision is faster where the
    GPU has half-precision tensor cores (bench/field_precision.py) and moves normals and gradients at the percent
    level; float32 until the quality harness says otherwise."""
    recompute_mlps: bool = False
    """Keep only the MLPs' inputs for the backward and run their forward again there: less activation memory for
    more compute (for the largest render sizes). Values and gradients are the same."""

    def __post_init__(self) -> None:
        if self.radius <= 0:
            raise ValueError(f"geometry.radius must be > 0; got {self.radius}")
        if self.n_feature_dims < 3:
            raise ValueError(f"geometry.n_feature_dims must be >= 3 (albedo); got {self.n_feature_dims}")


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)), so a large raw density cannot blow up the update."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def _in_precision(network: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype, x: torch.Tensor) -> torch.Tensor:
    """network(x) with its matrix products in `dtype` (autocast; the backward follows), returned in x's dtype."""
    with torch.autocast(x.device.type, dtype=dtype):
        return network(x).to(x.dtype)


def density_activation(raw: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "softplus":
        return F.softplus(raw)
    if kind == "shifted_softplus":
        return F.softplus(raw - 1.0)
    if kind == "exp":
        return trunc_exp(raw)
    raise ValueError(f"unknown density_activation {kind!r}")


def density_activation_derivative(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """d density / d raw, as autograd of `density_activation` gives it."""
    if kind == "softplus":
        return torch.sigmoid(raw)
    if kind == "shifted_softplus":
        return torch.sigmoid(raw - 1.0)
    if kind == "exp":
        # _TruncExp's backward, clamp included, so ∂σ/∂x is what autograd gave before. The normal divides this
        # positive factor out either way; the clamp keeps it finite where exp(raw) would overflow (and the normal be NaN).
        return torch.exp(raw.clamp(max=15.0))
    raise ValueError(f"unknown density_activation {kind!r}")


def density_blob(points: torch.Tensor, kind: str, scale: float, std: float) -> torch.Tensor:
    """World points [N, 3] -> bias [N, 1] added to the raw density."""
    if kind == "blob_magic3d":
        return scale * (1.0 - points.norm(dim=-1, keepdim=True) / std)
    if kind == "blob_dreamfusion":
        return scale * torch.exp(-0.5 * (points * points).sum(-1, keepdim=True) / std**2)
    if kind == "none":
        return points.new_zeros(points.shape[0], 1)
    raise ValueError(f"unknown density_bias {kind!r}")


def density_blob_gradient(points: torch.Tensor, kind: str, scale: float, std: float) -> torch.Tensor:
    """World points [N, 3] -> d density_blob / d points [N, 3]."""
    if kind == "blob_magic3d":
        norm = points.norm(dim=-1, keepdim=True)
        # 0 at the centre, as autograd of the norm gives; no 1/0 even in the unused branch (its backward would be NaN)
        inv_norm = torch.where(norm > 0, 1.0 / torch.where(norm > 0, norm, 1.0), 0.0)
        return (-scale / std) * points * inv_norm
    if kind == "blob_dreamfusion":
        return (-scale / std**2) * torch.exp(-0.5 * (points * points).sum(-1, keepdim=True) / std**2) * points
    if kind == "none":
        return torch.zeros_like(points)
    raise ValueError(f"unknown density_bias {kind!r}")


def contract_to_unit(points: torch.Tensor, radius: float) -> torch.Tensor:
    """World points in [−r, r]³ -> [0, 1]³ (not clamped; the encoding clamps)."""
    return (points + radius) / (2.0 * radius)


@register("geometry", "implicit-volume", config=ImplicitVolumeConfig)
class ImplicitVolume(nn.Module):
    """Density and albedo field on [−r, r]³ (satisfies `hash3d.scene.field.RadianceField`)."""

    def __init__(self, config: ImplicitVolumeConfig | None = None, device: torch.device | str | None = None, **_runtime):
        super().__init__()
        self.config = config or ImplicitVolumeConfig()
        self.radius = float(self.config.radius)
        self.encoding = HashGrid(self.config.pos_encoding_config)
        mlp = self.config.mlp_network_config
        self.density_network = make_mlp(self.encoding.n_output_dims, 1, mlp)
        self.feature_network = make_mlp(self.encoding.n_output_dims, self.config.n_feature_dims, mlp)
        if device is not None:
            self.to(device)

    def update_step(self, global_step: int, max_steps: int | None = None) -> None:
        """Per-step schedule (the progressive hash-grid band)."""
        self.encoding.update_step(global_step, max_steps)

    def extract_mesh(self, resolution: int | None = None, threshold: float | None = None) -> Mesh:
        """Isosurface with the config's isosurface_* settings (arguments override them)."""
        cfg = self.config
        return extract_mesh(
            self,
            resolution=resolution or cfg.isosurface_resolution,
            threshold=cfg.isosurface_threshold if threshold is None else threshold,
            coarse_to_fine=cfg.isosurface_coarse_to_fine,
            min_component_fraction=cfg.isosurface_outlier_fraction,
        )

    def _mlp(self, network: Callable[[torch.Tensor], torch.Tensor], enc: torch.Tensor) -> torch.Tensor:
        """network(enc): every evaluation of the density and feature networks goes through here, so that
        `recompute_mlps` covers them all."""
        if self.config.mlp_precision != "float32":
            network = partial(_in_precision, network, getattr(torch, self.config.mlp_precision))
        if self.config.recompute_mlps and torch.is_grad_enabled():
            # the networks draw no random numbers: no RNG state to save and restore for the recomputation
            return checkpoint(network, enc, use_reentrant=False, preserve_rng_state=False)
        return network(enc)

    def _raw(self, points: torch.Tensor, with_features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        enc = self.encoding(contract_to_unit(points, self.radius))
        raw = self._mlp(self.density_network, enc) + density_blob(
            points, self.config.density_bias, self.config.density_blob_scale, self.config.density_blob_std
        )
        density = density_activation(raw, self.config.density_activation)
        features = self._mlp(self.feature_network, enc) if with_features else None
        return density, features

    def density_and_gradient(
        self, points: torch.Tensor, with_features: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """points [N, 3] world -> density [N, 1], d density / d points [N, 3], and the features if asked.

        The gradient is built in the forward pass (hash-grid Jacobian, forward-mode MLP, blob and activation
        derivatives), so losses on it train the field with first-order autograd.
        """
        cfg = self.config
        enc = self.encoding.forward_with_jacobian(contract_to_unit(points, self.radius))  # [N, 4, L·F], d / d unit coords
        raw_and_grad = self._mlp(partial(mlp_with_jacobian, self.density_network), enc)[..., 0]  # [N, 4]
        raw = raw_and_grad[:, :1] + density_blob(points, cfg.density_bias, cfg.density_blob_scale, cfg.density_blob_std)
        raw_grad = raw_and_grad[:, 1:] / (2.0 * self.radius) + density_blob_gradient(
            points, cfg.density_bias, cfg.density_blob_scale, cfg.density_blob_std
        )
        density = density_activation(raw, cfg.density_activation)
        grad = density_activation_derivative(raw, cfg.density_activation) * raw_grad
        features = self._mlp(self.feature_network, enc[:, 0]) if with_features else None
        return density, grad, features

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        """points [N, 3] world -> density [N, 1]."""
        return self._raw(points, with_features=False)[0]

    def albedo_from_features(self, features: torch.Tensor) -> torch.Tensor:
        rgb = features[..., :3]
        return torch.sigmoid(rgb) if self.config.albedo_activation == "sigmoid" else rgb

    def forward(self, points: torch.Tensor, with_normal: bool = False) -> FieldOutput:
        """points [N, 3] world -> density [N, 1], albedo [N, 3], features, and normal [N, 3] if asked.

        Analytic normals come from `density_and_gradient`: plain forward ops, so losses on normals train the field
        through ordinary autograd (no double backward). Under no_grad every output comes back detached.
        """
        if not with_normal or self.config.normal_type == "none":
            if with_normal:
                raise ConfigError("normals asked for, but geometry.normal_type is 'none'")
            density, features = self._raw(points, with_features=True)
            return FieldOutput(density, self.albedo_from_features(features), None, features)

        if self.config.normal_type == "finite_difference":
            density, features = self._raw(points, with_features=True)
            normal = self._finite_difference_normal(points)
            return FieldOutput(density, self.albedo_from_features(features), normal, features)

        density, grad, features = self.density_and_gradient(points, with_features=True)
        return FieldOutput(density, self.albedo_from_features(features), -F.normalize(grad, dim=-1), features)

    def normal(self, points: torch.Tensor) -> torch.Tensor:
        """points [N, 3] world -> the normal [N, 3] that `forward(points, with_normal=True)` returns, without the
        feature network (for losses on normals alone, e.g. the 3D normal smoothness at perturbed points)."""
        if self.config.normal_type == "none":
            raise ConfigError("normals asked for, but geometry.normal_type is 'none'")
        if self.config.normal_type == "finite_difference":
            return self._finite_difference_normal(points)
        _, grad, _ = self.density_and_gradient(points)
        return -F.normalize(grad, dim=-1)

    def _finite_difference_normal(self, points: torch.Tensor) -> torch.Tensor:
        eps = self.config.finite_difference_normal_eps
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps  # [3, 3]
        probe = torch.cat([points[None] + offsets[:, None], points[None] - offsets[:, None]], 0)  # [6, N, 3]
        d = self.forward_density(probe.reshape(-1, 3)).reshape(2, 3, -1)  # [±, axis, N]
        grad = ((d[0] - d[1]) / (2 * eps)).transpose(0, 1)  # [N, 3]
        return -F.normalize(grad, dim=-1)
