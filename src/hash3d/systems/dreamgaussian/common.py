"""What both DreamGaussian stages share: cameras in DreamGaussian's frame, input and output checks, the guidance,
the orbit video and the run report.

Frames. Cameras are built with `hash3d.data.cameras` (threestudio: z up, positive elevation = above) and then
turned into DreamGaussian's scene frame (y up, the input view looking at the object from +z, x to the right) by one
fixed rotation, `SCENE_FROM_WORLD`: (x, y, z) -> (x, z, −y), with the input view at threestudio azimuth −90°. So
the Gaussians, the .ply and the meshes are in the same frame as DreamGaussian's outputs, and a DreamGaussian
(elevation e, azimuth a) camera is threestudio (−e, a − 90°). The guidance is keyed in threestudio's terms
(elevation −e, azimuth a − 90°), which gives Zero123 exactly DreamGaussian's relative camera.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hash3d.data.base import DataError
from hash3d.data.cameras import intrinsics, orbit_c2w, world_to_camera_opencv
from hash3d.data.image import read_rgba, resize
from hash3d.data.process_image import NO_ALPHA_FIX, has_rembg, remove_background

from .config import DreamGaussianConfig, DreamGaussianError

logger = logging.getLogger("hash3d.dreamgaussian")

REF_AZIMUTH = -90.0
"""threestudio azimuth of DreamGaussian's azimuth 0 (the input view)."""

