"""Load the parts of a diffusion model from a hub id or a local folder in the diffusers layout.

Every part goes through the libraries' own ``from_pretrained``, exactly as with real weights, so the random-weight
folders written by `hash3d.testing.write_model` exercise the same path as ``stabilityai/stable-diffusion-2-1-base``
or ``ashawkey/stable-zero123-diffusers``. The usual failure cases (a folder missing a part, a path that does not
exist, a hub id that is not in the local cache while offline) raise one short `FileNotFoundError` / `ValueError`
that says what to do, instead of a traceback from deep inside transformers or diffusers.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel, CLIPVisionModelWithProjection

from hash3d.config.errors import ConfigError, MissingFileError, UserInputError
from hash3d.hub import is_hub_id
from hash3d.diffusion.camera_projection import CameraProjection, ClipCameraProjectionLayout
from hash3d.diffusion.resident import load_kept
from hash3d.diffusion.multiview_unet import MultiViewUNetModel

# transformers >= 5 picks a torchvision-backed CLIPImageProcessor when torchvision is installed; the PIL one is
# the same preprocessing without that dependency. Older transformers only have CLIPImageProcessor.
CLIPImageProcessor = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor

__all__ = [
    "ModelLoadError",
    "StableDiffusionParts",
    "Zero123Parts",
    "MultiViewParts",
    "load_stable_diffusion",
    "load_zero123",
    "load_multiview",
    "SD_SUBFOLDERS",
    "ZERO123_SUBFOLDERS",
    "CAMERA_PROJECTION_SUBFOLDERS",
]



class ModelLoadError(UserInputError, OSError):
    """A model folder or hub model whose files are there but cannot be loaded (broken or foreign weights)."""


SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
ZERO123_SUBFOLDERS = ("unet", "vae", "image_encoder", "feature_extractor", "scheduler")
MULTIVIEW_SUBFOLDERS = SD_SUBFOLDERS
IMAGEDREAM_SUBFOLDERS = SD_SUBFOLDERS + ("image_encoder", "feature_extractor")
# Zero123's camera projection lives in one of these, depending on who converted the weights (see camera_projection).
CAMERA_PROJECTION_SUBFOLDERS = ("cc_projection", "clip_camera_projection")

SD_LAYOUT = (
    "the diffusers Stable Diffusion layout (like stabilityai/stable-diffusion-2-1-base): model_index.json and "
    "the subfolders unet/, vae/, text_encoder/, tokenizer/, scheduler/"
)
ZERO123_LAYOUT = (
    "the diffusers Zero123 layout (like ashawkey/stable-zero123-diffusers, bennyguo/zero123-xl-diffusers or "
    "kxic/zero123-xl): model_index.json and the subfolders unet/, vae/, image_encoder/, feature_extractor/, "
    "scheduler/ and cc_projection/ (or clip_camera_projection/)"
)
MVDREAM_LAYOUT = (
    "the converted MVDream layout (like ashawkey/mvdream-sd2.1-diffusers): model_index.json and the subfolders "
    "unet/ (MultiViewUNetModel), vae/, text_encoder/, tokenizer/, scheduler/"
)
IMAGEDREAM_LAYOUT = (
    "the converted ImageDream layout (like ashawkey/imagedream-ipmv-diffusers): model_index.json and the subfolders "
    "unet/ (MultiViewUNetModel with ip_dim), vae/, text_encoder/, tokenizer/, scheduler/, image_encoder/, "
    "feature_extractor/"
)
_LAYOUTS = {"sd": SD_LAYOUT, "zero123": ZERO123_LAYOUT, "mvdream": MVDREAM_LAYOUT, "imagedream": IMAGEDREAM_LAYOUT}
_REQUIRED = {
    "sd": SD_SUBFOLDERS, "zero123": ZERO123_SUBFOLDERS, "mvdream": MULTIVIEW_SUBFOLDERS, "imagedream": IMAGEDREAM_SUBFOLDERS,
}  # fmt: skip
_TEST_MODEL_HINT = (
    "(For offline tests, `python -m hash3d.testing write-model {family} tiny DIR` writes a random-weight model "
    "in this layout.)"
)


@dataclass
class StableDiffusionParts:
    """Parts of a Stable Diffusion 1.x/2.x model (``stabilityai/stable-diffusion-2-1-base`` layout)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler


