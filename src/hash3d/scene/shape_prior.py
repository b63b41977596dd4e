"""Initial coloured point clouds for text-to-3D Gaussians: GaussianDreamer's 3D prior and two simple alternatives.

`system.init.kind` picks the source:

- ``shap_e``: a text-to-3D Shap-E model (diffusers `ShapEPipeline`, hub id ``openai/shap-e`` or a local folder in
  that layout) samples a latent from the prompt (guidance 15, 64 Karras steps, as GaussianDreamer); the latent is
  decoded into a mesh (diffusers' `ShapERenderer.decode_to_mesh`, a 128³ SDF grid and marching cubes, i.e. what
  ``output_type="mesh"`` does, with the grid size exposed); its vertices and vertex colours are grown with noisy
  neighbours (`grow_points`) and scaled by ``scale`` (GaussianDreamer: radius 4 × 0.4 = 1.6).
- ``ply``: the user's point cloud (any vertex .ply: x y z with red/green/blue, or a 3DGS .ply whose colour comes
  from the degree-0 SH term), scaled by ``ply.scale``; grey where it has no colours.
- ``sphere``: points uniform in a ball, coloured by position (a neutral start that needs no model).

Frames. Points end up in threestudio's world (z up; the front view, azimuth 0, looks from +x). Shap-E meshes are
z up with their front towards −y (its first pan camera, and GaussianDreamer's front camera, sit on −y), so they are
turned 90° about z: (x, y, z) -> (−y, x, z). A .ply is taken to be in the world frame already.

Every check of the user's input (a missing or unreadable .ply, a Shap-E folder without the pipeline layout, an
unknown kind) happens in `ShapePrior.__init__`, before a run writes anything; Shap-E itself is loaded and sampled only
by `ShapePrior.build`, so that resuming or rendering a trained run never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config.errors import UserInputError, exception_summary
from ..diffusion.resident import load_kept
from ..hub import is_hub_id
from .gaussian_ply import read_point_cloud_ply, write_point_cloud_ply

__all__ = [
    "PlyPriorConfig",
    "PointCloud",
    "ShapEPriorConfig",
    "ShapePrior",
    "ShapePriorConfig",
    "ShapePriorError",
    "SpherePriorConfig",
    "grow_points",
    "shap_e_to_world",
    "SHAP_E_SUBFOLDERS",
]

log = logging.getLogger("hash3d")

SHAP_E_SUBFOLDERS = ("prior", "text_encoder", "tokenizer", "scheduler", "shap_e_renderer")
_SHAP_E_LAYOUT = (
    "the diffusers ShapEPipeline layout (like openai/shap-e): model_index.json and the subfolders "
    + ", ".join(f"{s}/" for s in SHAP_E_SUBFOLDERS)
)


class ShapePriorError(UserInputError, ValueError):
    """An initial shape that cannot be made: a missing or unreadable .ply, a Shap-E model that cannot be loaded."""


@dataclass
class ShapEPriorConfig:
    """Shap-E text-to-3D sampling and GaussianDreamer's noisy point growing."""

    pretrained_model_name_or_path: str = "openai/shap-e"
    """Hub id or local folder in the diffusers ShapEPipeline layout (GaussianDreamer used Cap3D-finetuned
    text300M weights: convert them to this layout to use them)."""
    local_files_only: bool = False
    prompt: str = ""
    """Text for Shap-E; empty: the system's prompt."""
    guidance_scale: float = 15.0
    num_inference_steps: int = 64
    dtype: Literal["fp16", "fp32"] = "fp16"
    """Weights dtype on a GPU (the CPU always uses fp32)."""
    mesh_grid_size: int = 128
    """Resolution of the SDF grid the mesh is extracted from (diffusers' and Shap-E's default: 128)."""
    vertex_stride: int = 1
    """Keep every k-th mesh vertex (GaussianDreamer's `skip`)."""
    grow: bool = True
    """Add noisy neighbours around the vertices (GaussianDreamer's `add_points`)."""
    grow_samples: int = 1_000_000
    """Candidates drawn uniformly in the vertices' bounding box."""
    grow_radius: float = 0.01
    """A candidate is kept when its nearest vertex is closer than this (Shap-E units, before `scale`)."""
    grow_color_noise: float = 0.2
    """Kept candidates take their nearest vertex's colour plus this times U[0, 1) per channel (not clipped)."""
    scale: float = 1.6
    """Multiplies every point (GaussianDreamer: bound = radius 4 × 0.4)."""

    def __post_init__(self) -> None:
        for name in ("num_inference_steps", "mesh_grid_size", "vertex_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"shap_e.{name} must be >= 1; got {getattr(self, name)}")
        if self.mesh_grid_size < 8:
            raise ValueError(f"shap_e.mesh_grid_size must be >= 8; got {self.mesh_grid_size}")
        if self.grow_samples < 0 or self.grow_radius <= 0 or self.scale <= 0:
            raise ValueError("shap_e.grow_samples must be >= 0, shap_e.grow_radius and shap_e.scale > 0")


@dataclass
class PlyPriorConfig:
    path: str = ""
    """A point cloud .ply in the world frame (z up, front towards +x)."""
    scale: float = 1.0
    """Multiplies every point."""

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"ply.scale must be > 0; got {self.scale}")


