#!/usr/bin/env bash
# Idempotent set-up shared by the README's two commands: a .venv with torch, the tools and
# gankern built in place (C++ kernels; CUDA kernels too for a CUDA torch or GANKERN_BUILD_CUDA=1).
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
# `setup_env.sh run` (the demo) installs the runtime requirements only; the default, the tests', all.
if [ "${1:-dev}" = run ]; then
  need="pybind11, ninja, tqdm, matplotlib, PIL"; reqs=requirements-run.txt
else
  need="pytest, xdist, pybind11, ninja, hypothesis, sklearn, matplotlib, ema_pytorch"; reqs=requirements-dev.txt
fi
if ! python -c "import $need" 2>/dev/null; then
  echo "== installing $reqs"
  python -m pip install -q -r "$reqs"
fi
echo "== building gankern (native kernels)"
python -m pip install -q --no-build-isolation --no-deps -e .
