"""DreamGaussian's options as one typed config (`configs/*.yaml` plus `key=value` overrides).

Every DreamGaussian option keeps its name, meaning and default (DreamGaussian's `configs/image.yaml`). Options Hash3D adds sit below them: the `guidance` block (which
weights, precision, CFG scale, timestep range), the `cache` block (the only block in which a `_hash3d`
config differs from its twin), renderer backends, resolutions DreamGaussian hard-codes, and the orbit video.
The options pick one of DreamGaussian's modes (`MODES`): image (Zero123), text (Stable Diffusion), text_mv (MVDream)
or imagedream (ImageDream); combining guidances in one run is not provided.

Camera convention of the options: DreamGaussian's. `elevation` is the input photo's elevation in degrees with
**negative = camera above the object** (use elevation=-30 for a photo taken from above), `min_ver`/`max_ver` are
offsets from it in the same sense. Internally the cameras are threestudio-style (positive elevation = above), so
the values are negated once, in `common.py` (`dg_to_world_elevation`, `make_views`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hash3d.cache.config import CacheConfig
from hash3d.config.errors import ConfigError, UserInputError
from hash3d.config.foreign import read_dreamgaussian
from hash3d.config.loader import load_config_report

__all__ = [
    "DreamGaussianConfig",
    "MODES",
    "GuidanceOptions",
    "DreamGaussianError",
    "STABLE_ZERO123",
    "ZERO123_XL",
    "load_options",
]

STABLE_ZERO123 = "ashawkey/stable-zero123-diffusers"
ZERO123_XL = "ashawkey/zero123-xl-diffusers"
SD21_BASE = "stabilityai/stable-diffusion-2-1-base"
MVDREAM = "ashawkey/mvdream-sd2.1-diffusers"
IMAGEDREAM = "ashawkey/imagedream-ipmv-diffusers"

MODES = ("image", "text", "text_mv", "imagedream")
"""DreamGaussian's modes, picked by its options: imagedream=true -> imagedream (ImageDream, image + prompt);
mvdream=true -> text_mv (MVDream); lambda_sd > 0 -> text (Stable Diffusion); else image (Zero123)."""
DEFAULT_MODELS = {"text": SD21_BASE, "text_mv": MVDREAM, "imagedream": IMAGEDREAM}
DEFAULT_GUIDANCE_SCALES = {"image": 5.0, "text": 100.0, "text_mv": 100.0, "imagedream": 5.0}


class DreamGaussianError(UserInputError, ValueError):
    """Bad input to main.py / main2.py (missing files, unwritable output folder, unsupported options)."""


@dataclass
class GuidanceOptions:
    """The guidance model (Hash3D addition; DreamGaussian hard-codes these)."""

    pretrained_model_name_or_path: str | None = None
    """Hub id or local folder (diffusers layout). None: by mode, ashawkey/stable-zero123-diffusers when
    stable_zero123 is true, else ashawkey/zero123-xl-diffusers (image); stabilityai/stable-diffusion-2-1-base
    (text); ashawkey/mvdream-sd2.1-diffusers (text_mv); ashawkey/imagedream-ipmv-diffusers (imagedream)."""
    dtype: Literal["fp16", "fp32", "bf16"] = "fp16"
    """UNet / VAE precision (DreamGaussian: fp16). On the CPU the guidance always runs in fp32."""
    guidance_scale: float | None = None
    """Classifier-free guidance scale. None: DreamGaussian's per mode (Zero123 5, SD 100, MVDream 100,
    ImageDream 5)."""
    min_step_percent: float = 0.02
    max_step_percent: float = 0.98
    """Timestep range [min, max]·1000 (DreamGaussian: [20, 980]); the annealed t is clipped to it."""
    local_files_only: bool = False
    """Never try the hub (use what is in the local cache or folder)."""
    cuda_graphs: bool = True
    """Replay the UNet as CUDA graphs on a GPU (ignored on the CPU)."""
    vae_encoder: Literal["eager", "compiled"] = "eager"
    """How the VAE encoder's forward and backward run: eager or compiled (the guidance's option of that name)."""


@dataclass
class DreamGaussianConfig:
    """DreamGaussian's options (names and defaults of its configs/image.yaml), then Hash3D's additions."""

    # ---- input
    input: str | None = None
    """The input image (RGBA; make one with `python process.py IMAGE`)."""
    prompt: str | None = None
    negative_prompt: str | None = None
    """Text prompt (and negative prompt) of the text, text_mv and imagedream modes."""
    elevation: float = 0.0
    """Elevation of the input view in degrees, DreamGaussian's sign: negative = camera above the object."""
    ref_size: int = 256
    """Resolution of the reference image and of the reference-view render."""
    density_thresh: float = 1.0
    """Iso level of the Gaussians' opacity field for the stage-1 mesh."""

    # ---- output
    outdir: str = "logs"
    mesh_format: Literal["obj", "glb"] = "obj"
    save_path: str | None = None
    """Name of the outputs: {outdir}/{save_path}_model.ply, _mesh.obj, .obj, ... (required)."""

    # ---- training
    mvdream: bool = False
    """Text-to-3D with MVDream (mode text_mv): four views at 90° steps per random view."""
    imagedream: bool = False
    """Image + text to 3D with ImageDream (mode imagedream): needs input= (RGBA) and prompt=."""
    stable_zero123: bool = False
    """Stable-Zero123 (true) or Zero123-XL (false): picks the default weights and the camera embedding."""
    lambda_sd: float = 0.0
    """Weight of the text guidance: Stable Diffusion (text), MVDream (text_mv) or ImageDream (imagedream)."""
    lambda_zero123: float = 1.0
    warmup_rgb_loss: bool = True
    """Stage 1: scale the reference-view losses by step / iters."""
    batch_size: int = 1
    """Random views per step."""
    iters: int = 500
    """Stage-1 steps."""
    anneal_timestep: bool = True
    """t = (1 − step / iters)·1000 clipped to the guidance range (else uniform random in it)."""
    iters_refine: int = 50
    """Stage-2 steps."""
    radius: float = 2.0
    """Camera distance of every view."""
    fovy: float = 49.1
    """Vertical field of view in degrees."""
    min_ver: float = -30.0
    max_ver: float = 30.0
    """Random views' elevation offset from `elevation` (DreamGaussian's sign), drawn as an integer in
    [min_ver, max_ver), widened to cover it and clamped so that the view stays within ±80°."""
    load: str | None = None
    """Stage 1: start from this 3DGS .ply instead of a random ball."""
    mesh: str | None = None
    """Stage 2: refine this mesh instead of {outdir}/{save_path}_mesh.{mesh_format}."""
    train_geo: bool = False
    """Stage 2: also optimise per-vertex offsets (at geom_lr)."""
    invert_bg_prob: float = 0.5
    """Chance that a random view is rendered on black instead of white."""

    # ---- GUI (DreamGaussian's viewer; not provided: the runs are headless)
    gui: bool = False
    force_cuda_rast: bool = False
    """DreamGaussian: nvdiffrast's CUDA context instead of OpenGL. The CUDA context is always used here."""
    H: int = 800
    W: int = 800

    # ---- 3D Gaussians (stage 1)
    num_pts: int = 5000
    sh_degree: int = 0
    position_lr_init: float = 0.001
    position_lr_final: float = 0.00002
    position_lr_delay_mult: float = 0.02
    position_lr_max_steps: int = 500
    feature_lr: float = 0.01
    opacity_lr: float = 0.05
    scaling_lr: float = 0.005
    rotation_lr: float = 0.005
    percent_dense: float = 0.01
    density_start_iter: int = 100
    density_end_iter: int = 3000
    densification_interval: int = 100
    opacity_reset_interval: int = 700
    densify_grad_threshold: float = 0.01
    grad_clip: float = 0.0
    """Stage 1: before each step, clip the gradient norm of each Gaussian parameter tensor (positions, scales,
    rotations, colours, opacities) to this value; 0 = off (the original Hash3D fork's option)."""

    # ---- textured mesh (stage 2)
    geom_lr: float = 0.0001
    texture_lr: float = 0.2

    # ---- Hash3D additions
    seed: int = 0
    """Seed of the initial Gaussians, the random views and the guidance noise (DreamGaussian: random per run)."""
    device: str = "auto"
    """"auto": CUDA when available, else the CPU; or any torch device string."""
    gaussian_backend: Literal["auto", "torch", "gsplat"] = "auto"
    """Gaussian rasteriser: gsplat on CUDA (compiles on first use), the pure-torch one on the CPU."""
    mesh_backend: Literal["auto", "torch", "nvdiffrast"] = "auto"
    """Mesh rasteriser: nvdiffrast (diffrp-nvdiffrast) on CUDA, the pure-torch one on the CPU."""
    render_resolutions: list[int] = field(default_factory=lambda: [128, 256, 512])
    render_resolution_ratios: list[float] = field(default_factory=lambda: [0.3, 0.6])
    """Stage 1 renders random views at render_resolutions[i] while step / iters < render_resolution_ratios[i]
    (DreamGaussian: 128 below 0.3, 256 below 0.6, then 512)."""
    refine_resolution: int = 512
    """Stage-2 random-view resolution (before the random supersampling factor)."""
    refine_ref_weight: float = 1.0
    """Stage 2: weight of the reference-view MSE (DreamGaussian: 1)."""
    mesh_resolution: int = 128
    """Grid points per axis of the stage-1 opacity field."""
    texture_size: int = 1024
    """Side of the stage-1 albedo texture (stage 2 keeps the size of the texture it loads)."""
    save_video: bool = False
    """Write an orbit video: {save_path}.mp4 after stage 1 (Gaussians), {save_path}_refined.mp4 after stage 2."""
    video_size: int = 512
    video_frames: int = 120
    log_every: int = 10
    """Refresh the progress bar's loss and cache hit rate every N steps (each refresh reads GPU values)."""
    guidance: GuidanceOptions = field(default_factory=GuidanceOptions)
    cache: CacheConfig = field(default_factory=CacheConfig)
    """The Hash3D cache (`hash3d.cache.config.CacheConfig`); off unless a `_hash3d` config turns it on."""

    def __post_init__(self) -> None:
        positive = {
            "ref_size": self.ref_size, "iters": self.iters, "batch_size": self.batch_size, "num_pts": self.num_pts,
            "refine_resolution": self.refine_resolution, "mesh_resolution": self.mesh_resolution,
            "texture_size": self.texture_size, "video_size": self.video_size, "video_frames": self.video_frames,
            "log_every": self.log_every, "densification_interval": self.densification_interval,
            "opacity_reset_interval": self.opacity_reset_interval,
        }  # fmt: skip
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"'{name}' must be at least 1; got {value}")
        if self.iters_refine < 0:
            raise ConfigError(f"'iters_refine' must be >= 0; got {self.iters_refine}")
        if self.radius <= 0 or not 0 < self.fovy < 180:
            raise ConfigError(f"need radius > 0 and 0 < fovy < 180; got radius={self.radius}, fovy={self.fovy}")
        if not 0 <= self.invert_bg_prob <= 1:
            raise ConfigError(f"'invert_bg_prob' must be in [0, 1]; got {self.invert_bg_prob}")
        if not -90 < self.elevation < 90:
            raise ConfigError(f"'elevation' must be in (-90, 90) degrees; got {self.elevation}")
        if self.min_ver > self.max_ver:
            raise ConfigError(f"'min_ver' ({self.min_ver}) must not exceed 'max_ver' ({self.max_ver})")
        if not 0 <= self.sh_degree <= 3:
            raise ConfigError(f"'sh_degree' must be 0..3; got {self.sh_degree}")
        if self.grad_clip < 0:
            raise ConfigError(f"'grad_clip' must be >= 0 (0 = off); got {self.grad_clip}")
        if len(self.render_resolutions) != len(self.render_resolution_ratios) + 1:
            raise ConfigError(
                f"'render_resolutions' needs one entry more than 'render_resolution_ratios'; got "
                f"{self.render_resolutions} and {self.render_resolution_ratios}"
            )
        if any(r < 1 for r in self.render_resolutions):
            raise ConfigError(f"'render_resolutions' must be positive; got {self.render_resolutions}")
        if list(self.render_resolution_ratios) != sorted(self.render_resolution_ratios):
            raise ConfigError(f"'render_resolution_ratios' must increase; got {self.render_resolution_ratios}")

    # ---------------------------------------------------------------- derived values
    @property
    def mode(self) -> str:
        """One of MODES, from mvdream / imagedream / lambda_sd (see MODES)."""
        if self.imagedream:
            return "imagedream"
        if self.mvdream:
            return "text_mv"
        return "text" if self.lambda_sd > 0 else "image"

    @property
    def model_name(self) -> str:
        """The guidance weights to load."""
        if self.guidance.pretrained_model_name_or_path:
            return self.guidance.pretrained_model_name_or_path
        if self.mode == "image":
            return STABLE_ZERO123 if self.stable_zero123 else ZERO123_XL
        return DEFAULT_MODELS[self.mode]

    @property
    def guidance_scale(self) -> float:
        scale = self.guidance.guidance_scale
        return DEFAULT_GUIDANCE_SCALES[self.mode] if scale is None else scale

    def check_supported(self) -> str:
        """Combinations this front-end does not provide, and inputs a mode lacks -> DreamGaussianError naming the
        fix (before any work). Returns the mode."""
        mode = self.mode
        if self.mvdream and self.imagedream:
            raise DreamGaussianError("mvdream and imagedream are both true: pick one (text_mv.yaml or imagedream.yaml)")
        if mode == "image":
            if self.lambda_zero123 <= 0:
                raise DreamGaussianError(
                    "no guidance: lambda_zero123 must be > 0 for image-to-3D (configs/image*.yaml), or set "
                    "lambda_sd > 0 for text-to-3D (configs/text*.yaml)"
                )
            return mode
        if self.lambda_zero123 > 0:
            name = {"text": "Stable Diffusion (lambda_sd > 0)", "text_mv": "mvdream", "imagedream": "imagedream"}[mode]
            raise DreamGaussianError(
                f"combining {name} with the Zero123 guidance is not provided: set lambda_zero123=0 "
                "(configs/text*.yaml, imagedream.yaml), or use configs/image*.yaml without it"
            )
        if self.lambda_sd <= 0:
            raise DreamGaussianError(f"mode {mode} needs lambda_sd > 0 (the weight of its guidance)")
        if not (self.prompt or "").strip():
            raise DreamGaussianError(f'mode {mode} needs a text prompt: add prompt="a photo of an icecream"')
        if mode != "text" and self.cache.enabled and self.cache.mode != "noise":
            raise DreamGaussianError(
                f"mode {mode}: the multi-view guidance caches whole noise predictions of a set of views: set "
                f"cache.mode to noise (got {self.cache.mode!r})"
            )
        if mode == "imagedream" and not self.input:
            raise DreamGaussianError(
                "imagedream needs an input image as well as the prompt: add input=data/NAME_rgba.png (an RGBA image; "
                "make one with `python process.py PHOTO`)"
            )
        return mode

    def output_path(self, suffix: str) -> Path:
        """{outdir}/{save_path}{suffix}."""
        if not self.save_path:
            raise DreamGaussianError("save_path is required: add save_path=NAME (outputs go to {outdir}/NAME_*)")
        return Path(self.outdir) / f"{self.save_path}{suffix}"


def load_options(config: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> DreamGaussianConfig:
    """A YAML config (may `extends:` another) plus `key=value` overrides -> a validated `DreamGaussianConfig`.

    An unknown key raises `ConfigError` naming the closest valid key.
    """
    if config is not None and not Path(config).is_file():
        raise ConfigError(f"config file not found: {config} (the configs are in dreamgaussian-hash3d/configs/)")
    cfg, _, report = load_config_report(config, list(overrides), DreamGaussianConfig, read_dreamgaussian)
    if report.no_effect_line():
        logging.getLogger("hash3d").info("%s", report.no_effect_line())
    return cfg
