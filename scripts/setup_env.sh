#!/usr/bin/env bash
# Idempotent set-up shared by the README's two commands: a .venv with torch, the dev tools and
# gankern built in place (C++ kernels, plus CUDA kernels whenever nvcc is found).
# torch is installed on its own, pinned, so that no other requirement can resolve to a
# several-GB CUDA build: on this project's machines `pip install torch==2.13.0` takes a local
# CPU wheel. GANKERN_TORCH overrides the spec; a torch already importable is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  echo "== installing ${GANKERN_TORCH:-torch==2.13.0}"
  python -m pip install -q "${GANKERN_TORCH:-torch==2.13.0}"
fi
if ! python -c "import pytest, pybind11, ninja, hypothesis, sklearn, matplotlib" 2>/dev/null; then
  echo "== installing dev requirements"
  python -m pip install -q -r requirements-dev.txt
fi
echo "== building gankern (native kernels)"
python -m pip install -q --no-build-isolation --no-deps -e .