@dataclass
class Zero123Parts:
    """Parts of a Zero123 model (``ashawkey/stable-zero123-diffusers`` / ``bennyguo/zero123-xl-diffusers`` /
    ``kxic/zero123-xl`` layouts)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor
    cc_projection: CameraProjection
    scheduler: DDPMScheduler


# --------------------------------------------------------------------------------------------------------------
# Public loaders


def load_stable_diffusion(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    local_files_only: bool = False,
    *,
    variant: str | None = None,
) -> StableDiffusionParts:
    """Load UNet, VAE, CLIP text encoder, tokenizer and a `DDPMScheduler` from a hub id or local folder.

    Models are in eval mode with ``requires_grad_(False)``, on ``device`` in ``dtype``. ``variant`` picks weight
    files such as ``diffusion_pytorch_model.fp16.safetensors`` where a repository stores them that way.
    Inside `hash3d.diffusion.resident.keep_loaded` a model loaded before is copied from memory instead.
    """
    key = ("sd", _model_key(name_or_path), dtype, str(device), local_files_only, variant)
    return load_kept(key, lambda: _load_stable_diffusion(name_or_path, dtype, device, local_files_only, variant))


def _model_key(name_or_path: str | os.PathLike) -> str:
    """A local folder by its absolute path (a relative one means another folder after a chdir), a hub id as given."""
    name = os.fspath(name_or_path)
    return os.path.abspath(os.path.expanduser(name)) if os.path.exists(os.path.expanduser(name)) else name


def _load_stable_diffusion(name_or_path, dtype, device, local_files_only, variant) -> StableDiffusionParts:
    source = _resolve(name_or_path, family="sd", local_files_only=local_files_only)
    kw = dict(dtype=dtype, device=device, variant=variant)
    unet = _load_model(UNet2DConditionModel, source, "unet", **kw)
    vae = _load_model(AutoencoderKL, source, "vae", **kw)
    text_encoder = _load_model(CLIPTextModel, source, "text_encoder", **kw)
    tokenizer = _load_component(CLIPTokenizer.from_pretrained, source, "tokenizer")
    scheduler = _load_scheduler(source)
    return StableDiffusionParts(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


@dataclass
class MultiViewParts:
    """Parts of a multi-view model: MVDream (``ashawkey/mvdream-sd2.1-diffusers``) or, with the image encoder and
    its processor, ImageDream (``ashawkey/imagedream-ipmv-diffusers``)."""

    unet: MultiViewUNetModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler
    image_encoder: CLIPVisionModel | None = None
    feature_extractor: CLIPImageProcessor | None = None


def load_multiview(
    name_or_path: str | os.PathLike,
    family: str = "mvdream",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    local_files_only: bool = False,
    *,
    variant: str | None = None,
) -> MultiViewParts:
    """Load an MVDream (`family="mvdream"`) or ImageDream (`"imagedream"`) model from a hub id or local folder.

    The UNet is Hash3D's own `MultiViewUNetModel`, loaded from the folder's ``unet/`` (the converted checkpoints'
    config and parameter names; their remote ``mv_unet`` code is never imported). Models are in eval mode with
    ``requires_grad_(False)``, on ``device`` in ``dtype``.
    """
    if family not in ("mvdream", "imagedream"):
        raise ValueError(f"family must be 'mvdream' or 'imagedream'; got {family!r}")
    source = _resolve(name_or_path, family=family, local_files_only=local_files_only)
    kw = dict(dtype=dtype, device=device, variant=variant)
    unet = _load_model(MultiViewUNetModel, source, "unet", **kw)
    has_image = unet.config.ip_dim > 0
    if has_image != (family == "imagedream"):
        other = "imagedream" if has_image else "mvdream"
        raise ConfigError(
            f"the {source.describe()} holds {'an ImageDream' if has_image else 'an MVDream'} UNet "
            f"(ip_dim={unet.config.ip_dim}), but {family} was asked for: load it as {other} "
            f"({'mode imagedream' if has_image else 'mode text_mv'})"
        )
    parts = MultiViewParts(
        unet=unet,
        vae=_load_model(AutoencoderKL, source, "vae", **kw),
        text_encoder=_load_model(CLIPTextModel, source, "text_encoder", **kw),
        tokenizer=_load_component(CLIPTokenizer.from_pretrained, source, "tokenizer"),
        scheduler=_load_scheduler(source),
    )
    if has_image:
        parts.image_encoder = _load_model(CLIPVisionModel, source, "image_encoder", **kw)
        parts.feature_extractor = _load_component(CLIPImageProcessor.from_pretrained, source, "feature_extractor")
    return parts


def load_zero123(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    local_files_only: bool = False,
    *,
    variant: str | None = None,
) -> Zero123Parts:
    """Load UNet, VAE, CLIP image encoder, image processor, camera projection and a `DDPMScheduler` for Zero123.

    Accepts both camera-projection layouts (``cc_projection/`` and ``clip_camera_projection/``); either way the
    result is a `CameraProjection`. Models are in eval mode with ``requires_grad_(False)``, on ``device`` in
    ``dtype``. Inside `hash3d.diffusion.resident.keep_loaded` a model loaded before is copied from memory instead.
    """
    key = ("zero123", _model_key(name_or_path), dtype, str(device), local_files_only, variant)
    return load_kept(key, lambda: _load_zero123(name_or_path, dtype, device, local_files_only, variant))


def _load_zero123(name_or_path, dtype, device, local_files_only, variant) -> Zero123Parts:
    source = _resolve(name_or_path, family="zero123", local_files_only=local_files_only)
    kw = dict(dtype=dtype, device=device, variant=variant)
    unet = _load_model(UNet2DConditionModel, source, "unet", **kw)
    vae = _load_model(AutoencoderKL, source, "vae", **kw)
    image_encoder = _load_model(CLIPVisionModelWithProjection, source, "image_encoder", **kw)
    feature_extractor = _load_component(CLIPImageProcessor.from_pretrained, source, "feature_extractor")
    if "cc_projection" in source.components:
        cc_projection = _load_model(CameraProjection, source, "cc_projection", **kw)
    else:
        legacy = _load_model(ClipCameraProjectionLayout, source, "clip_camera_projection", **kw)
        cc_projection = _frozen(CameraProjection.from_clip_camera_projection(legacy), dtype=dtype, device=device)
    scheduler = _load_scheduler(source)
    return Zero123Parts(
        unet=unet,
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        cc_projection=cc_projection,
        scheduler=scheduler,
    )


# --------------------------------------------------------------------------------------------------------------
# Where the model is: a local folder or a hub id


@dataclass
class _Source:
    root: str  # local folder or hub id, passed to from_pretrained
    is_local: bool
    local_files_only: bool
    components: frozenset[str]  # subfolders present (local) or listed in model_index.json (hub)
    family: str

    def describe(self) -> str:
        return f"folder '{self.root}'" if self.is_local else f"hub model '{self.root}'"


def _env_offline() -> bool:
    """Offline flags as set now (huggingface_hub reads HF_HUB_OFFLINE only once, at import)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")
    return any(os.environ.get(n, "").strip().lower() in {"1", "true", "yes", "on"} for n in names)


