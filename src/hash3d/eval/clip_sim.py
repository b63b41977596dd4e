"""CLIP similarity between a target (a prompt or a reference image) and rendered views.

The score of a view is the cosine similarity of its CLIP image embedding with the target's embedding (text or
image); a run reports every view's score and their mean ± std. Models load through transformers'
`CLIPModel.from_pretrained` from a hub id or a local folder in the same layout.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hash3d.eval.config import DTYPES, ClipSimConfig, resolve_device
from hash3d.eval.errors import EvalError
from hash3d.eval.images import IMAGE_SUFFIXES, list_images, load_rgb, to_pil
from hash3d.eval.report import MetricTable


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~", "\\")) or os.path.exists(name) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _fix_hint(name: str, flag: str = "--model") -> str:
    return (
        f"To fix: on a machine with network access run `hf download {name} --local-dir DIR` "
        f"(or `huggingface-cli download` with older huggingface_hub), copy DIR here and pass `{flag} DIR`; "
        "or set HF_HOME to a Hugging Face cache that already holds the model."
    )


def _load_pretrained(cls, name: str, **kwargs):
    """from_pretrained, first from the local cache only (fast when offline), then from the hub."""
    if os.path.isdir(name):
        return cls.from_pretrained(name, **kwargs)
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise
        print(f"{name} is not in the local Hugging Face cache: downloading it…", file=sys.stderr, flush=True)
        return cls.from_pretrained(name, **kwargs)


def _image_processor_class():
    # transformers 5 backs CLIPImageProcessor with torchvision; its Pillow twin keeps torchvision out.
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


@dataclass
class ClipEmbedder:
    """A CLIP model with its tokenizer and image preprocessing, giving unit-length embeddings."""

    model: "torch.nn.Module"
    image_processor: object
    tokenizer: object | None
    device: torch.device
    name: str

    @classmethod
    def load(cls, name: str, device: str | torch.device = "cpu", dtype: str = "float32", text: bool = True,
             flag: str = "--model") -> "ClipEmbedder":  # fmt: skip
        """Load model, preprocessing and (when `text`) tokenizer; an EvalError that says how to fix a failure
        (`flag`: the caller's command-line option that names the model)."""
        from transformers import CLIPModel, CLIPTokenizer
        from transformers.utils import logging as hf_logging

        if _looks_like_path(name) and not os.path.isdir(os.path.expanduser(name)):
            raise EvalError(f"CLIP model folder {name!r} does not exist. Pass a local model folder or a hub id as {flag}.")
        name = os.path.expanduser(name) if os.path.isdir(os.path.expanduser(name)) else name
        device = torch.device(device)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = _load_pretrained(CLIPModel, name)
            image_processor = _load_pretrained(_image_processor_class(), name)
            tokenizer = _load_pretrained(CLIPTokenizer, name) if text else None
        except Exception as exc:  # from_pretrained fails in many ways (missing files, bad config, network)
            where = "folder" if os.path.isdir(name) else "hub id"
            reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
            hint = "" if os.path.isdir(name) else " " + _fix_hint(name, flag)
            raise EvalError(f"could not load the CLIP model ({where} {name!r}): {reason}.{hint}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        model = model.to(device=device, dtype=DTYPES[dtype]).eval()
        return cls(model, image_processor, tokenizer, device, name)

    @staticmethod
    def _pooled(output) -> torch.Tensor:
        # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor.
        return output.pooler_output if hasattr(output, "pooler_output") else output

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise RuntimeError("this embedder was loaded without a tokenizer")
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = self._pooled(self.model.get_text_features(**tokens)).float()
        return features / features.norm(dim=-1, keepdim=True)

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, verbose=False)["input_ids"])

    @torch.no_grad()
    def embed_images(self, images: list, batch_size: int = 16) -> torch.Tensor:
        """Embed PIL images (or (3, H, W) tensors in [0, 1]) in batches."""
        out = []
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(images), batch_size):
            chunk = [to_pil(im) if isinstance(im, torch.Tensor) else im for im in images[start : start + batch_size]]
            pixels = self.image_processor(images=chunk, return_tensors="pt")["pixel_values"]
            features = self._pooled(self.model.get_image_features(pixel_values=pixels.to(self.device, dtype))).float()
            out.append(features / features.norm(dim=-1, keepdim=True))
        return torch.cat(out)


