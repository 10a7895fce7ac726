#!/usr/bin/env bash
# Install qframe and everything it needs into the current Python environment.
#   bash scripts/install.sh
# torch is pinned to the CPU wheel these machines carry (an unpinned torch pulls a
# multi-GB CUDA build); the packages themselves accept a range.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" -m pip install --upgrade pip >/dev/null
"$PY" -m pip install "torch==2.13.0"
# build tools for the march extensions (built without isolation so they see qframe-core's headers)
"$PY" -m pip install "setuptools>=68" wheel "pybind11>=2.11"
"$PY" -m pip install "pluggy>=1.3" "attrs>=22.2" "numpy>=1.24" "tabulate>=0.9" "tqdm>=4.60" \
    "scikit-learn>=1.2" "onnx>=1.14" "pytest>=7" "hypothesis>=6" "ruff==0.17.6"
"$PY" -m pip install --no-build-isolation -e ./qframe_core
"$PY" -m pip install --no-build-isolation -e ./qframe_observers -e ./qframe_profiler
"$PY" -m pip install --no-build-isolation -e ./qframe_march_bernoulli2 -e ./qframe_march_bayes
"$PY" -m pip install --no-build-isolation --no-deps -e .