@dataclass
class SpherePriorConfig:
    num_points: int = 4096
    radius: float = 0.5
    """Points are uniform inside a ball of this radius (world units)."""

    def __post_init__(self) -> None:
        if self.num_points < 1 or self.radius <= 0:
            raise ValueError(
                f"sphere.num_points must be >= 1 and sphere.radius > 0; got {self.num_points}, {self.radius}"
            )


@dataclass
class ShapePriorConfig:
    """`system.init`: where the initial Gaussians come from."""

    kind: Literal["shap_e", "ply", "sphere"] = "shap_e"
    seed: int = 0
    """Seeds the Shap-E sampler, the point growing and the sphere."""
    shap_e: ShapEPriorConfig = field(default_factory=ShapEPriorConfig)
    ply: PlyPriorConfig = field(default_factory=PlyPriorConfig)
    sphere: SpherePriorConfig = field(default_factory=SpherePriorConfig)


@dataclass
class PointCloud:
    """N points [N, 3] float32 and their colours [N, 3] float32 (about [0, 1]; grown colours may exceed 1)."""

    points: np.ndarray
    colors: np.ndarray
    source: str

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        """Write a coloured point-cloud .ply (colours clipped to [0, 1] and stored as bytes)."""
        write_point_cloud_ply(path, self.points, np.clip(self.colors, 0.0, 1.0))
        return Path(path)


# ------------------------------------------------------------------------------------------------ pieces


def shap_e_to_world(points: np.ndarray) -> np.ndarray:
    """Shap-E frame (z up, front towards −y) -> threestudio world (z up, front towards +x): 90° about z."""
    p = np.asarray(points, dtype=np.float32)
    return np.stack([-p[:, 1], p[:, 0], p[:, 2]], axis=1)


