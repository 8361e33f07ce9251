#!/usr/bin/env bash
# Create .venv with effcn (editable) and all its extras.
# Never lets pip pull a CUDA build of torch onto a CPU machine: if no torch is importable, the
# CPU wheel torch==2.13.0 is installed first (override with EFFCN_TORCH="torch==X.Y.Z"); a torch
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
  .venv/bin/pip install -q "${EFFCN_TORCH:-torch==2.13.0}"
fi
.venv/bin/pip install -q -e ".[all]"
.venv/bin/python -c "import torch, effcn; print(f'effcn {effcn.__version__} ready (torch {torch.__version__})')"