def _layout(family: str) -> str:
    return _LAYOUTS[family]


def _required(family: str) -> tuple[str, ...]:
    return _REQUIRED[family]


def _missing_parts(family: str, components: frozenset[str]) -> list[str]:
    missing = [s for s in _required(family) if s not in components]
    if family == "zero123" and not any(s in components for s in CAMERA_PROJECTION_SUBFOLDERS):
        missing.append("cc_projection (or clip_camera_projection)")
    return missing


def _family_hint(family: str, components: frozenset[str]) -> str:
    if family == "sd" and not _missing_parts("zero123", components):
        return " This looks like a Zero123 model: load it with load_zero123()."
    if family == "zero123" and not _missing_parts("sd", components):
        return " This looks like a Stable Diffusion model: load it with load_stable_diffusion()."
    if family == "imagedream" and not _missing_parts("mvdream", components):
        return " This looks like an MVDream model (no image encoder): load it with load_multiview(..., 'mvdream')."
    return ""


def _resolve(name_or_path: str | os.PathLike, family: str, local_files_only: bool) -> _Source:
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return _resolve_local(path, family, local_files_only)
    if not isinstance(name_or_path, str) or not is_hub_id(name):
        raise MissingFileError(
            f"No folder at '{path}', and '{name}' is not a Hugging Face hub id (like 'owner/name'). "
            f"Pass a folder in {_layout(family)}, or a hub id. " + _TEST_MODEL_HINT.format(family=family)
        )
    return _resolve_hub(name, family, local_files_only or _env_offline())


def _resolve_local(path: Path, family: str, local_files_only: bool) -> _Source:
    if not path.is_dir():
        hint = ""
        if path.suffix in {".ckpt", ".safetensors", ".bin", ".pt", ".pth"}:
            hint = (
                " It looks like a single-file checkpoint; convert it to the diffusers layout first "
                "(e.g. with the conversion scripts in diffusers' scripts/ folder)."
            )
        raise ConfigError(f"'{path}' is a file, but a folder in {_layout(family)} is expected.{hint}")
    components = frozenset(p.name for p in path.iterdir() if p.is_dir())
    missing = _missing_parts(family, components)
    if missing:
        checkpoints = sorted(p.name for p in path.glob("*.ckpt"))
        extra = (
            f" It holds {', '.join(checkpoints)}: original checkpoints must be converted to the diffusers layout first."
            if checkpoints
            else ""
        )
        raise MissingFileError(
            f"The folder '{path}' is missing the subfolder{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)}; expected {_layout(family)}."
            f"{_family_hint(family, components)}{extra}"
        )
    return _Source(str(path), True, local_files_only, components, family)


