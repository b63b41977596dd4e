"""Offline stand-ins for downloaded artefacts: a CLIP tokenizer and diffusion models with random weights, written in
the real on-disk layouts so that they load through the same ``from_pretrained`` path as real weights."""

from hash3d.testing.tokenizer import CLIP_TOKENIZER_VOCAB_SIZE, write_clip_tokenizer

__all__ = ["CLIP_TOKENIZER_VOCAB_SIZE", "write_clip_tokenizer", "write_model"]


def __getattr__(name: str):
    # write_model pulls in torch/diffusers/transformers: import it only when asked for
    if name == "write_model":
        from hash3d.testing.models import write_model

        return write_model
    raise AttributeError(f"module 'hash3d.testing' has no attribute {name!r}")
