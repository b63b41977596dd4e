"""The items of a batch: prompts read from a text file, or the RGBA images of a folder, each with a short stable id.

An item's id names its output folder. It is the prompt (or image file stem) lowercased with every run of other
characters than a-z and 0-9 turned into one '_', cut to `MAX_SLUG` characters; when it had to be cut, or when two
items would get the same id, the first 8 hex digits of the SHA-1 of the full prompt (or file name) are appended.
So ids are short (no "file name too long"), readable, and do not depend on the order of the file: adding or
moving prompts does not rename the others' folders, and a rerun finds its finished items.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .config import Kind
from .errors import BatchError

MAX_SLUG = 48
IMAGE_SUFFIXES = (".png", ".webp", ".tif", ".tiff")
"""Formats that can carry an alpha channel."""


@dataclass(frozen=True)
class Item:
    id: str
    kind: Kind
    target: str
    """The prompt (text) or the absolute image path (image)."""

    @property
    def label(self) -> str:
        """What the summary table shows: the prompt, or the image's file name."""
        return self.target if self.kind == "text" else Path(self.target).name

    @property
    def gt_names(self) -> tuple[str, ...]:
        """Folder names looked up under --gt for this item's ground-truth views: the id, then the image's stem."""
        return (self.id,) if self.kind == "text" else tuple(dict.fromkeys((self.id, Path(self.target).stem)))


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def slugify(text: str, max_len: int = MAX_SLUG) -> tuple[str, bool]:
    """(slug, whether it was cut): lowercase a-z0-9 runs joined by '_'."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "item"
    if len(slug) <= max_len:
        return slug, False
    return slug[:max_len].rstrip("_"), True


def assign_ids(names: list[str]) -> list[str]:
    """Ids for distinct names (see the module docstring)."""
    slugs = [slugify(n) for n in names]
    counts = Counter(s for s, _ in slugs)
    ids = [f"{s}-{_digest(n)}" if cut or counts[s] > 1 else s for n, (s, cut) in zip(names, slugs)]
    if len(set(ids)) != len(ids):  # a slug equal to another's "slug-hash" form: fall back to hashes everywhere
        ids = [f"{s}-{_digest(n)}" for n, (s, _) in zip(names, slugs)]
    return ids


def read_prompts(path: Path) -> tuple[list[Item], list[str]]:
    """Prompts, one a line; blank lines and lines starting with '#' are skipped; repeated prompts run once.

    Returns the items and notes for the summary."""
    if not path.exists():
        raise BatchError(f"prompts file not found: {path} (give a text file with one prompt a line, e.g. assets/prompt.txt)")
    if not path.is_file():
        raise BatchError(f"--prompts {path} is not a file (give a text file with one prompt a line)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BatchError(f"prompts file {path} is not UTF-8 text: {exc}") from None
    prompts: list[str] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if line and not line.startswith("#"):
            prompts.append(line)
    if not prompts:
        raise BatchError(f"prompts file {path} holds no prompts (one a line; blank lines and '#' comments are skipped)")
    unique = list(dict.fromkeys(prompts))
    notes = []
    if len(unique) < len(prompts):
        notes.append(f"{len(prompts) - len(unique)} repeated prompt(s) in {path} run once")
    for prompt in unique:
        if "${" in prompt:
            raise BatchError(f"prompt {prompt!r} contains '${{', which the configs read as an interpolation: remove it")
    return [Item(i, "text", p) for i, p in zip(assign_ids(unique), unique)], notes


def has_alpha(path: Path) -> bool:
    """Whether the image file stores an alpha channel (reads the header only)."""
    try:
        with Image.open(path) as im:
            return "A" in im.getbands() or "transparency" in im.info
    except (UnidentifiedImageError, OSError):
        return False


def find_images(folder: Path) -> tuple[list[Item], list[str]]:
    """The RGBA images directly in `folder` (sorted by name); images without alpha are skipped with a note."""
    if not folder.exists():
        raise BatchError(f"images folder not found: {folder}")
    if not folder.is_dir():
        raise BatchError(f"--images {folder} is not a folder (give a folder of RGBA images, e.g. NAME_rgba.png)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    rgba = [p for p in files if has_alpha(p)]
    notes = []
    skipped = [p.name for p in files if p not in rgba]
    others = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".bmp")]
    if skipped or others:
        names = skipped + others
        shown = ", ".join(names[:10]) + (f", … and {len(names) - 10} more" if len(names) > 10 else "")
        notes.append(
            f"skipped {len(names)} image(s) without an alpha channel in {folder}: {shown} "
            "(make RGBA inputs with `python dreamgaussian-hash3d/process.py IMAGE`)"
        )
    if not rgba:
        raise BatchError(
            f"no RGBA images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)} with an alpha channel"
            + (f"; {len(skipped) + len(others)} image(s) without alpha" if skipped or others else "")
            + "): make them with `python dreamgaussian-hash3d/process.py IMAGE`"
        )
    ids = assign_ids([p.stem for p in rgba]) if len({p.stem for p in rgba}) == len(rgba) else assign_ids([p.name for p in rgba])
    return [Item(i, "image", str(p.resolve())) for i, p in zip(ids, rgba)], notes
