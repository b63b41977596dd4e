"""The CLIP tokenizer of the random-weight test models: `hash3d.mini.tokenizer` without extra words (every byte
symbol, no merges: any text encodes, one token per character). Models that use it need a vocabulary of at least
`CLIP_TOKENIZER_VOCAB_SIZE` entries."""

from __future__ import annotations

from pathlib import Path

from hash3d.mini.tokenizer import BYTE_VOCAB_SIZE
from hash3d.mini.tokenizer import write_clip_tokenizer as _write

CLIP_TOKENIZER_VOCAB_SIZE = BYTE_VOCAB_SIZE


def write_clip_tokenizer(path: str | Path, model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json for a CLIPTokenizer into `path`."""
    return _write(path, model_max_length)
