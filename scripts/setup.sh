#!/usr/bin/env bash
# Create .venv with effcn (editable) and all its extras.
# Never lets pip pull a CUDA build of torch onto a CPU machine: if no torch is importable, the
# CPU build torch==2.13.0+cpu is installed first, from a local wheel if pip finds one, else with
# PyTorch's CPU index as an extra index (another version: EFFCN_TORCH="torch==X.Y.Z+cpu"); a torch
# already installed system-wide (e.g. a CUDA build on a GPU machine) is reused as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # The exact +cpu build: pip can never resolve it to a CUDA wheel. A local wheel (pip's
  # find-links) serves it as it is; otherwise PyTorch's CPU index is added as an extra index.
  spec=${EFFCN_TORCH:-torch==2.13.0+cpu}
  .venv/bin/pip install -q "$spec" 2>/dev/null \
    || .venv/bin/pip install -q "$spec" --extra-index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/pip install -q -e ".[all]"
.venv/bin/python -c "import torch, effcn; print(f'effcn {effcn.__version__} ready (torch {torch.__version__})')"