def _offline_message(repo_id: str, family: str, offline: bool, detail: str = "") -> str:
    why = (
        "offline mode is on (HF_HUB_OFFLINE=1 or local_files_only=True)"
        if offline
        else "the Hugging Face hub could not be reached"
    )
    return (
        f"Cannot load the hub model '{repo_id}': it is not in the local Hugging Face cache{detail} and {why}. "
        f"Download it with `huggingface-cli download {repo_id}` on a machine with network (then copy the cache "
        f"folder, or set HF_HOME to it), or pass a local folder in {_layout(family)}. No local folder "
        f"'{repo_id}' exists either."
    )


def _resolve_hub(repo_id: str, family: str, offline: bool) -> _Source:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        index_file = hf_hub_download(repo_id, "model_index.json", local_files_only=offline)
    except LocalEntryNotFoundError:
        raise MissingFileError(_offline_message(repo_id, family, offline)) from None
    except GatedRepoError:
        raise MissingFileError(
            f"The hub model '{repo_id}' is gated: accept its license on huggingface.co and log in "
            f"(`huggingface-cli login`), or pass a local folder in {_layout(family)}."
        ) from None
    except RepositoryNotFoundError:
        raise MissingFileError(
            f"There is no model '{repo_id}' on the Hugging Face hub (or it is private: log in with "
            f"`huggingface-cli login`), and no local folder of that name. Pass a hub id or a folder in "
            f"{_layout(family)}."
        ) from None
    except EntryNotFoundError:
        raise MissingFileError(
            f"The hub model '{repo_id}' has no model_index.json at its top; expected {_layout(family)}."
        ) from None
    except (OSError, ConnectionError) as error:  # network trouble that huggingface_hub did not classify
        raise MissingFileError(
            _offline_message(repo_id, family, offline, f" ({type(error).__name__}: {error})")
        ) from None
    index = json.loads(Path(index_file).read_text())
    components = frozenset(
        k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and any(x is not None for x in v)
    )
    missing = _missing_parts(family, components)
    if missing:
        raise MissingFileError(
            f"The hub model '{repo_id}' has no {', '.join(repr(m) for m in missing)} in its model_index.json; "
            f"expected {_layout(family)}.{_family_hint(family, components)}"
        )
    return _Source(repo_id, False, offline, components, family)


# --------------------------------------------------------------------------------------------------------------
# Loading the parts

_TRANSFORMERS_DTYPE_KW = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def _frozen(model: torch.nn.Module, dtype: torch.dtype, device: str | torch.device) -> Any:
    # torch's own .to: diffusers' ModelMixin.to warns about fp32-kept modules on every dtype cast, even with none
    model = torch.nn.Module.to(model, device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def _load_component(load: Callable[..., Any], source: _Source, subfolder: str, **kwargs: Any) -> Any:
    try:
        return load(source.root, subfolder=subfolder, local_files_only=source.local_files_only, **kwargs)
    except (OSError, ValueError) as error:
        if not source.is_local and source.local_files_only:
            raise MissingFileError(
                _offline_message(source.root, source.family, True, f" (its '{subfolder}' files are missing)")
            ) from None
        raise ModelLoadError(f"Could not load '{subfolder}' from the {source.describe()}: {error}") from error


def _load_model(cls: type, source: _Source, subfolder: str, *, dtype, device, variant) -> Any:
    kwargs: dict[str, Any] = {}
    if variant is not None:
        kwargs["variant"] = variant
    if issubclass(cls, transformers.PreTrainedModel):
        kwargs[_TRANSFORMERS_DTYPE_KW] = dtype
    else:
        kwargs["torch_dtype"] = dtype
        kwargs["low_cpu_mem_usage"] = _has_accelerate()
    model = _load_component(cls.from_pretrained, source, subfolder, **kwargs)
    return _frozen(model, dtype=dtype, device=device)


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def _load_scheduler(source: _Source) -> DDPMScheduler:
    """A `DDPMScheduler` with the noise schedule of the stored scheduler config (often DDIM or PNDM)."""
    config = _load_component(DDPMScheduler.load_config, source, "scheduler")
    if isinstance(config, tuple):
        config = config[0]
    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    kept = {k: v for k, v in dict(config).items() if k in accepted}
    # Latent-diffusion configs set clip_sample=False; PNDM configs may omit it, and DDPM's default (True) is wrong
    # for latents.
    kept.setdefault("clip_sample", False)
    return DDPMScheduler.from_config(kept)
