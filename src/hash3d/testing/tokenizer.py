"""A CLIP byte-level BPE tokenizer written from scratch, in the real on-disk layout.

Real tokenizers cannot be downloaded here; this one has every byte symbol (plain and word-final) and no merges,
so it encodes any text, one token per character. Models that use it need a vocabulary of at least
`CLIP_TOKENIZER_VOCAB_SIZE` entries.
"""

from __future__ import annotations

import json
from pathlib import Path


CLIP_TOKENIZER_VOCAB_SIZE = 2 * 256 + 2


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (printable Latin-1 bytes map to themselves)."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return [table[b] for b in range(256)]


def write_clip_tokenizer(path: str | Path, model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json for a CLIPTokenizer into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": i + len(symbols) for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (path / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2)
    )
    return path
