#!/usr/bin/env bash
# Run the tests of the native CPU kernels under AddressSanitizer (issue 8: memory safety).
# The ASan build goes into a private copy of the tree, so the normal gankern._C in place stays
# loadable by everyone else. Usage: scripts/asan_test.sh [pytest args]  (default: the tests that
# exercise the cpu backend). Needs the .venv of scripts/setup_env.sh and gcc's libasan.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/private_copy.sh
. scripts/lib/private_copy.sh gankern-asan
cd "$WORK"
echo "== ASan build in $WORK"
GANKERN_SKIP_CUDA=1 GANKERN_BUILD_TEMP="$WORK/build/asan" \
  GANKERN_CXXFLAGS="-fsanitize=address -fno-omit-frame-pointer -O1 -g" GANKERN_LDFLAGS="-fsanitize=address" \
  python setup.py -q build_ext --inplace
LIBASAN=$(g++ -print-file-name=libasan.so)
# Leak checking is off: CPython and torch keep allocations alive at exit by design.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export PYTHONPATH="$WORK"
loaded=$(LD_PRELOAD="$LIBASAN" python -c "import gankern._C as c; print(c.__file__)")
case "$loaded" in "$WORK"/*) echo "== testing $loaded" ;; *) echo "ASan build not loaded: $loaded" >&2; exit 1 ;; esac
# Left out: tests that raise a Python exception inside a custom op or autograd's C++ backward on
# purpose (bad-input checks, costs_nothing), and opcheck, which does so internally. Under an LD_PRELOADed ASan runtime an exception
# unwinding through torch's C++ dispatcher aborts the interpreter, with no ASan report and no
# gankern kernel involved. They test Python checks, not kernel memory, and run in the suite.
SELECT="cpu and not compile and not costs_nothing and not bad and not reject and not raise and not alias and not checks and not opcheck"
if [ $# -eq 0 ]; then set -- -q -n 2 tests -k "$SELECT" -p no:cacheprovider; fi
echo "== pytest under ASan: $*"
LD_PRELOAD="$LIBASAN" python -m pytest "$@"
