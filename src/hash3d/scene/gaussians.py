"""3D Gaussians as an optimisable scene: parameters, activations, initialisation, optimiser set-up.

Parameters live in one `nn.ParameterDict` (`model.params`), raw (pre-activation), N Gaussians:

==========  ==============  ==========================================
name        shape           activation
==========  ==============  ==========================================
means       [N, 3]          none (world space, threestudio z-up)
sh0         [N, 1, 3]       colour = SH_C0·sh0 + 0.5 (degree-0 SH)
shN         [N, K-1, 3]     higher SH bands, K = (sh_degree+1)² (K-1 may be 0)
opacities   [N]             sigmoid
scales      [N, 3] or [N, 1] exp; one column: isotropic (threestudio-3dgs `sphere`), read as 3 equal scales
quats       [N, 4]          normalise (wxyz)
==========  ==============  ==========================================

Densification (`hash3d.scene.gaussian_density`) replaces these parameters in place, so hold the dict, not
the tensors. The optimiser is one Adam with one named group per parameter (`make_optimizer`), learning rates
from `GaussianLRConfig` (DreamGaussian and GaussianDreamer presets), the means' rate on the 3DGS log-linear
schedule (`GaussianLRConfig.position_lr(step)`, applied by `update_learning_rate`).
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch
from torch import Tensor, nn

from hash3d.splatting import Splats, covariances_3d, rgb_to_sh, sh_to_rgb

__all__ = [
    "PARAM_NAMES",
    "GaussianLRConfig",
    "GaussianModel",
    "knn_mean_sq_dist",
    "inverse_sigmoid",
    "expon_lr",
]

PARAM_NAMES = ("means", "sh0", "shN", "opacities", "scales", "quats")


def inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1 - x))


def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int, delay_steps: int = 0, delay_mult: float = 1.0) -> float:
    """3DGS position schedule: log-linear from lr_init (step 0) to lr_final (step ≥ max_steps); with
    delay_steps > 0 the rate is first scaled by delay_mult and eased up along a sine over delay_steps."""
    if step < 0 or (lr_init == 0.0 and lr_final == 0.0):
        return 0.0
    delay = 1.0
    if delay_steps > 0:
        delay = delay_mult + (1 - delay_mult) * math.sin(0.5 * math.pi * min(max(step / delay_steps, 0.0), 1.0))
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return delay * math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


@dataclasses.dataclass
class GaussianLRConfig:
    """Adam learning rates per parameter group. Defaults: DreamGaussian (configs/image*.yaml, random init)."""

    position_lr_init: float = 0.001
    """Means' rate at step 0, before `spatial_lr_scale`."""
    position_lr_final: float = 0.00002
    """Means' rate at `position_lr_max_steps` and after, before `spatial_lr_scale` (log-linear in between)."""
    position_lr_delay_mult: float = 0.02
    position_lr_delay_steps: int = 0
    """No delay upstream, so `position_lr_delay_mult` has no effect by default."""
    position_lr_max_steps: int = 500
    spatial_lr_scale: float = 10.0
    """Multiplies the means' rates only (DreamGaussian passes 10 for its random init: 0.01 -> 0.0002)."""
    feature_lr: float = 0.01
    """sh0; shN uses feature_lr / feature_rest_lr_divisor."""
    feature_rest_lr_divisor: float = 20.0
    opacity_lr: float = 0.05
    scaling_lr: float = 0.005
    rotation_lr: float = 0.005
    adam_eps: float = 1e-15
    adam_betas: tuple[float, float] = (0.9, 0.999)

    @classmethod
    def dreamgaussian(cls) -> "GaussianLRConfig":
        """DreamGaussian stage 1 (image.yaml / image_sai.yaml)."""
        return cls()

    @classmethod
    def gaussiandreamer(cls) -> "GaussianLRConfig":
        """GaussianDreamer (its gaussiansplatting/arguments OptimizationParams, cameras_extent 4)."""
        return cls(
            position_lr_init=0.00005,
            position_lr_final=0.000025,
            position_lr_delay_mult=0.5,
            position_lr_delay_steps=0,
            position_lr_max_steps=30_000,
            spatial_lr_scale=4.0,
            feature_lr=0.0125,
            opacity_lr=0.01,
            scaling_lr=0.005,
            rotation_lr=0.001,
        )

    def position_lr(self, step: int) -> float:
        """Means' learning rate at `step` (spatial_lr_scale applied)."""
        return expon_lr(
            step,
            self.position_lr_init * self.spatial_lr_scale,
            self.position_lr_final * self.spatial_lr_scale,
            self.position_lr_max_steps,
            self.position_lr_delay_steps,
            self.position_lr_delay_mult,
        )

    def group_lrs(self) -> dict[str, float]:
        """Initial learning rate of every parameter group."""
        return {
            "means": self.position_lr(0),
            "sh0": self.feature_lr,
            "shN": self.feature_lr / self.feature_rest_lr_divisor,
            "opacities": self.opacity_lr,
            "scales": self.scaling_lr,
            "quats": self.rotation_lr,
        }


