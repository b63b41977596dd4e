#!/usr/bin/env bash
# Cache off vs the shipped `_hash3d` config, for a group of pipelines or named rows, on a CUDA GPU (bench/training.py).
#
#   bash bench/shipped_rows.sh GROUP|ROW[,ROW...] [OUT_DIR] [SECONDS]
#
# Groups: nerf (the NeRF pipelines' 100-step rows, no gsplat build needed), refine (the DMTet refine stages, each
# after a 300-step coarse run), gaussian (the Gaussian-splatting ones; the first Gaussian render builds gsplat's CUDA
# kernels, about 2 minutes on a fresh machine, in the first row's slot), dgmodes (DreamGaussian's text, text_mv and
# imagedream stage 1), headline (Stable-Zero123 as the user runs it: 600 steps, validation renders on), recipes (the
# other whole recipes that fit a device call, as users run them: gs-zero123's 1000 steps, GaussianDreamer's 1200;
# one call each). A ROW is a row's name as listed by `bash bench/shipped_rows.sh list` (e.g.
# gs-shading-100,magic3d-refine-sd-100).
# Each row runs two repeats of both configs in one process after unrecorded warm-ups of both (the headline: one
# repeat, no warm-up), and writes bench/training.py's JSON under OUT_DIR (default: bench/, the current results).
# SECONDS (default 570) bounds the whole call: a row that no longer fits in what is left is not started, so a group
# fits one device call. Each row has its own limit (from its measured length on an H100, with room): a row past it
# prints no table. At the end, bench/shipped_table.py prints the shipped rows of OUT_DIR in one table.
set -uo pipefail
cd "$(dirname "$0")/.."
usage="usage: bench/shipped_rows.sh GROUP|ROW[,ROW...] [OUT_DIR] [SECONDS] (groups: nerf refine gaussian dgmodes headline recipes; rows: list)"
what="${1:?$usage}"
out="${2:-bench}"
budget="${3:-570}"
PY="${PYTHON:-python3}"

# name | limit s | bench/training.py arguments
ROWS=(
    "stable-zero123-100|125|--pipeline stable-zero123 --steps 100 --repeats 2"
    "latentnerf-100|70|--pipeline latentnerf --steps 100 --repeats 2"
    "magic3d-coarse-sd-100|80|--pipeline magic3d-coarse-sd --steps 100 --repeats 2"
    "magic123-coarse-sd-100|105|--pipeline magic123-coarse-sd --steps 100 --repeats 2"
    "magic3d-refine-sd-100|160|--pipeline magic3d-refine-sd --steps 100 --repeats 2"
    "magic123-refine-sd-100|200|--pipeline magic123-refine-sd --steps 100 --repeats 2"
    "gs-zero123-100|190|--pipeline gs-zero123 --steps 100 --repeats 2"
    "gs-shading-100|120|--pipeline gs-shading --steps 100 --repeats 2"
    "dreamgaussian|160|--pipeline dreamgaussian --repeats 2"
    "gaussiandreamer-sd-100|120|--pipeline gaussiandreamer-sd --steps 100 --repeats 2"
    "dreamgaussian-text_mv-150|130|--pipeline dreamgaussian-text_mv --steps 150 --repeats 2"
    "dreamgaussian-imagedream-150|140|--pipeline dreamgaussian-imagedream --steps 150 --repeats 2"
    "dreamgaussian-text-150|110|--pipeline dreamgaussian-text --steps 150 --repeats 2"
    "stable-zero123-as-user|560|--pipeline stable-zero123 --as-user --no-warmup"
    # the next two not yet run: limits estimated from their 100-step rows (steps x step time x 2 runs, gsplat's build)
    "gs-zero123-as-user|330|--pipeline gs-zero123 --as-user --no-warmup"
    "gaussiandreamer-sd-as-user|480|--pipeline gaussiandreamer-sd --as-user --no-warmup"
    "dreamfusion-sd-200|130|--pipeline dreamfusion-sd --steps 200 --repeats 2"
)
declare -A GROUPS_=(
    [nerf]="stable-zero123-100 latentnerf-100 magic3d-coarse-sd-100 magic123-coarse-sd-100"
    [refine]="magic3d-refine-sd-100 magic123-refine-sd-100"
    [gaussian]="gs-zero123-100 gs-shading-100 dreamgaussian gaussiandreamer-sd-100"
    [dgmodes]="dreamgaussian-text_mv-150 dreamgaussian-imagedream-150 dreamgaussian-text-150"
    [headline]="stable-zero123-as-user dreamfusion-sd-200"
    [recipes]="gs-zero123-as-user gaussiandreamer-sd-as-user"
)
declare -A LIMIT ARGS
for r in "${ROWS[@]}"; do
    IFS='|' read -r name limit args <<< "$r"
    LIMIT[$name]=$limit
    ARGS[$name]=$args
done

if [ "$what" = list ]; then
    for r in "${ROWS[@]}"; do echo "${r%%|*}"; done
    exit 0
fi
if [ -n "${GROUPS_[$what]:-}" ]; then
    names=(${GROUPS_[$what]})
else
    IFS=',' read -r -a names <<< "$what"
    for name in "${names[@]}"; do
        if [ -z "${LIMIT[$name]:-}" ]; then
            echo "bench/shipped_rows.sh: unknown group or row '$name' ($usage)" >&2
            exit 2
        fi
    done
fi
mkdir -p "$out"

for name in "${names[@]}"; do
    limit=${LIMIT[$name]}
    left=$((budget - SECONDS))
    if [ "$left" -lt "$limit" ]; then
        echo "=== skipped $name: needs ${limit} s, ${left} s left"
        continue
    fi
    echo "=== [$SECONDS s] $name: bench/training.py ${ARGS[$name]}"
    # shellcheck disable=SC2086  # the arguments are words
    timeout "$limit" "$PY" bench/training.py ${ARGS[$name]} --out-dir "$out" 2>&1 \
        | grep -v -e '^{' -e 'it/s\]' -e 'UserWarning' -e 'return Variable' || echo "=== $name: no table (past ${limit} s or failed)"
done
echo "=== done in $SECONDS s"
compgen -G "$out/results-training-*.json" > /dev/null && "$PY" bench/shipped_table.py "$out"/results-training-*.json
