#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): effcn eager vs the whole-step CUDA graph at batch 16,
# 32 and 256 (seconds per epoch, peak memory, kernels per step, busy fraction), time to 99.6%
# validation-selected test accuracy, configs/mnist_long_cpu.yaml end to end, effcn sweep
# --workers N against one seed, the two public ports (.devdata/peers/). Under 8 minutes:
#   bash benchmarks/gpu_check.sh --data-root .devdata/mnist --out $OUT/gpu_check.json | tee $OUT/gpu_check.log
# On any machine: bash benchmarks/gpu_check.sh --smoke --data-root DIR
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} exec "$PY" benchmarks/gpu_check.py "$@"
