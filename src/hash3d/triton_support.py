"""Whether Triton's fused kernels can run here. triton is optional and imported only when needed: modules that define
kernels take `triton` and `tl` from here (None without triton) and are themselves imported only when chosen."""

from __future__ import annotations

import os

import torch

__all__ = ["triton_available", "triton_interpreter_enabled"]  # and, on first use, `triton` and `tl`


def __getattr__(name: str):
    """`triton` and `tl` on first use (importing triton takes a second; CPU runs that never need it skip that)."""
    if name not in ("triton", "tl"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        import triton
        import triton.language as tl
    except ImportError:  # pragma: no cover - depends on the environment
        triton = tl = None
    globals().update(triton=triton, tl=tl)
    return globals()[name]


def triton_interpreter_enabled() -> bool:
    """TRITON_INTERPRET=1: kernels run (slowly) in Triton's interpreter, on CPU tensors too."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available(device: torch.device | str) -> bool:
    """True when a fused path can run on `device`: triton importable and a CUDA device, or the interpreter on."""
    if not triton_interpreter_enabled() and not (torch.device(device).type == "cuda" and torch.cuda.is_available()):
        return False
    return __getattr__("triton") is not None
