#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): seconds per epoch at batch 16 and 256 (eager, compiled,
# CUDA graphs), peak memory, time to 99.6% MNIST test accuracy. Under 8 minutes on a lent GPU:
#   EFFCN_DATA=.devdata bash benchmarks/gpu_check.sh --out $OUT/gpu_check.json
# On any machine: bash benchmarks/gpu_check.sh --smoke --data-root DIR
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} exec "$PY" benchmarks/gpu_check.py "$@"
