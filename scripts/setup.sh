#!/usr/bin/env bash
# Create or refresh the virtual environment at .venv and install hpsearch into it.
#   bash scripts/setup.sh          # runtime only
#   bash scripts/setup.sh test     # with the test extras
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
# torch/torchvision pinned to the CUDA builds that run everywhere (they fall back to the CPU);
# pip reads them from a local wheel cache where one is configured.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
