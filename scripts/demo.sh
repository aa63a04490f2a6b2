#!/usr/bin/env bash
# The README's main-job command: set-up, then `gankern demo` (a GAN on the 8-Gaussian ring,
# through the fused ops, on the CPU by default).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh run   # runtime requirements only: no triton or test tools
# shellcheck disable=SC1091
. .venv/bin/activate
python -m gankern info
exec python -m gankern demo "$@"
