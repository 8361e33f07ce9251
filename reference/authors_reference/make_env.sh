#!/usr/bin/env bash
# Create the isolated virtual environment in which the Efficient-CapsNet authors' own
# TensorFlow code (EscVM/Efficient-CapsNet @ 4b337f5) is run to produce the reference
# fixtures in tests/fixtures/authors/.  Nothing here touches the project's own .venv.
#
# usage: reference/authors_reference/make_env.sh [VENV_DIR]
#   VENV_DIR defaults to $EFFCN_AUTHORS_VENV or ~/.cache/effcn-authors-ref/venv
#   PYTHON (env) selects the interpreter (must be 3.9-3.11 for TensorFlow 2.15).
set -euo pipefail

VENV="${1:-${EFFCN_AUTHORS_VENV:-$HOME/.cache/effcn-authors-ref/venv}}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x /root/.pyenv/versions/3.11.7/bin/python3 ]; then
        PYTHON=/root/.pyenv/versions/3.11.7/bin/python3
    else
        PYTHON=python3.11
    fi
fi

"$PYTHON" -c 'import sys; assert (3, 9) <= sys.version_info[:2] <= (3, 11), sys.version' \
    || { echo "need Python 3.9-3.11 for tensorflow 2.15 (set PYTHON=...)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi

"$VENV/bin/python" -m pip install --quiet --upgrade "pip==24.0"

# The authors' requirements.txt lists, unpinned: numpy pandas tensorflow-addons opencv-python
# tqdm tensorflow matplotlib pytest jupyter tensorflow-datasets.  Their modules import, at
# import time of `models` / `utils`: tensorflow, tensorflow_addons, tensorflow_datasets, cv2,
# numpy, matplotlib, pandas, ipywidgets, tqdm(.notebook).  We pin the versions below
# (CPU-only TensorFlow, headless OpenCV; jupyter and pytest are not needed to run the code).
# tensorflow-metadata/protobuf/etils/array-record are pinned because the newest
# tensorflow-metadata needs protobuf>=5, which TensorFlow 2.15 cannot use.
"$VENV/bin/python" -m pip install --quiet \
    "tensorflow-cpu==2.15.1" \
    "tensorflow-addons==0.23.0" \
    "tensorflow-datasets==4.9.4" \
    "tensorflow-metadata==1.15.0" \
    "protobuf==4.25.3" \
    "etils==1.7.0" \
    "array-record==0.5.1" \
    "numpy==1.26.4" \
    "opencv-python-headless==4.9.0.80" \
    "matplotlib==3.8.4" \
    "pandas==2.2.2" \
    "tqdm==4.66.4" \
    "ipywidgets==8.1.2"

"$VENV/bin/python" - <<'PY'
import numpy, tensorflow as tf, keras, tensorflow_addons as tfa, cv2
import tensorflow_datasets, matplotlib, pandas, ipywidgets, tqdm.notebook  # imported by their utils/
print("numpy", numpy.__version__, "| tensorflow", tf.__version__, "| keras", keras.__version__,
      "| tfa", tfa.__version__, "| cv2", cv2.__version__)
PY
echo "venv ready: $VENV"
