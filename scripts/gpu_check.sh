#!/usr/bin/env bash
# gpu_check.sh OUTDIR [--cpu] [--skip-build] [--pytest-args "ARGS"]
#
# Why: the only GPU evidence gankern has is what this script records on a CUDA machine. In one
# call, on a machine with NO network where torch, triton, pybind11, ninja, pytest and
# pytest-benchmark are already installed (older versions too, e.g. torch 2.11 / triton 3.6):
#   1. records the machine (nvidia-smi, versions)
#   2. builds gankern._C with its CUDA kernels for this GPU's architecture (setup.py build_ext --inplace)
#   3. runs the whole test suite on CUDA tensors (tests/conftest.py picks CUDA when present)
#   4. runs `gankern bench` (full) -> OUTDIR/bench.json, bench.png, bench.log (the table), and the
#      pytest-benchmark suite once as a smoke check
#   5. copies the JSON to OUTDIR/<date>-<gpu>.json, to be committed under benchmarks/results/
#   6. runs compute-sanitizer memcheck and racecheck over the CUDA backend's tests, if installed
# Every step logs to OUTDIR/<step>.log and has its own time limit, cut to what is left of a
# 570 s budget (GPU_CHECK_BUDGET_S); a failed step does not stop the later ones; the exit status is non-zero if any failed,
# and OUTDIR/summary.txt lists each step's result.
#
# --cpu        dry run without a GPU: same steps, CUDA-only ones skipped, bench --quick
# --skip-build use the gankern._C already built in the tree
# --pytest-args "ARGS"  what the test-suite step runs instead of "tests" (e.g. "-x tests/test_ema.py")
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

OUTDIR=""
CPU_MODE=0
SKIP_BUILD=0
PYTEST_EXTRA=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) CPU_MODE=1 ;;
        --skip-build) SKIP_BUILD=1 ;;
        --pytest-args) shift; PYTEST_EXTRA="${1:-}" ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_check: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) if [ -n "$OUTDIR" ]; then echo "gpu_check: one OUTDIR only" >&2; exit 2; fi; OUTDIR="$1" ;;
    esac
    shift
done
if [ -z "$OUTDIR" ]; then usage >&2; exit 2; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
FAILED=0
START=$(date +%s)

log() { printf '[gpu_check %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - START ))" "$*" | tee -a "$OUTDIR/gpu_check.log"; }

# The whole run must fit in 10 minutes: every step's limit is cut to what is left of the budget,
# and the steps run in order of what matters most (build, tests, bench, then sanitizers).
BUDGET_S="${GPU_CHECK_BUDGET_S:-570}"

# step NAME LIMIT_S CMD...: run CMD with a time limit, output to OUTDIR/NAME.log; record the result.
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$(( BUDGET_S - ($(date +%s) - START) ))
    if [ "$left" -lt 15 ]; then
        skip "$name" "out of the ${BUDGET_S}s budget"; FAILED=1; return 0
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    log "step $name (limit ${limit}s): $*"
    local t0 rc
    t0=$(date +%s)
    set +e
    timeout --kill-after=20 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
    rc=$?
    set -e
    local took=$(( $(date +%s) - t0 ))
    if [ "$rc" -eq 0 ]; then
        log "step $name: ok (${took}s)"
        echo "$name ok ${took}s" >> "$SUMMARY"
    else
        [ "$rc" -eq 124 ] && log "step $name: TIMED OUT after ${limit}s"
        log "step $name: FAILED rc=$rc (${took}s); last lines of $OUTDIR/$name.log:"
        tail -n 25 "$OUTDIR/$name.log" | sed 's/^/    /' | tee -a "$OUTDIR/gpu_check.log"
        echo "$name FAILED rc=$rc ${took}s" >> "$SUMMARY"
        FAILED=1
    fi
    return 0
}

skip() { log "step $1: skipped ($2)"; echo "$1 skipped ($2)" >> "$SUMMARY"; }

# -- 0. the machine ---------------------------------------------------------------------------
log "gankern gpu_check: root $ROOT, out $OUTDIR, python $(command -v "$PYTHON"), cpu mode $CPU_MODE"
if ! "$PYTHON" -c "import torch" > /dev/null 2>&1; then
    log "torch does not import with $PYTHON: nothing can run"; exit 1
fi
HAS_CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$HAS_CUDA" != "1" ] && [ "$CPU_MODE" != "1" ]; then
    log "torch sees no CUDA device; rerun with --cpu for a dry run without a GPU"; exit 1
fi
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "dirty: $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l) changed files"
    command -v nvidia-smi > /dev/null && nvidia-smi || echo "nvidia-smi: not found"
    command -v nvcc > /dev/null && nvcc --version || echo "nvcc: not on PATH"
    "$PYTHON" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton unavailable:", e)
