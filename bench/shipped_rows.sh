#!/usr/bin/env bash
# Cache off vs the shipped `_hash3d` config, for every pipeline of a group, on a CUDA GPU (bench/training.py rows).
#
#   bash bench/shipped_rows.sh nerf|gaussian|headline [OUT_DIR] [SECONDS]
#
# nerf: the NeRF and DMTet pipelines (no gsplat build needed); gaussian: the Gaussian-splatting ones (the first
# Gaussian render builds gsplat's CUDA kernels, about 2 minutes, in the first row's slot); headline: Stable-Zero123
# as the user runs it (600 steps, validation renders on). Each row runs two repeats of both configs in one process
# after an unrecorded warm-up, and writes bench/training.py's JSON under OUT_DIR (default: bench/, the current
# results). SECONDS (default 570) bounds the whole group: a row that no longer fits in what is left is not started,
# so the group fits one device call. Each row has its own limit: a row past it prints no table. At the end,
# bench/shipped_table.py prints the shipped rows of OUT_DIR in one table.
set -uo pipefail
cd "$(dirname "$0")/.."
group="${1:?usage: bench/shipped_rows.sh nerf|gaussian|headline [OUT_DIR] [SECONDS]}"
out="${2:-bench}"
budget="${3:-570}"
mkdir -p "$out"
PY="${PYTHON:-python3}"

row() {  # row SECONDS NAME bench/training.py-arguments...  (NAME: for the messages; the JSON takes its default name)
    local limit=$1 name=$2
    shift 2
    local left=$((budget - SECONDS))
    if [ "$left" -lt "$limit" ]; then
        echo "=== skipped $name: needs ${limit} s, ${left} s left"
        return
    fi
    echo "=== [$SECONDS s] $name: bench/training.py $*"
    timeout "$limit" "$PY" bench/training.py "$@" --out-dir "$out" 2>&1 \
        | grep -v -e '^{' -e 'it/s\]' -e 'UserWarning' -e 'return Variable' || echo "=== $name: no table (past ${limit} s or failed)"
}

case "$group" in
    nerf)
        row 110 stable-zero123-100 --pipeline stable-zero123 --steps 100 --repeats 2
        row 50 latentnerf-100 --pipeline latentnerf --steps 100 --repeats 2
        row 60 magic3d-coarse-sd-100 --pipeline magic3d-coarse-sd --steps 100 --repeats 2
        row 80 magic123-coarse-sd-100 --pipeline magic123-coarse-sd --steps 100 --repeats 2
        row 100 magic3d-refine-sd-100 --pipeline magic3d-refine-sd --steps 100 --repeats 2
        row 110 magic123-refine-sd-100 --pipeline magic123-refine-sd --steps 100 --repeats 2
        ;;
    gaussian)
        row 190 gs-zero123-100 --pipeline gs-zero123 --steps 100 --repeats 2
        row 70 gs-shading-100 --pipeline gs-shading --steps 100 --repeats 2
        row 110 dreamgaussian --pipeline dreamgaussian --repeats 2
        row 100 gaussiandreamer-sd-100 --pipeline gaussiandreamer-sd --steps 100 --repeats 2
        row 80 dreamgaussian-text_mv-150 --pipeline dreamgaussian-text_mv --steps 150
        row 80 dreamgaussian-imagedream-150 --pipeline dreamgaussian-imagedream --steps 150
        row 60 dreamgaussian-text-150 --pipeline dreamgaussian-text --steps 150
        ;;
    headline)
        row 400 stable-zero123-as-user --pipeline stable-zero123 --as-user --no-warmup
        row 80 dreamfusion-sd-200 --pipeline dreamfusion-sd --steps 200
        ;;
    *)
        echo "bench/shipped_rows.sh: unknown group '$group' (nerf, gaussian or headline)" >&2
        exit 2
        ;;
esac
echo "=== done in $SECONDS s"
compgen -G "$out/results-training-*.json" > /dev/null && "$PY" bench/shipped_table.py "$out"/results-training-*.json