def grow_points(
    points: np.ndarray,  # [V, 3]
    colors: np.ndarray,  # [V, 3]
    samples: int,
    radius: float,
    color_noise: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """GaussianDreamer's noisy point growing: `samples` candidates uniform in the points' bounding box; those whose
    nearest point is closer than `radius` are kept, coloured like that point plus `color_noise`·U[0, 1) per channel.
    Returns the kept candidates followed by the original points."""
    from scipy.spatial import cKDTree  # noqa: PLC0415 - a core dependency, imported when used

    points = np.asarray(points, dtype=np.float64)
    colors = np.asarray(colors, dtype=np.float64)
    if samples <= 0 or len(points) == 0:
        return points.astype(np.float32), colors.astype(np.float32)
    low, high = points.min(0), points.max(0)
    candidates = rng.uniform(low, high, size=(samples, 3))
    distance, nearest = cKDTree(points).query(candidates, k=1)
    keep = distance < radius
    grown = candidates[keep]
    grown_colors = colors[nearest[keep]] + color_noise * rng.random((int(keep.sum()), 3))
    return (
        np.concatenate([grown, points]).astype(np.float32),
        np.concatenate([grown_colors, colors]).astype(np.float32),
    )


def ball_points(num_points: int, radius: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform in a ball, coloured by position (0.5 + 0.4·p/radius: each side its own hue)."""
    direction = rng.normal(size=(num_points, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True).clip(1e-12)
    points = direction * radius * rng.random((num_points, 1)) ** (1.0 / 3.0)
    return points.astype(np.float32), (0.5 + 0.4 * points / radius).astype(np.float32)


def check_shap_e_source(name_or_path: str) -> None:
    """ShapePriorError when `name_or_path` is neither a folder in the ShapEPipeline layout nor a hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ShapePriorError(
                f"system.init.shap_e.pretrained_model_name_or_path: '{path}' is a file, but a folder in "
                f"{_SHAP_E_LAYOUT} is expected"
            )
        missing = [s for s in ("model_index.json", *SHAP_E_SUBFOLDERS) if not (path / s).exists()]
        if missing:
            raise ShapePriorError(
                f"system.init.shap_e.pretrained_model_name_or_path: the folder '{path}' lacks "
                f"{', '.join(missing)}; expected {_SHAP_E_LAYOUT}"
            )
        return
    if not is_hub_id(name_or_path):
        raise ShapePriorError(
            f"system.init.shap_e.pretrained_model_name_or_path: no folder '{path}', and '{name_or_path}' is not a "
            f"hub id like openai/shap-e. Pass a folder in {_SHAP_E_LAYOUT} or a hub id, or start from "
            "system.init.kind=sphere (or kind=ply with system.init.ply.path=...)"
        )


def read_ply_cloud(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Points and colours (grey where the file has none) of a .ply; ShapePriorError naming the file otherwise."""
    if not path:
        raise ShapePriorError("system.init.kind=ply needs a point cloud: add system.init.ply.path=PATH/TO/points.ply")
    file = Path(path).expanduser()
    if not file.is_file():
        where = " (it is a folder)" if file.is_dir() else ""
        raise ShapePriorError(f"system.init.ply.path: point cloud not found: {file}{where}")
    try:
        points, colors = read_point_cloud_ply(file)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError, OSError) as exc:
        raise ShapePriorError(f"system.init.ply.path: cannot read {file} as a point cloud .ply: {exc}") from exc
    if len(points) == 0:
        raise ShapePriorError(f"system.init.ply.path: {file} holds no points")
    if not np.isfinite(points).all():
        raise ShapePriorError(f"system.init.ply.path: {file} has non-finite coordinates")
    if colors is None:
        colors = np.full_like(points, 0.5)
    return points.astype(np.float32), colors.astype(np.float32)


# ------------------------------------------------------------------------------------------------ Shap-E


@contextlib.contextmanager
def _quiet_loading():
    """No download/loading progress bars or info chatter from diffusers and transformers while loading."""
    from diffusers.utils import logging as diffusers_logging  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    bars = diffusers_logging.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    level = diffusers_logging.get_verbosity()
    diffusers_logging.disable_progress_bar()
    hf_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            hf_logging.enable_progress_bar()


def load_shap_e(cfg: ShapEPriorConfig, device: torch.device):
    """The ShapEPipeline from a hub id or folder, on `device` (fp32 on the CPU). Inside
    `hash3d.diffusion.resident.keep_loaded` (a batch worker running item after item) a copy of the one loaded before."""
    dtype = torch.float16 if cfg.dtype == "fp16" and device.type == "cuda" else torch.float32
    offline = cfg.local_files_only or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    name = cfg.pretrained_model_name_or_path
    return load_kept(("shap_e", str(name), str(device), str(dtype), offline),
                     lambda: _load_shap_e(name, dtype, offline, device))  # fmt: skip


def _load_shap_e(name: str, dtype: torch.dtype, offline: bool, device: torch.device):
    from diffusers import ShapEPipeline  # noqa: PLC0415

    try:
        with _quiet_loading(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = ShapEPipeline.from_pretrained(name, torch_dtype=dtype, local_files_only=offline)
    except Exception as exc:  # noqa: BLE001 - hub, file and layout errors all mean "cannot load"
        raise ShapePriorError(
            f"cannot load the Shap-E model '{name}' ({exception_summary(exc)}). Pass a folder in "
            f"{_SHAP_E_LAYOUT} with system.init.shap_e.pretrained_model_name_or_path=DIR (download it with "
            f"`huggingface-cli download openai/shap-e` where there is network), or start from "
            "system.init.kind=sphere or kind=ply"
        ) from exc
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_shap_e(cfg: ShapEPriorConfig, prompt: str, seed: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Shap-E mesh vertices [V, 3] (Shap-E frame) and their RGB vertex colours [V, 3] for `prompt`."""
    pipe = load_shap_e(cfg, device)
    try:
        generator = torch.Generator().manual_seed(seed)
        latents = pipe(
            prompt,
            guidance_scale=cfg.guidance_scale,
            num_inference_steps=cfg.num_inference_steps,
            generator=generator,
            output_type="latent",
        ).images
        mesh = pipe.shap_e_renderer.decode_to_mesh(latents[:1], device, grid_size=cfg.mesh_grid_size)
        verts = mesh.verts.float().cpu().numpy()
        colors = torch.stack([mesh.vertex_channels[c] for c in "RGB"], -1).float().cpu().numpy()
    finally:
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(verts) == 0:
        raise ShapePriorError(
            f"Shap-E decoded an empty mesh for '{prompt}': try another system.init.seed, or system.init.kind=sphere"
        )
    stride = cfg.vertex_stride
    return verts[::stride], colors[::stride]


# ------------------------------------------------------------------------------------------------ the prior


class ShapePrior:
    """Checks the initial-shape inputs on construction; `build(device)` makes the point cloud."""

    def __init__(self, cfg: ShapePriorConfig, prompt: str):
        self.cfg = cfg
        self.prompt = cfg.shap_e.prompt or prompt
        self._ply: tuple[np.ndarray, np.ndarray] | None = None
        if cfg.kind == "ply":
            self._ply = read_ply_cloud(cfg.ply.path)
        elif cfg.kind == "shap_e":
            if not self.prompt.strip():
                raise ShapePriorError("Shap-E needs a prompt: set system.prompt_processor.prompt")
            check_shap_e_source(cfg.shap_e.pretrained_model_name_or_path)
        elif cfg.kind != "sphere":
            raise ShapePriorError(f"system.init.kind must be shap_e, ply or sphere; got {cfg.kind!r}")

    def build(self, device: torch.device | str = "cpu") -> PointCloud:
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        if cfg.kind == "sphere":
            points, colors = ball_points(cfg.sphere.num_points, cfg.sphere.radius, rng)
            return PointCloud(points, colors, f"sphere of radius {cfg.sphere.radius:g}")
        if cfg.kind == "ply":
            assert self._ply is not None
            points, colors = self._ply
            return PointCloud(points * cfg.ply.scale, colors, f"{cfg.ply.path}")
        s = cfg.shap_e
        verts, colors = sample_shap_e(s, self.prompt, cfg.seed, torch.device(device))
        n_verts = len(verts)
        if s.grow:
            verts, colors = grow_points(verts, colors, s.grow_samples, s.grow_radius, s.grow_color_noise, rng)
        log.info("Shap-E: %d mesh vertices, %d points after growing", n_verts, len(verts))
        return PointCloud(shap_e_to_world(verts) * s.scale, colors, f"Shap-E '{self.prompt}'")
