#!/usr/bin/env bash
# The one-shot GPU check (issue 22; what it runs: benchmarks/gpu_check.py). Two steps:
#
#   benchmarks/gpu_check.sh fetch   here, once: wheels of what the device machine lacks (Optuna
#                                   and its needs, ~19 MB) into .whl/, which git ignores
#   benchmarks/gpu_check.sh run     on the device machine, through the device tool:
#                                   run(command="benchmarks/gpu_check.sh run", carry=[".whl"],
#                                       timeout_s=560)
#
# `run` installs the carried wheels into /tmp/site, then prints the table and writes it, with
# the whole log, under $OUT (/tmp/gpu_check where OUT is not set): gpu_check.md, gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions this checkout is tested with; the device has torch, timm, numpy, scipy,
# scikit-learn, safetensors, pillow, tqdm, PyYAML, filelock, narwhals and pytest already.
WHEELS=(optuna optuna-dashboard alembic Mako SQLAlchemy colorlog cmaes plotly bottle)

case "${1:-run}" in
fetch)
    py=.venv/bin/python
    [ -x "$py" ] || py=python3
    pins=()
    for name in "${WHEELS[@]}"; do
        pins+=("$name==$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
    done
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    rm -rf .whl
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl "${pins[@]}"
    du -sh .whl
    ;;
run)
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "note: no .whl/ carried: the digits demo needs Optuna (benchmarks/gpu_check.sh fetch)"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    exec python3 benchmarks/gpu_check.py check
    ;;
*)
    echo "usage: benchmarks/gpu_check.sh fetch | run" >&2
    exit 2
    ;;
esac