for mod in ("pybind11", "ninja", "pytest", "pytest_benchmark"):
    try:
        m = __import__(mod); print(mod, getattr(m, "__version__", "?"))
    except Exception as e:
        print(mod, "MISSING:", e)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.1f} GiB")
EOF
} > "$OUTDIR/env.log" 2>&1 || true
sed 's/^/    /' "$OUTDIR/env.log" | grep -E 'python|triton|gpu |MISSING|Driver Version' | tee -a "$OUTDIR/gpu_check.log" || true

# -- 1. build -----------------------------------------------------------------------------------
if [ "$SKIP_BUILD" = "1" ]; then
    skip build "--skip-build"
else
    if [ "$HAS_CUDA" = "1" ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
        # Only this GPU's architecture: a third of the compile time of the default list.
        TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')")
        export TORCH_CUDA_ARCH_LIST
        # SASS for this GPU is what runs here; the PTX a user build embeds for newer GPUs
        # would only add compile time.
        export GANKERN_PTX=0
        log "building for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST (no PTX)"
    fi
    # A private object directory: another build in the same tree never races this one.
    step build 240 env GANKERN_BUILD_TEMP="$ROOT/build/gpu_check" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$PYTHON" setup.py build_ext --inplace
fi
if [ "$HAS_CUDA" = "1" ]; then
    step native_cuda 60 "$PYTHON" -c "
import torch, gankern
from gankern import _backend, _native
assert _native.load_error() is None, _native.load_error()
assert _native.cuda_compiled(), 'gankern._C was built without CUDA kernels (nvcc not found?)'
C = _native._load()
print('build:', C.cuda_build_info(), 'driver', C.cuda_driver_version(), 'probe', C.cuda_probe_current_device(),
      'capability', torch.cuda.get_device_capability())
assert _backend.usable('cuda', torch.device('cuda')), 'cuda backend not usable (see the warning above)'
print('gankern._C with CUDA kernels: ok;', 'runtime', _native._C.cuda_runtime_version())"
fi
step info 60 "$PYTHON" -m gankern info

# -- 2. the whole test suite --------------------------------------------------------------------
# shellcheck disable=SC2086  # PYTEST_EXTRA is a list of arguments on purpose
step tests 300 "$PYTHON" -m pytest -q -ra --junitxml="$OUTDIR/junit.xml" --durations=15 ${PYTEST_EXTRA:-tests}

# -- 3. the benchmark -----------------------------------------------------------------------------
BENCH_ARGS=(--json "$OUTDIR/bench.json" --plot "$OUTDIR/bench.png" --no-progress)
if [ "$CPU_MODE" = "1" ] && [ "$HAS_CUDA" != "1" ]; then BENCH_ARGS+=(--quick --device cpu); fi
# Exit status 1 when any implementation is WRONG or failed: that fails this step too.
step bench 300 "$PYTHON" -m gankern bench "${BENCH_ARGS[@]}"
step bench_pytest_smoke 120 "$PYTHON" -m pytest -q benchmarks --benchmark-disable -p no:cacheprovider

# -- 4. the results file --------------------------------------------------------------------------
if [ -s "$OUTDIR/bench.json" ]; then
    NAME=$("$PYTHON" -c "
import json, sys
from gankern.bench.report import result_filename
print(result_filename(json.load(open(sys.argv[1]))['environment']))" "$OUTDIR/bench.json")
    cp "$OUTDIR/bench.json" "$OUTDIR/$NAME"
    log "results: $OUTDIR/$NAME (commit it as benchmarks/results/$NAME)"
else
    log "no bench.json: the bench step failed before writing results"
    FAILED=1
fi

# -- 5. compute-sanitizer over the CUDA kernels' tests ------------------------------------------
SANITIZER=""
for cand in "$(command -v compute-sanitizer || true)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
            /usr/local/cuda/bin/compute-sanitizer; do
    if [ -n "$cand" ] && [ -x "$cand" ]; then SANITIZER="$cand"; break; fi
done
if [ "$HAS_CUDA" != "1" ]; then
    skip memcheck "no GPU"; skip racecheck "no GPU"
elif [ -z "$SANITIZER" ]; then
    skip memcheck "compute-sanitizer not found"; skip racecheck "compute-sanitizer not found"
else
    # The tests parametrized with the cuda backend; no caching allocator, so an out-of-bounds
    # access lands outside any allocation and memcheck sees it.
    SAN_TESTS=(-m pytest -q -x tests -k "cuda and not gradgradcheck and not hypothesis" -p no:cacheprovider)
    step memcheck 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 99 \
        --target-processes all "$PYTHON" "${SAN_TESTS[@]}"
    step racecheck 90 "$SANITIZER" --tool racecheck --error-exitcode 99 --target-processes all \
        "$PYTHON" "${SAN_TESTS[@]}"
fi

log "done in $(( $(date +%s) - START ))s; summary:"
sed 's/^/    /' "$SUMMARY" | tee -a "$OUTDIR/gpu_check.log"
exit "$FAILED"
