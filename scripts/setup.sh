#!/usr/bin/env bash
# Create .venv with effcn (editable) and all its extras.
# Never lets pip pull a CUDA build of torch onto a CPU machine: if no torch is importable, the
# CPU build torch==2.13.0 is installed first, from a local CPU wheel if pip finds one, else from
# PyTorch's CPU index (another version: EFFCN_TORCH="torch==X.Y.Z"); a torch already installed
# system-wide (e.g. a CUDA build on a GPU machine) is reused as it is.
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
  spec=${EFFCN_TORCH:-torch==2.13.0}
  # Which wheel would plain pip take? A CPU build (a local +cpu wheel) is used as it is; anything
  # else (on Linux, PyPI's torch is the CUDA build, several GB) comes from PyTorch's CPU index.
  url=$(.venv/bin/pip install -q --dry-run --report - "$spec" 2>/dev/null | .venv/bin/python -c \
    "import json, sys; r = json.load(sys.stdin); print(next(i['download_info']['url'] for i in r['install'] if i['metadata']['name'] == 'torch'))" 2>/dev/null || true)
  case "$url" in
    *%2Bcpu*|*+cpu*) .venv/bin/pip install -q "$spec" ;;
    *) .venv/bin/pip install -q "$spec" --index-url https://download.pytorch.org/whl/cpu \
         --extra-index-url https://pypi.org/simple ;;
  esac
fi
.venv/bin/pip install -q -e ".[all]"
.venv/bin/python -c "import torch, effcn; print(f'effcn {effcn.__version__} ready (torch {torch.__version__})')"
