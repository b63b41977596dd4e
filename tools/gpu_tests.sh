#!/usr/bin/env bash
# The GPU tier: every test marked `gpu` (CUDA-only tests, and the fused Triton kernels on the GPU instead of
# Triton's interpreter), on a machine with a CUDA GPU. Run it whenever GPU code changes.
#
#   tools/gpu_tests.sh [pytest arguments ...]          e.g. tools/gpu_tests.sh -x -k triton
#
# Installs what the tier needs and is missing (the `gpu` and `test` extras: gsplat, diffrp-nvdiffrast, triton,
# pytest, pytest-xdist, scikit-image) into the Python it runs with ($PYTHON, default python3), from ./.whl when that
# folder holds wheels (machines without internet), else from the package index. Then builds gsplat's CUDA kernels in
# one process (several test processes would queue on its build lock), runs `pytest -m gpu` on $GPU_TEST_WORKERS
# processes sharing the GPU (default 4, each test file whole in one; 0: one process), and prints one line to record in
# docs/testing.md: date, commit, device, torch, workers, and pytest's summary. Exit status: pytest's.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_tests.sh: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi

# module to import -> package to install
declare -A NEEDS=([gsplat]=gsplat [nvdiffrast]=diffrp-nvdiffrast [triton]=triton [pytest]=pytest [xdist]=pytest-xdist
                  [skimage]=scikit-image)
missing=()
for module in "${!NEEDS[@]}"; do
    "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" || missing+=("${NEEDS[$module]}")
done
if ! "$PY" -c "import hash3d" 2>/dev/null; then
    missing+=(-e .)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "gpu_tests.sh: installing ${missing[*]}" >&2
    if compgen -G ".whl/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --find-links .whl "${missing[@]}" || echo "gpu_tests.sh: install failed: the tests that need it will skip" >&2
    else
        "$PY" -m pip install -q "${missing[@]}" || echo "gpu_tests.sh: install failed: the tests that need it will skip" >&2
    fi
fi

workers="${GPU_TEST_WORKERS:-4}"
if ! "$PY" -c "import xdist" 2>/dev/null; then
    workers=0
fi
parallel=()
if [ "$workers" -gt 0 ]; then
    parallel=(-n "$workers" --dist loadfile)
fi
if "$PY" -c "import gsplat" 2>/dev/null; then
    echo "gpu_tests.sh: building gsplat's CUDA kernels (minutes, once per machine)" >&2
    "$PY" -c "from gsplat.cuda._backend import _C" || echo "gpu_tests.sh: gsplat's build failed: its tests will fail" >&2
fi

log="$(mktemp)"
"$PY" -m pytest -m gpu -q -rs -p no:cacheprovider "${parallel[@]}" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary="$(grep -E '(passed|failed|errors?|skipped|deselected|no tests ran).* in [0-9.]+s' "$log" | tail -1 | sed -E 's/^=+ //; s/ =+$//')"
device="$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")"
torch_version="$("$PY" -c "import torch; print(torch.__version__)")"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "GPU tier: $(date -u +%Y-%m-%d), commit $commit, $device, torch $torch_version, $workers workers: ${summary:-no summary line (see above)}"
rm -f "$log"
exit "$status"