SCENE_FROM_WORLD = torch.tensor(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
"""threestudio world (z up) -> DreamGaussian scene (y up): (x, y, z) -> (x, z, −y)."""


def dg_to_world_elevation(elevation: float | torch.Tensor) -> float | torch.Tensor:
    """DreamGaussian elevation (negative = above) -> threestudio elevation (positive = above)."""
    return -elevation


# ------------------------------------------------------------------------------------------------ cameras


@dataclass
class Views:
    """C cameras in the scene frame plus their guidance keys (threestudio degrees)."""

    viewmats: torch.Tensor  # [C, 4, 4] OpenCV world-to-camera
    Ks: torch.Tensor  # [C, 3, 3]
    size: int
    elevation: torch.Tensor  # [C] threestudio elevation (positive = above)
    azimuth: torch.Tensor  # [C] threestudio azimuth
    distance: torch.Tensor  # [C]

    @property
    def c2w(self) -> torch.Tensor:
        return torch.linalg.inv(self.viewmats)

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    def select(self, i: int) -> "Views":
        """Camera i alone."""
        s = slice(i, i + 1)
        return Views(self.viewmats[s], self.Ks[s], self.size, self.elevation[s], self.azimuth[s], self.distance[s])


def make_views(
    elevation_dg: torch.Tensor | list[float],  # [C] DreamGaussian elevations (negative = above)
    azimuth_dg: torch.Tensor | list[float],  # [C] DreamGaussian azimuths (0 = the input view)
    radius: float,
    fovy: float,
    size: int,
    device: torch.device | str = "cpu",
) -> Views:
    """Orbit cameras looking at the origin, square images of `size` pixels."""
    e = torch.as_tensor(elevation_dg, dtype=torch.float32).reshape(-1)
    a = torch.as_tensor(azimuth_dg, dtype=torch.float32).reshape(-1)
    elevation = dg_to_world_elevation(e)
    azimuth = a + REF_AZIMUTH
    distance = torch.full_like(e, float(radius))
    c2w = SCENE_FROM_WORLD @ orbit_c2w(elevation, azimuth, distance)
    viewmats = world_to_camera_opencv(c2w)
    Ks = intrinsics(torch.full_like(e, float(fovy)), size, size)
    return Views(viewmats.to(device), Ks.to(device), size, elevation.to(device), azimuth.to(device), distance.to(device))


def vertical_range(cfg: DreamGaussianConfig) -> tuple[int, int]:
    """DreamGaussian's random-view elevation offsets [low, high): [min_ver, max_ver) widened so that it also covers
    the offsets that reach min_ver / max_ver absolute, then clamped so that elevation + offset stays in ±80°."""
    e = cfg.elevation
    low = max(min(cfg.min_ver, cfg.min_ver - e), -80 - e)
    high = min(max(cfg.max_ver, cfg.max_ver - e), 80 - e)
    return math.ceil(low), max(math.floor(high), math.ceil(low))


def sample_offsets(rng: np.random.Generator, cfg: DreamGaussianConfig, n: int) -> tuple[list[int], list[int]]:
    """n random views: integer elevation offsets in [low, high) and azimuths in [−180, 180) (DreamGaussian)."""
    low, high = vertical_range(cfg)
    vers = [int(rng.integers(low, high)) if high > low else low for _ in range(n)]
    hors = [int(rng.integers(-180, 180)) for _ in range(n)]
    return vers, hors


def pick_device(cfg: DreamGaussianConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(cfg.device)
    except RuntimeError as exc:
        raise DreamGaussianError(f"device={cfg.device!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DreamGaussianError(f"device={cfg.device} asked for, but CUDA is not available here: use device=auto or cpu")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ input / output


def load_input(cfg: DreamGaussianConfig) -> torch.Tensor:
    """The input image at ref_size -> RGBA [4, S, S] in [0, 1] (colour not premultiplied).

    An image without an alpha channel goes through rembg when it is installed (DreamGaussian's main.py does the
    same); otherwise DreamGaussianError names the fixes.
    """
    if not cfg.input:
        raise DreamGaussianError(
            "input is required: add input=PATH/NAME_rgba.png (make one from a photo with `python process.py PHOTO`)"
        )
    path = Path(cfg.input)
    try:
        image = read_rgba(path)
    except DataError as exc:
        raise DreamGaussianError(f"input: {exc}") from exc
    rgba = image.rgba
    if not image.has_mask:
        if not has_rembg():
            raise DreamGaussianError(
                f"input {path} has no alpha channel (no object mask) and rembg is not installed: run "
                f"`python process.py {path}` after `pip install rembg` (rembg downloads its model on first use), "
                "or give an RGBA image"
            )
        logger.warning("input %s has no alpha channel: removing its background with rembg", path)
        try:
            rgba = remove_background(rgba, source=str(path))
        except DataError as exc:
            raise DreamGaussianError(f"input: {exc}; {NO_ALPHA_FIX}") from exc
    image = torch.from_numpy(rgba.astype(np.float32) / 255.0)
    image = resize(image, cfg.ref_size, cfg.ref_size)  # premultiplied area resize: no halo at the edge
    return image.permute(2, 0, 1).contiguous()


def on_white(rgba: torch.Tensor) -> torch.Tensor:
    """[4, H, W] -> [3, H, W] composited on white (DreamGaussian's reference image)."""
    return rgba[:3] * rgba[3:] + (1 - rgba[3:])


def check_output_folder(cfg: DreamGaussianConfig) -> Path:
    """Create {outdir} (and save_path's folders) and check that a file can be written there; returns the folder.
    Runs before any work so that a bad save_path fails at once, with nothing written or overwritten."""
    target = cfg.output_path("")
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hash3d-write-check-"):
            pass
    except OSError as exc:
        raise DreamGaussianError(
            f"cannot write the outputs to {folder} ({exc.strerror or exc}): choose a writable folder with "
            "outdir=DIR, or a plain save_path=NAME"
        ) from exc
    return folder


def existing_file(path: str | Path, what: str, fix: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DreamGaussianError(f"{what} not found: {path} ({fix})")
    return path


# ------------------------------------------------------------------------------------------------ guidance


def build_guidance(cfg: DreamGaussianConfig, device: torch.device, reference_rgba: torch.Tensor | None):
    """The guidance of the config's mode with the config's cache: Zero123 conditioned on the input view (image),
    Stable Diffusion (text), MVDream (text_mv) or ImageDream (imagedream), conditioned on the prompt."""
    from hash3d.diffusion.guidance import Zero123Guidance, Zero123GuidanceConfig  # noqa: PLC0415

    dtype = cfg.guidance.dtype
    if device.type == "cpu" and dtype != "fp32":
        logger.info("guidance dtype %s -> fp32 on the CPU", dtype)
        dtype = "fp32"
    common = dict(
        pretrained_model_name_or_path=cfg.model_name,
        dtype=dtype,
        local_files_only=cfg.guidance.local_files_only,
        guidance_scale=cfg.guidance_scale,
        min_step_percent=cfg.guidance.min_step_percent,
        max_step_percent=cfg.guidance.max_step_percent,
        timestep_sampling="annealed" if cfg.anneal_timestep else "random",
        seed=cfg.seed,
        cuda_graphs=cfg.guidance.cuda_graphs,
        vae_encoder=cfg.guidance.vae_encoder,
        cache=cfg.cache,
    )
    if cfg.mode != "image":
        return _text_guidance(cfg, device, reference_rgba, common)
    elevation = float(dg_to_world_elevation(cfg.elevation))
    gcfg = Zero123GuidanceConfig(
        **common,
        weighting="sds",
        loss_reduction="sum",
        camera_embedding="stable" if cfg.stable_zero123 else "xl",
        cond_elevation_deg=elevation,
        cond_azimuth_deg=REF_AZIMUTH,
        cond_camera_distance=cfg.radius,
    )
    guidance = Zero123Guidance(gcfg, device)
    guidance.set_image(reference_rgba.to(device), elevation, REF_AZIMUTH, cfg.radius)
    return guidance


def _text_guidance(cfg: DreamGaussianConfig, device: torch.device, reference_rgba: torch.Tensor | None, common: dict):
    """DreamGaussian's sd_utils / mvdream_utils / imagedream_utils: SD with w(t) = 1 − ᾱ_t and no view-dependent
    prompts; MVDream and ImageDream with no w(t), one t per set of four views; loss 0.5·‖grad‖² / views."""
    from hash3d.diffusion.guidance import (  # noqa: PLC0415
        MultiViewGuidance,
        MultiViewGuidanceConfig,
        StableDiffusionGuidance,
        StableDiffusionGuidanceConfig,
    )

    if cfg.mode == "text":
        gcfg = StableDiffusionGuidanceConfig(
            **common, weighting="sds", loss_reduction="batch_mean", view_dependent_prompting=False
        )
        guidance = StableDiffusionGuidance(gcfg, device)
    else:
        family = "mvdream" if cfg.mode == "text_mv" else "imagedream"
        guidance = MultiViewGuidance(MultiViewGuidanceConfig(**common, family=family, num_views=MULTIVIEW_VIEWS), device)
    guidance.set_prompt(cfg.prompt, cfg.negative_prompt or "")
    if cfg.mode == "imagedream":
        guidance.set_image(reference_rgba.to(device))
    return guidance


# ------------------------------------------------------------------------------------------------ views per step

MULTIVIEW_VIEWS = 4
"""Views per set of the multi-view modes: the random view and three more at +90°, +180°, +270° azimuth."""


def reference_azimuth(cfg: DreamGaussianConfig) -> float:
    """DreamGaussian azimuth of the input view: 0, or 90 in the multi-view modes (their second view is the front)."""
    return 90.0 if cfg.mode in ("text_mv", "imagedream") else 0.0


def uses_reference_loss(cfg: DreamGaussianConfig, reference: torch.Tensor | None) -> bool:
    """The input view's RGB / mask losses: whenever there is an input image, except in imagedream mode."""
    return reference is not None and cfg.mode != "imagedream"


def step_views(
    rng: np.random.Generator, cfg: DreamGaussianConfig, size: int, device: torch.device
) -> tuple[Views, Views | None, torch.Tensor, torch.Tensor]:
    """One step's random cameras -> (primary views [B], the multi-view modes' extra views [3B] or None,
    backgrounds of the primary [B, 3] and of the extra views [3B, 3]). Each primary view draws an elevation offset,
    an azimuth and a background as in DreamGaussian; its extra views keep them, at +90°, +180°, +270° azimuth."""
    vers, hors = sample_offsets(rng, cfg, cfg.batch_size)
    primary = make_views([cfg.elevation + v for v in vers], hors, cfg.radius, cfg.fovy, size, device)
    black = [rng.random() <= cfg.invert_bg_prob for _ in vers]
    backgrounds = torch.tensor([[0.0] * 3 if b else [1.0] * 3 for b in black], device=device)
    if cfg.mode not in ("text_mv", "imagedream"):
        return primary, None, backgrounds, backgrounds[:0]
    steps = [90 * k for k in range(1, MULTIVIEW_VIEWS)]
    extra = make_views(
        [cfg.elevation + v for v in vers for _ in steps], [h + k for h in hors for k in steps], cfg.radius, cfg.fovy,
        size, device,
    )  # fmt: skip
    return primary, extra, backgrounds, backgrounds.repeat_interleave(len(steps), dim=0)


def as_sets(primary: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    """Primary rows [B, ...] and their extra views [3B, ...] -> sets [4B, ...] (each primary followed by its three)."""
    if extra is None:
        return primary
    b = primary.shape[0]
    return torch.cat([primary[:, None], extra.view(b, -1, *extra.shape[1:])], dim=1).reshape(-1, *primary.shape[1:])


def guidance_cameras(primary: Views, extra: Views | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(elevation, azimuth, distance) of the guidance's rows, set by set."""
    pick = lambda name: as_sets(getattr(primary, name), None if extra is None else getattr(extra, name))  # noqa: E731
    return pick("elevation"), pick("azimuth"), pick("distance")


def cache_summary(guidance) -> dict[str, Any]:
    """Cache statistics for the report (zeros when the cache is off)."""
    stats = guidance.cache_stats() if guidance is not None else {}
    enabled = bool(stats)
    saved = int(stats.get("unet_calls_saved", 0))
    run = int(stats.get("full_samples", 0))
    return {
        "enabled": enabled,
        "hit_rate": float(stats.get("hit_rate", 0.0)),
        "queries": int(stats.get("queries", 0)),
        "hits": int(stats.get("hits", 0)),
        "unet_calls_saved": saved,
        "unet_calls_run": run,
        "saved_fraction": saved / (saved + run) if saved + run else 0.0,
        "entries": int(stats.get("entries", 0)),
        "graphs_captured": int(stats.get("graphs_captured", 0)),
        # requests that tried the cache and, under the cost-aware policy, those that skipped it (the plain UNet call)
        # and its quiet probes (the plain UNet's answer, the table queried and filled)
        "tried": int(stats.get("tried", 0)),
        "skipped": int(stats.get("skipped", 0)),
        "probed": int(stats.get("probed", 0)),
        "answered_requests": int(stats.get("answered_requests", 0)),
        "split_requests": int(stats.get("split_requests", 0)),
        # multi-view guidance: a lookup is a set of views
        **({"views_per_set": int(stats["views_per_set"]), "sets_cached": int(stats["cached_sets"]),
            "sets_run": int(stats["full_sets"])} if "views_per_set" in stats else {}),
    }


# ------------------------------------------------------------------------------------------------ outputs


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H, W, 3] in [0, 1] -> uint8."""
    return (image.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


class Report:
    """The run's numbers: printed as one line at the end and written as JSON next to the outputs."""

    def __init__(self, stage: str, cfg: DreamGaussianConfig, device: torch.device):
        self.start = time.perf_counter()
        self.data: dict[str, Any] = {
            "stage": stage,
            "save_path": cfg.save_path,
            "input": cfg.input,
            "model": cfg.model_name,
            "device": str(device),
            "seed": cfg.seed,
            "cache_config": None
            if not cfg.cache.enabled
            else {
                "mode": cfg.cache.mode,
                "cell_size": list(cfg.cache.cell_size),
                "adaptive": cfg.cache.adaptive,
                "probability": cfg.cache.policy.probability,
            },
        }

    def set(self, **values: Any) -> None:
        self.data.update(values)

    def finish(self, path: Path, outputs: list[Path]) -> str:
        self.data["time_s"] = round(time.perf_counter() - self.start, 3)
        self.data["outputs"] = [str(p) for p in outputs] + [str(path)]
        path.write_text(json.dumps(self.data, indent=2) + "\n")
        return self.line()

    def line(self) -> str:
        d = self.data
        cache = d.get("cache", {})
        if cache.get("enabled"):
            calls = cache["unet_calls_saved"] + cache["unet_calls_run"]
            cache_text = (
                f"cache hit rate {100 * cache['hit_rate']:.1f}% ({cache['hits']}/{cache['queries']} lookups), "
                f"{cache['unet_calls_saved']} of {calls} UNet calls saved"
            )
        else:
            cache_text = "cache off"
        outputs = ", ".join(os.fspath(p) for p in d.get("outputs", [])[:-1])
        return (
            f"{d['stage']}: {d.get('steps', 0)} steps in {d.get('train_time_s', 0):.1f} s "
            f"({d.get('time_s', 0):.1f} s in all) on {d['device']}; {cache_text}; wrote {outputs}"
        )