def select_views(paths: list[Path], views: int) -> list[Path]:
    """`views` images spread evenly over the sorted list (every len/views-th, from the first); 0 or more than there are: all."""
    if views == 0 or views >= len(paths):
        return list(paths)
    index = np.floor(np.arange(views) * len(paths) / views).astype(int)
    return [paths[i] for i in index]


def resolve_mode(config: ClipSimConfig) -> tuple[str, str | None]:
    """The mode to use and, when it was inferred, a sentence saying so."""
    target_is_image = Path(config.target).suffix.lower() in IMAGE_SUFFIXES and Path(config.target).is_file()
    if config.mode is not None:
        return config.mode, None
    if target_is_image:
        return "image", f"mode: image (TARGET {config.target!r} is an image file; pass --mode text to score it as a prompt)"
    return "text", "mode: text (pass --mode image to compare with a reference image)"


def evaluate_clip(config: ClipSimConfig, embedder: ClipEmbedder | None = None) -> MetricTable:
    """Score the views in config.pred_dir against config.target; `embedder` replaces loading config.model."""
    mode, mode_note = resolve_mode(config)
    notes = [mode_note] if mode_note else []
    background = config.background_rgb
    if mode == "image":
        target = Path(config.target)
        if not target.exists():
            raise EvalError(f"image mode: the reference image {config.target!r} does not exist")
        if not target.is_file():
            raise EvalError(f"image mode: the reference image {config.target!r} is not a file")
    elif Path(config.target).suffix.lower() in IMAGE_SUFFIXES and Path(config.target).is_file():
        notes.append(f"warning: text mode, but TARGET {config.target!r} is an image file; its file name is scored as a prompt")
    all_views = list_images(config.pred_dir, "prediction folder")
    views = select_views(all_views, config.views)
    if config.views and len(all_views) < config.views:
        notes.append(f"asked for {config.views} views but {config.pred_dir} holds {len(all_views)}: scored all of them")
    elif len(views) < len(all_views):
        notes.append(f"scored {len(views)} of {len(all_views)} views, evenly spaced")
    images = [load_rgb(path, background)[0] for path in views]
    target_image = load_rgb(config.target, background)[0] if mode == "image" else None

    if embedder is None:
        print(f"loading CLIP model {config.model}…", file=sys.stderr, flush=True)
        embedder = ClipEmbedder.load(config.model, resolve_device(config.device), config.dtype, text=mode == "text")
    if mode == "text":
        tokens = embedder.token_count(config.target)
        limit = getattr(embedder.tokenizer, "model_max_length", 77)
        if tokens > limit:
            notes.append(f"the prompt has {tokens} tokens; CLIP reads the first {limit}")
        target_embedding = embedder.embed_texts([config.target])
    else:
        target_embedding = embedder.embed_images([target_image])
    view_embeddings = embedder.embed_images(images, config.batch_size)
    scores = (view_embeddings @ target_embedding[0]).tolist()

    target_text = config.target if mode == "text" else f"image {config.target}"
    title = f"CLIP similarity ({embedder.name}, {mode} mode)\ntarget: {target_text}\nviews: {config.pred_dir}"
    settings = {
        "target": config.target,
        "mode": mode,
        "model": embedder.name,
        "pred_dir": str(config.pred_dir),
        "views": [p.name for p in views],
        "n_available": len(all_views),
        "background": list(background),
        "dtype": config.dtype,
        "std": "population (ddof 0)",
    }
    return MetricTable(
        title=title,
        row_label="view",
        rows=[p.name for p in views],
        columns={"clip": scores},
        digits={"clip": 4},
        settings=settings,
        notes=notes,
    )
