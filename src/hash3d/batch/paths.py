"""The files and folders a batch reads: where relative paths point, and whether they are there before anything runs.

A front-end's own command runs from its folder (`cd dreamgaussian-hash3d && python main.py …`), and its configs are
written for that: `../models/hash3d-mini-zero123`, `load/images/…`. So a batch job runs in the front-end folder of
its config, wherever the batch command itself was started, and relative paths inside a config mean what they mean
for the front-end's own command. Relative paths given on the command line (key=value overrides) mean what they mean
in the shell they were typed in: the plan makes them absolute.

Before any job runs (and with --dry-run), every local path the configs name is checked, and hub models that are not
in the local Hugging Face cache are reported, since each run would download them (or fail offline).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.diff import flatten
from .errors import BatchError

PATH_PREFIXES = ("./", "../", "~/", "/")
"""Values that are paths whatever their key."""
HUB_CHECKED = ("guidance", "prompt_processor")
"""Hub models every run loads (the diffusion model); others may be unused by the config's own choices."""


@dataclass(frozen=True)
class NamedPath:
    key: str
    value: str
    path: Path
    """Absolute: the value read from the config's working folder."""
    hub: bool = False
    """A model name that is not a local path: a Hugging Face hub id."""


def front_end_workdir(config: Path, front_end: str, fallback: Path | None) -> Path:
    """The folder a config's relative paths are read from: the front-end folder holding the config (its nearest
    ancestor named like the front-end), else the front-end folder of this checkout, else the config's own folder."""
    for parent in config.resolve().parents:
        if parent.name == front_end:
            return parent
    return fallback.resolve() if fallback is not None else config.resolve().parent


@contextmanager
def working_folder(path: str | os.PathLike | None) -> Iterator[None]:
    """Run the block in `path` (None or '': where we are) and come back, however the block ends."""
    if not path:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _looks_like_path(value: str) -> bool:
    return value.startswith(PATH_PREFIXES) or value in (".", "..")


def absolute_overrides(overrides: tuple[str, ...], cwd: Path | None = None) -> tuple[str, ...]:
    """key=value overrides with each value that names an existing file or folder relative to `cwd` (default: the
    working folder) made absolute; hub ids, numbers and other text stay as given."""
    cwd = cwd or Path.cwd()
    out = []
    for token in overrides:
        key, sep, value = token.partition("=")
        raw = value.strip().strip("'\"")
        if sep and raw and not Path(raw).is_absolute() and ("/" in raw or _looks_like_path(raw)) and (cwd / raw).exists():
            token = f"{key}={(cwd / raw).resolve()}"
        out.append(token)
    return tuple(out)


def named_paths(data: dict[str, Any], workdir: Path, skip_keys: tuple[str, ...], skip_values: tuple[str, ...]) -> list[NamedPath]:
    """The input paths a resolved config names: values of keys ending in 'path' (image_path, ply.path,
    pretrained_model_name_or_path, …) and any value starting with ./ ../ ~/ or /; output keys (`skip_keys`, the
    ones the batch sets) and placeholders are left out."""
    found = []
    for key, value in flatten(data).items():
        if not isinstance(value, str) or not value.strip() or value in skip_values or key in skip_keys:
            continue
        last = key.rsplit(".", 1)[-1]
        if last in skip_keys or not (last.endswith("path") or _looks_like_path(value)):
            continue
        path = (workdir / Path(value).expanduser()).resolve()
        hub = last.endswith("name_or_path") and not _looks_like_path(value) and not path.exists()
        if hub and not any(part in key for part in HUB_CHECKED):
            continue  # e.g. GaussianDreamer's Shap-E, loaded only with system.init.kind=shap_e
        found.append(NamedPath(key, value, path, hub))
    return found


def in_hub_cache(repo_id: str) -> bool:
    """Whether a hub model is in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, bad id, no huggingface_hub: all mean "not available offline"
        return False
    return True


def hub_reachable(repo_id: str, timeout: float = 5.0) -> bool:
    """Whether the hub answers for this model now (one request, no retries: fails in about a second offline)."""
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, timeout=timeout)
    except Exception:  # noqa: BLE001 - no network, no such model, no huggingface_hub: cannot download it
        return False
    return True


def offline() -> bool:
    return any(os.environ.get(n, "").strip().lower() in {"1", "true", "yes", "on"}
               for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"))  # fmt: skip


def check_paths(config: Path, named: list[NamedPath], workdir: Path) -> list[str]:
    """Raise BatchError for a local path that is not there; return warnings for hub models not cached here."""
    missing = [p for p in named if not p.hub and not p.path.exists()]
    if missing:
        lines = "; ".join(f"{p.key}: no file or folder at {p.value!r} ({p.path})" for p in missing)
        raise BatchError(
            f"{config.name}: {lines}. Relative paths in a config are read from its front-end folder {workdir}, "
            "relative paths in key=value overrides from the folder you run the command in: fix the path, or "
            "override it (e.g. key=/abs/path)"
        )
    warnings = []
    for p in named:
        if p.hub and not in_hub_cache(p.value):
            if offline():
                raise BatchError(
                    f"{config.name}: {p.key}: the hub model {p.value!r} is not in the local Hugging Face cache and "
                    "offline mode is on (HF_HUB_OFFLINE): download it where there is network "
                    f"(`hf download {p.value}`) and set HF_HOME to that cache, or give a local folder ({p.key}=DIR)"
                )
            warnings.append(f"{config.name}: {p.key}: the hub model {p.value!r} is not in the local Hugging Face "
                            "cache: each run downloads it first (offline they fail)")  # fmt: skip
    return warnings
