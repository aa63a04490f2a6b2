#!/usr/bin/env bash
# The CUDA kernels' source (csrc/cuda) run on CPU tensors by the host harness (issue 15), under
# AddressSanitizer (out-of-bounds and use-after-free, what compute-sanitizer memcheck finds) and
# ThreadSanitizer (races between the threads of a block or between blocks, what racecheck finds).
# Builds go into a private copy of the tree, so the in-place modules stay loadable by everyone.
# Usage: scripts/sanitize_cuda_sim.sh  (needs the .venv of scripts/setup_env.sh, gcc's libasan
# and libtsan). GANKERN_SIM_FULL=1 runs every cuda_sim test under each sanitizer (slow).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/private_copy.sh
. scripts/lib/private_copy.sh gankern-simsan
# The plain gankern._C (CPU kernels) comes along so the suite imports as usual; the harness
# module is built below, once per sanitizer.
cp "$ROOT"/gankern/_C*.so "$WORK/gankern/" 2>/dev/null || true
cd "$WORK"
export PYTHONPATH="$WORK" OMP_NUM_THREADS=1
# Left out, as in scripts/asan_test.sh: tests that raise through torch's C++ dispatcher on
# purpose (an LD_PRELOADed sanitizer runtime aborts the interpreter there, with no report).
# They check Python argument checks, which run before any pointer reaches the harness.
NOT_RAISING="not compile and not costs_nothing and not bad and not reject and not raise and not alias and not checks and not opcheck"
# The op tests drive every launcher (tests/test_cuda_sim_mutants.py shows each one is needed);
# the module, conformance and training tests repeat the same kernels on larger models.
OP_TESTS="tests/test_bias_act.py tests/test_norm_penalty.py tests/test_spectral_norm_ops.py tests/test_ema_op.py tests/test_ema_multi_op.py tests/test_fuzz_ops.py tests/test_launch_shapes.py"
# TSan: the kernels with block-level cooperation (shared memory, barriers, shuffles) are
# norm_penalty's and spectral norm's; EMA's run too, for races between blocks. bias_act is a
# grid-stride elementwise kernel (ASan checks its indexing). gradcheck, fuzz and opcheck repeat
# the same launches thousands of times, which costs minutes under TSan and finds nothing new.
TSAN_TESTS="tests/test_norm_penalty.py tests/test_spectral_norm_ops.py tests/test_ema_op.py tests/test_ema_multi_op.py tests/test_launch_shapes.py"
TSAN_SELECT="cuda_sim and not gradcheck and not opcheck and not compile and not fuzz"
if [ "${GANKERN_SIM_FULL:-0}" = 1 ]; then OP_TESTS=tests TSAN_TESTS=tests TSAN_SELECT=cuda_sim; fi
loaded_from_work() {
  local where
  where=$(python -c "import gankern._cuda_sim._C as c; print(c.__file__)")
  case "$where" in "$WORK"/*) echo "== testing $where" ;; *) echo "harness build not loaded: $where" >&2; exit 1 ;; esac
}

echo "== ASan build of the CUDA host harness in $WORK"
python scripts/build_cuda_sim.py --sanitize address --build-dir "$WORK/build/sim_san"
LIBASAN=$(g++ -print-file-name=libasan.so)
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
LD_PRELOAD="$LIBASAN" loaded_from_work
# shellcheck disable=SC2086
LD_PRELOAD="$LIBASAN" python -m pytest -q -n 2 --capture=sys -p no:cacheprovider $OP_TESTS -k "cuda_sim and $NOT_RAISING"
unset ASAN_OPTIONS

echo "== TSan build of the CUDA host harness"
python scripts/build_cuda_sim.py --sanitize thread --build-dir "$WORK/build/sim_san"
LIBTSAN=$(g++ -print-file-name=libtsan.so)
# Two workers: blocks run on two OS threads, so blocks that write the same memory race too.
# Only the harness's kernels are instrumented: torch and Python run unchecked.
export TSAN_OPTIONS="halt_on_error=1:exitcode=66:report_signal_unsafe=0" GANKERN_SIM_WORKERS=2
LD_PRELOAD="$LIBTSAN" loaded_from_work
# Tests that raise through torch's dispatcher run fine under TSan, so they stay in.
# shellcheck disable=SC2086
LD_PRELOAD="$LIBTSAN" python -m pytest -q -n 2 --capture=sys -p no:cacheprovider $TSAN_TESTS -k "$TSAN_SELECT"
