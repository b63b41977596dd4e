"""Shared fixtures: tiny random-weight models written once per test session in the real diffusers layout."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os

import pytest
import torch

# Without a GPU, the fused Triton paths (hash grid, hash table) run in Triton's interpreter, so that the tests comparing
# them with the torch paths run on CPU machines too. It must be set before triton is first imported.
if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def written_models(tmp_path_factory):
    """Folder paths of tiny models: sd / zero123 (ε-prediction) and zero123_v (v-prediction)."""
    from hash3d.testing.models import write_model

    root = tmp_path_factory.mktemp("models")
    return {
        "sd": str(write_model("sd", "tiny", root / "sd-tiny")),
        "zero123": str(write_model("zero123", "tiny", root / "stable-zero123-tiny")),
        "zero123_v": str(write_model("zero123", "tiny", root / "zero123-v-tiny", prediction_type="v_prediction", seed=1)),
    }


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if os.name == "posix" and ctypes.util.find_library("c") else None


@pytest.fixture(autouse=True)
def _give_freed_memory_back():
    """After each test, hand the heap pages freed by the test back to the OS (glibc keeps them otherwise, and over
    the whole suite the process grows by each test's peak)."""
    yield
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