def knn_mean_sq_dist(points: Tensor, k: int = 3, max_chunk_elements: int = 1 << 24) -> Tensor:
    """[N, 3] -> [N] mean squared distance to the k nearest other points (what 3DGS's simple-knn
    `distCUDA2` computes, exactly rather than approximately). Duplicates count as neighbours at distance 0.
    Uses scipy's cKDTree on the CPU for large clouds when scipy is installed, else chunked `torch.cdist`."""
    n = points.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return points.new_zeros(n)
    pts = points.detach()
    if pts.device.type == "cpu" and n > 20_000:
        try:
            from scipy.spatial import cKDTree  # noqa: PLC0415
        except ImportError:
            cKDTree = None
        if cKDTree is not None:
            p = pts.double().numpy()
            d, _ = cKDTree(p).query(p, k=k + 1)  # the first column is (one copy of) the point itself
            return torch.from_numpy((d[:, 1:] ** 2).mean(1)).to(points.dtype)
    out = []
    chunk = max(1, max_chunk_elements // n)
    for s in range(0, n, chunk):
        q = pts[s : s + chunk]
        d2 = torch.cdist(q.double(), pts.double()).square()  # [c, N]
        d2[torch.arange(q.shape[0]), torch.arange(s, s + q.shape[0])] = float("inf")  # not itself
        out.append(d2.topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out).to(points.dtype)


class GaussianModel(nn.Module):
    """N 3D Gaussians with SH colour, anisotropic (scales [N, 3]) or isotropic (scales [N, 1]). See the module
    docstring for the parameter layout."""

    def __init__(
        self,
        means: Tensor,  # [N, 3]
        sh0: Tensor,  # [N, 1, 3]
        shN: Tensor,  # [N, K-1, 3]
        opacities: Tensor,  # [N] logits
        scales: Tensor,  # [N, 3] log scales, or [N, 1] for isotropic Gaussians
        quats: Tensor,  # [N, 4] wxyz
        active_sh_degree: int | None = None,
    ):
        super().__init__()
        n = means.shape[0]
        k1 = shN.shape[1]
        if math.isqrt(k1 + 1) ** 2 != k1 + 1:
            raise ValueError(f"shN has {k1} bands; expected (d+1)²−1 for an SH degree d")
        scale_cols = 1 if scales.dim() == 2 and scales.shape[1] == 1 else 3
        shapes = {"means": (n, 3), "sh0": (n, 1, 3), "shN": (n, k1, 3), "opacities": (n,), "scales": (n, scale_cols),
                  "quats": (n, 4)}  # fmt: skip
        tensors = dict(means=means, sh0=sh0, shN=shN, opacities=opacities, scales=scales, quats=quats)
        for name, t in tensors.items():
            if tuple(t.shape) != shapes[name]:
                raise ValueError(f"{name}: expected shape {shapes[name]}, got {tuple(t.shape)}")
        self.params = nn.ParameterDict({name: nn.Parameter(tensors[name].detach().clone()) for name in PARAM_NAMES})
        self.max_sh_degree = math.isqrt(k1 + 1) - 1
        self.active_sh_degree = self.max_sh_degree if active_sh_degree is None else int(active_sh_degree)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_points(
        cls,
        points: Tensor | np.ndarray,  # [N, 3]
        colors: Tensor | np.ndarray | None = None,  # [N, 3] in [0, 1]; None = grey
        *,
        sh_degree: int = 0,
        init_opacity: float = 0.1,
        knn_k: int = 3,
        min_sq_dist: float = 1e-7,
    ) -> "GaussianModel":
        """3DGS `create_from_pcd`: one isotropic Gaussian per point with scale sqrt(mean squared distance to
        its `knn_k` nearest neighbours) (clamped below by `min_sq_dist`), identity rotation, opacity
        `init_opacity`, colour from `colors`."""
        pts = torch.as_tensor(np.asarray(points) if not torch.is_tensor(points) else points).float()
        n = pts.shape[0]
        if pts.dim() != 2 or pts.shape[1] != 3 or n == 0:
            raise ValueError(f"points must be a non-empty [N, 3] array; got {tuple(pts.shape)}")
        if colors is None:
            rgb = torch.full((n, 3), 0.5, device=pts.device)
        else:
            rgb = torch.as_tensor(np.asarray(colors) if not torch.is_tensor(colors) else colors).float().to(pts.device)
            if rgb.shape != (n, 3):
                raise ValueError(f"colors must be [N, 3] like points; got {tuple(rgb.shape)}")
        dist2 = knn_mean_sq_dist(pts, knn_k).clamp_min(min_sq_dist) if n > 1 else pts.new_full((n,), 0.01)
        k1 = (sh_degree + 1) ** 2 - 1
        quats = torch.zeros(n, 4, device=pts.device)
        quats[:, 0] = 1.0
        return cls(
            means=pts,
            sh0=rgb_to_sh(rgb)[:, None, :],
            shN=torch.zeros(n, k1, 3, device=pts.device),
            opacities=inverse_sigmoid(torch.full((n,), float(init_opacity), device=pts.device)),
            scales=torch.log(torch.sqrt(dist2))[:, None].repeat(1, 3),
            quats=quats,
            active_sh_degree=0,
        )

    @classmethod
    def random_ball(
        cls,
        num_points: int = 5000,
        radius: float = 0.5,
        *,
        sh_degree: int = 0,
        init_opacity: float = 0.1,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> "GaussianModel":
        """DreamGaussian's random init: points uniform in a ball of `radius`, SH DC = U[0,1)/255 (colour ≈ 0.5
        grey), then `from_points` (kNN scales, identity rotations, opacity `init_opacity`)."""
        u = torch.rand(num_points, 4, generator=generator, dtype=torch.float64)
        phi = 2 * math.pi * u[:, 0]
        cos_t = 2 * u[:, 1] - 1
        sin_t = torch.sqrt(1 - cos_t**2)
        r = radius * torch.pow(u[:, 2], 1.0 / 3.0)
        pts = torch.stack([r * sin_t * torch.cos(phi), r * sin_t * torch.sin(phi), r * cos_t], 1).float()
        dc = torch.rand(num_points, 3, generator=generator) / 255.0
        model = cls.from_points(pts.to(device), sh_to_rgb(dc).to(device), sh_degree=sh_degree, init_opacity=init_opacity)
        with torch.no_grad():  # keep the exact upstream DC values (rgb -> SH round trip is not bit-exact)
            model.params["sh0"].copy_(dc[:, None, :].to(model.params["sh0"].device))
        return model

    @classmethod
    def from_ply(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> "GaussianModel":
        """Load a standard 3DGS .ply (raw parameters, any SH degree)."""
        from hash3d.scene.gaussian_ply import load_gaussian_ply  # noqa: PLC0415

        g = load_gaussian_ply(path)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return cls(t(g.means), t(g.sh0), t(g.shN), t(g.opacities), t(g.scales), t(g.quats))

    def save_ply(self, path: str | os.PathLike) -> None:
        """Write the raw parameters as a standard 3DGS .ply (float32, binary little-endian); an isotropic model
        writes its one log scale into all three scale columns, as viewers expect."""
        from hash3d.scene.gaussian_ply import save_gaussian_ply  # noqa: PLC0415

        p = {k: v.detach().float().cpu().numpy() for k, v in self.params.items()}
        scales = np.repeat(p["scales"], 3 // p["scales"].shape[1], axis=1)
        save_gaussian_ply(path, p["means"], p["sh0"], p["shN"], p["opacities"], scales, p["quats"])

    def to_isotropic(self) -> "GaussianModel":
        """A copy with one scale per Gaussian, the mean of its three log scales (threestudio-3dgs' `sphere` reads
        exp(mean log scale) on all three axes); an isotropic model is copied as is."""
        p = {k: v.detach() for k, v in self.params.items()}
        scales = p["scales"].double().mean(dim=1, keepdim=True).to(p["scales"].dtype)  # exact for equal columns
        return GaussianModel(p["means"], p["sh0"], p["shN"], p["opacities"], scales, p["quats"], self.active_sh_degree)

    # ---------------------------------------------------------------- activations

    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def means(self) -> Tensor:  # [N, 3]
        return self.params["means"]

    @property
    def isotropic(self) -> bool:
        """One scale per Gaussian (scales stored as [N, 1])."""
        return self.params["scales"].shape[1] == 1

    @property
    def scales(self) -> Tensor:  # [N, 3], three equal columns when isotropic
        s = torch.exp(self.params["scales"])
        return s.repeat(1, 3) if self.isotropic else s

    @property
    def quats(self) -> Tensor:  # [N, 4] unit wxyz
        q = self.params["quats"]
        return q / q.norm(dim=-1, keepdim=True)

    @property
    def opacities(self) -> Tensor:  # [N]
        return torch.sigmoid(self.params["opacities"])

    @property
    def sh_coeffs(self) -> Tensor:  # [N, K, 3]
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    @property
    def rgb(self) -> Tensor:  # [N, 3] view-independent colour from the DC term, clipped to [0, 1]
        return sh_to_rgb(self.params["sh0"][:, 0]).clamp(0.0, 1.0)

    def covariances(self) -> Tensor:  # [N, 3, 3]
        return covariances_3d(self.params["quats"], self.scales)

    def step_sh_degree(self) -> None:
        """Use one more SH band (3DGS `oneupSHdegree`), up to the stored degree."""
        self.active_sh_degree = min(self.active_sh_degree + 1, self.max_sh_degree)

    # ---------------------------------------------------------------- rendering

    def splats(self, dc_clip: float | None = None) -> Splats:
        """This model's activated parameters at its active SH degree, as a rasteriser takes them
        (`hash3d.render.gaussian_raster.rasterize_splats`); `dc_clip` clamps the DC coefficients to ±dc_clip
        (threestudio-3dgs' `color_clip`; the stored parameters are unchanged, their gradient is zero where clamped)."""
        K = (self.active_sh_degree + 1) ** 2
        dc = self.params["sh0"] if dc_clip is None else self.params["sh0"].clamp(-dc_clip, dc_clip)
        sh = torch.cat([dc, self.params["shN"][:, : K - 1]], dim=1)  # shN always in the graph: Adam keeps its state
        return Splats(self.means, self.params["quats"], self.scales, self.opacities, sh, self.active_sh_degree)

    # ---------------------------------------------------------------- optimisation

    def make_optimizer(self, lr: GaussianLRConfig | None = None) -> torch.optim.Adam:
        """One Adam, one group per parameter, each group carrying its parameter's name under "name"."""
        lr = lr or GaussianLRConfig()
        rates = lr.group_lrs()
        groups = [{"params": [self.params[name]], "lr": rates[name], "name": name} for name in PARAM_NAMES]
        return torch.optim.Adam(groups, lr=0.0, eps=lr.adam_eps, betas=lr.adam_betas)

    @staticmethod
    def update_learning_rate(optimizer: torch.optim.Optimizer, step: int, lr: GaussianLRConfig) -> float:
        """Set the means' rate for `step` (log-linear schedule); returns it."""
        rate = lr.position_lr(step)
        for group in optimizer.param_groups:
            if group.get("name") == "means":
                group["lr"] = rate
        return rate

    # ---------------------------------------------------------------- checkpoints

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # the number of Gaussians changes during training: adopt the checkpoint's shapes before loading
        # (an optimiser made earlier still points at the old tensors: make a new one after loading)
        for name in PARAM_NAMES:
            key = f"{prefix}params.{name}"
            if key in state_dict and state_dict[key].shape != self.params[name].shape:
                cur = self.params[name]
                self.params[name] = nn.Parameter(torch.empty_like(state_dict[key], device=cur.device, dtype=cur.dtype))
        sh_key = f"{prefix}params.shN"
        if sh_key in state_dict:
            self.max_sh_degree = math.isqrt(state_dict[sh_key].shape[1] + 1) - 1
            self.active_sh_degree = min(self.active_sh_degree, self.max_sh_degree)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def get_extra_state(self) -> dict:
        return {"active_sh_degree": self.active_sh_degree}

    def set_extra_state(self, state: dict) -> None:
        self.active_sh_degree = min(int(state.get("active_sh_degree", self.active_sh_degree)), self.max_sh_degree)

    def extra_repr(self) -> str:
        iso = ", isotropic" if self.isotropic else ""
        return f"num_gaussians={self.num_gaussians}, sh_degree={self.active_sh_degree}/{self.max_sh_degree}{iso}"
