"""Tests of the CUDA host harness itself (csrc/include/gankern/cuda_sim.h, issue 15).

The op tests run csrc/cuda through the harness as impl="cuda_sim"; these check that the harness
is worth trusting: it computes what CUDA's definitions say (warp shuffles and votes, barriers,
built-in indices), refuses what CUDA leaves undefined (a deadlock, a mask without the caller,
an exited lane in a mask, a block over 1024 threads), and, built with a sanitizer, reports the
two bug classes compute-sanitizer exists for: ThreadSanitizer a block reduction missing its
__syncthreads() (racecheck) and AddressSanitizer a store one past the end (memcheck). Each bug
has its correct twin, which must run clean, so a report is never noise.
The probe kernels are tests/cuda_sim/harness_probe.cu, compiled here with the host compiler.
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "tests", "cuda_sim", "harness_probe.cu")
CXX = os.environ.get("CXX", "g++")

pytestmark = pytest.mark.skipif(shutil.which(CXX) is None or not sys.platform.startswith("linux"),
                                reason="needs a host C++ compiler on Linux (the harness's fibers)")


def _build(tmp_path_factory, name, flags):
    out = str(tmp_path_factory.mktemp("probe") / name)
    cmd = [CXX, "-std=c++17", "-O1", "-g", "-x", "c++", "-DGANKERN_CUDA_SIM",
           f"-I{os.path.join(ROOT, 'csrc', 'sim')}", f"-I{os.path.join(ROOT, 'csrc', 'include')}",
           "-pthread", *flags, PROBE, "-o", out]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        if flags and "sanitize" in " ".join(flags) and "cannot find" in result.stderr:
            pytest.skip(f"{CXX} has no {flags[0]} runtime")
        raise AssertionError(result.stderr)
    return out


def _run(exe, mode, **env):
    # Never inherit a preloaded sanitizer runtime (the suite may itself run under one).
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "TSAN_OPTIONS")}
    return subprocess.run([exe, mode], capture_output=True, text=True, timeout=120, env={**base, **env})


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return _build(tmp_path_factory, "plain", [])


@pytest.fixture(scope="module")
def probe_tsan(tmp_path_factory):
    return _build(tmp_path_factory, "tsan", ["-fsanitize=thread"])


@pytest.fixture(scope="module")
def probe_asan(tmp_path_factory):
    return _build(tmp_path_factory, "asan", ["-fsanitize=address", "-fno-omit-frame-pointer"])


@pytest.mark.parametrize("mode", ["warp", "indices", "rounds", "reduce", "store"])
def test_harness_computes_cuda_semantics(probe, mode):
    # warp: shfl up/down/xor/idx (width 32 and 8, int and double), ballot/any/all against the
    # programming guide's formulas; indices: a 3-D grid of 3-D blocks; rounds: 10 barriers.
    r = _run(probe, mode)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("mode", ["deadlock", "mask_without_self", "exited_lane", "bad_block"])
def test_harness_fails_the_launch_on_undefined_behaviour(probe, mode):
    # The probe exits 0 only when the launch failed with the expected cudaError and message.
    r = _run(probe, mode)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "error" in r.stdout


def test_missing_barrier_gives_a_wrong_sum_without_sanitizer(probe):
    # The schedule alone exposes it: thread 0 sums the partials before the others wrote theirs.
    r = _run(probe, "reduce_no_barrier")
    assert r.returncode == 3, r.stdout + r.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_tsan_reports_a_reduction_missing_syncthreads(probe_tsan, workers):
    opts = {"TSAN_OPTIONS": "halt_on_error=1:exitcode=66", "GANKERN_SIM_WORKERS": workers}
    clean = _run(probe_tsan, "reduce", **opts)
    assert clean.returncode == 0 and "ThreadSanitizer" not in clean.stderr, clean.stderr
    racy = _run(probe_tsan, "reduce_no_barrier", **opts)
    assert racy.returncode == 66, racy.stdout + racy.stderr
    assert "WARNING: ThreadSanitizer: data race" in racy.stderr
    assert "block_sum" in racy.stderr  # the report names the kernel, as racecheck would


@pytest.mark.parametrize("mode", ["rounds", "warp", "indices"])
def test_tsan_is_quiet_on_correct_kernels(probe_tsan, mode):
    # Barriers are the only happens-before edges; correct kernels must not be reported.
    r = _run(probe_tsan, mode, TSAN_OPTIONS="halt_on_error=1:exitcode=66", GANKERN_SIM_WORKERS="2")
    assert r.returncode == 0 and "ThreadSanitizer" not in r.stderr, r.stderr


def test_asan_reports_a_store_one_past_the_end(probe_asan):
    opts = {"ASAN_OPTIONS": "detect_leaks=0"}
    clean = _run(probe_asan, "store", **opts)
    assert clean.returncode == 0 and "AddressSanitizer" not in clean.stderr, clean.stderr
    bad = _run(probe_asan, "store_past_end", **opts)
    assert bad.returncode != 0
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in bad.stderr
    assert "WRITE of size 4" in bad.stderr and " in scale " in bad.stderr


@pytest.mark.parametrize("mode", ["reduce", "rounds", "warp", "deadlock"])
def test_asan_is_quiet_on_fiber_switches(probe_asan, mode):
    # The fiber stacks are announced to ASan, so switching between them is not an error.
    r = _run(probe_asan, mode, ASAN_OPTIONS="detect_leaks=0")
    assert r.returncode == 0 and "AddressSanitizer" not in r.stderr, r.stderr
