"""A CLIP byte-level BPE tokenizer written by the project, in the real on-disk layout (vocab.json, merges.txt).

The vocabulary holds every byte symbol (plain and word-final), so any text encodes, plus, for each word in `words`,
merges that build it, so each of those words is one token. Every merge result is in
the vocabulary, so whatever order the BPE applies overlapping merges in, it never produces an unknown token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

__all__ = ["BYTE_VOCAB_SIZE", "tokenizer_vocab", "write_clip_tokenizer"]

BYTE_VOCAB_SIZE = 2 * 256 + 2
"""Vocabulary size without words: byte symbols, their word-final forms, <|startoftext|>, <|endoftext|>."""


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (printable Latin-1 bytes map to themselves)."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return [table[b] for b in range(256)]


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The tokens CLIP's BPE makes of one word with these merge ranks (lowest rank first, all occurrences)."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _word_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges that make each (lower-case ASCII) word one word-final token.

    Words are built left to right; where earlier merges split a word differently (a merge of another word applies
    first), merges of the pieces it ends up as are appended. Appended merges rank below all others, so they never
    change a word that already is one token; the loop ends because every round shortens each unfinished word.
    """
    words = list(dict.fromkeys(words))
    for word in words:
        if not word or not word.isascii() or not word.isalpha() or word != word.lower():
            raise ValueError(f"tokenizer words must be lower-case ASCII letters, got {word!r}")
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    while True:
        unfinished = [pieces for pieces in (_bpe(w, ranks) for w in words) if len(pieces) > 1]
        if not unfinished:
            return merges
        for pieces in unfinished:
            left = pieces[0]
            for right in pieces[1:]:
                if (left, right) not in ranks:
                    ranks[(left, right)] = len(merges)
                    merges.append((left, right))
                left = left + right


def tokenizer_vocab(words: Iterable[str] = ()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of the tokenizer; <|startoftext|> and <|endoftext|> are the last two ids."""
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": i + len(symbols) for i, s in enumerate(symbols)})
    merges = _word_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def write_clip_tokenizer(path: str | Path, model_max_length: int = 77, words: Iterable[str] = ()) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json for a CLIPTokenizer."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer_vocab(words)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
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
