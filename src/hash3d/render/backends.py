"""Choosing between a pure-torch rasteriser and its fast CUDA twin."""

from __future__ import annotations

import importlib.util

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
