"""Shared fixtures: one torch thread for every test, tiny random-weight models written once per test session in the
real diffusers layout, bench/ scripts as modules. Markers (pyproject.toml): `slow` (end-to-end runs over ~20 s;
`pytest -m "not slow"` skips them), `gpu` (needs CUDA; `tools/gpu_tests.sh` runs them)."""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, the fused Triton paths (hash grid, hash table) run in Triton's interpreter, so that the tests comparing
# them with the torch paths run on CPU machines too. It must be set before triton is first imported.
if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Every test runs with one torch thread: the tests use tiny tensors and models, which gain nothing from a second
    thread, and OpenMP threads that spin-wait for each other slow down 10-100x when other processes share a small
    machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def load_bench():
    """`load_bench("mesh_raster_check")`: a script of bench/ imported as a module (bench/ is not a package)."""

    def load(name: str):
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def multiview_models(tmp_path_factory):
    """Folder paths of tiny MVDream and ImageDream models (the converted checkpoints' layout)."""
    from hash3d.testing.models import write_model

    root = tmp_path_factory.mktemp("multiview")
    return {family: str(write_model(family, "tiny", root / f"{family}-tiny")) for family in ("mvdream", "imagedream")}


def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def second_process():
    """`second_process.submit(fn, *args)` -> a Future: `fn` (a module-level function of a test module, its arguments
    picklable) runs in a fresh process with one torch thread while the test goes on, so that a test with two
    independent long runs keeps both cores of a 2-core CI machine busy. The runs are seeded: where they run does not
    change their numbers."""
    context = multiprocessing.get_context("spawn")  # never fork a process that holds torch's thread pools
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=_one_thread) as pool:
        yield pool


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if os.name == "posix" and ctypes.util.find_library("c") else None


@pytest.fixture(autouse=True)
def _give_freed_memory_back():
    """After each test, hand the heap pages freed by the test back to the OS (glibc keeps them otherwise, and over
    the whole suite the process grows by each test's peak)."""
    yield
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def pytest_collection_modifyitems(config, items):
    """A test that skips without CUDA belongs to the GPU tier (`tools/gpu_tests.sh` runs `-m gpu`): one missing the
    `gpu` mark would never run anywhere."""
    unmarked = [
        item.nodeid for item in items
        if item.get_closest_marker("gpu") is None and any(
            any(word in str(mark.kwargs.get("reason", "")) for word in ("CUDA", "GPU"))
            for mark in item.iter_markers("skipif"))
    ]
    if unmarked:
        raise pytest.UsageError("tests that need CUDA but lack @pytest.mark.gpu (add it): " + ", ".join(unmarked))
