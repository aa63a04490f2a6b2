#!/usr/bin/env bash
# The README's test command: set-up, then the whole test suite. Without a GPU the Triton kernels
# run under TRITON_INTERPRET=1 (tests/conftest.py); with one, everything runs on CUDA tensors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# The CUDA kernels' source built as host C++ (issue 15): tests/conftest.py then runs every op's
# tests on impl="cuda_sim" too. Test-only; never part of a user build. GANKERN_NO_CUDA_SIM=1 skips it.
if [ "${GANKERN_NO_CUDA_SIM:-0}" != "1" ]; then
  echo "== building the CUDA host harness (test backend cuda_sim)"
  python scripts/build_cuda_sim.py
fi
python -m gankern info
# Two worker processes by default (GANKERN_TEST_WORKERS=0 runs in this one): most of the suite's
# time is the Triton interpreter and autograd bookkeeping, single-threaded Python, so on 2 cores two
# workers take half the time; tests/conftest.py gives each worker its share of torch's threads.
exec python -m pytest -q -n "${GANKERN_TEST_WORKERS:-2}" tests "$@"
