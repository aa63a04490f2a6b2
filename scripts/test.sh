#!/usr/bin/env bash
# The README's test command: set-up, then the whole test suite. Without a GPU the Triton kernels
# run under TRITON_INTERPRET=1 (tests/conftest.py); with one, everything runs on CUDA tensors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m gankern info
exec python -m pytest -q tests "$@"
