#!/usr/bin/env bash
# Create or refresh the virtual environment at .venv and install hpsearch into it.
#   bash scripts/setup.sh          # runtime only
#   bash scripts/setup.sh test     # with the test extras, plus Debian's postgresql and
#                                  # chromium for the database and browser tests (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if [ "$extras" = "test" ]; then
  missing=()
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing ${missing[*]} from Debian for the tests" >&2
      apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null; }
    else
      echo "note: ${missing[*]} missing and not root; their tests will be skipped" >&2
    fi
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# torch/torchvision pinned to builds that run on CUDA and fall back to the CPU; pip takes them
# from the local wheel cache where one is configured.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi

if [ "$extras" = "test" ]; then
  # The lowest Optuna we support (pyproject.toml: optuna>=4.8,<6), beside the latest one in
  # .venv: CI runs the storage, worker and fault tests once more with this folder first on
  # PYTHONPATH (.ci/run). Its dependencies are the venv's.
  OPTUNA_LOWEST=4.8.0
  lowest=.venv/optuna-lowest
  if [ "$(cat "$lowest/.version" 2>/dev/null)" != "$OPTUNA_LOWEST" ]; then
    rm -rf "$lowest"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
      --target "$lowest" "optuna==$OPTUNA_LOWEST"
    echo "$OPTUNA_LOWEST" > "$lowest/.version"
  fi
fi
