"""Choosing between a pure-torch rasteriser and its fast CUDA twin."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import torch

from ..config.errors import ConfigError


def has_module(name: str) -> bool:
    """True when the package can be imported (its CUDA code may still need compiling)."""
    return importlib.util.find_spec(name) is not None


def choose_backend(
    backend: str, device: torch.device | str, fast: str, available: bool, install: str, kind: str = "backend"
) -> str:
    """'auto' -> `fast` for CUDA tensors when the package is available, else 'torch'; an explicit choice is checked.

    fast: the fast backend's name ('gsplat', 'nvdiffrast'); install: how to get its package.
    """
    device = torch.device(device)
    if backend == "auto":
        return fast if device.type == "cuda" and available else "torch"
    if backend == fast:
        if not available:
            raise ImportError(f"backend='{fast}' needs the {fast} package: {install}")
        if device.type != "cuda":
            raise ConfigError(f"backend='{fast}' needs CUDA tensors; got {device}. Use backend='torch' on the CPU.")
        return fast
    if backend == "torch":
        return "torch"
    raise ConfigError(f"unknown {kind} {backend!r}; expected 'auto', 'torch' or '{fast}'")


STALE_LOCK_S = 15 * 60
"""A JIT build lock older than this is taken for the leftover of an interrupted build (a build takes minutes)."""


def stale_build_lock(name: str, now: float | None = None, max_age_s: float = STALE_LOCK_S) -> tuple[Path, float] | None:
    """(path, age in s) of the lock file of torch's JIT build of extension `name` when it is older than `max_age_s`.

    A build interrupted while compiling (a killed first run) leaves its lock behind, and every later process that
    needs the extension waits on it without a word. Looks in $TORCH_EXTENSIONS_DIR/<name> or, by default, in
    torch's build root under each Python/CUDA subfolder.
    """
    from torch.utils.cpp_extension import get_default_build_root  # noqa: PLC0415 (only where a JIT build may run)

    custom = os.environ.get("TORCH_EXTENSIONS_DIR")
    root = Path(custom) if custom else Path(get_default_build_root())
    candidates = [root / name / "lock"] if custom else sorted(root.glob(f"*/{name}/lock"))
    now = time.time() if now is None else now
    for lock in candidates:
        try:
            age = now - lock.stat().st_mtime
        except OSError:
            continue
        if age > max_age_s:
            return lock, age
    return None
