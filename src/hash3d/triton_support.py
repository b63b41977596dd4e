"""Whether Triton's fused kernels can run here. triton is optional: modules that define kernels import it from here
and define them only when it is installed."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["tl", "triton", "triton_available", "triton_interpreter_enabled"]


def triton_interpreter_enabled() -> bool:
    """TRITON_INTERPRET=1: kernels run (slowly) in Triton's interpreter, on CPU tensors too."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available(device: torch.device | str) -> bool:
    """True when a fused path can run on `device`: triton importable and a CUDA device, or the interpreter on."""
    if triton is None:
        return False
    if triton_interpreter_enabled():
        return True
    return torch.device(device).type == "cuda" and torch.cuda.is_available()
