"""The CUDA build is IEEE with SASS for sm_80/sm_90 and PTX for newer GPUs, and a GPU or driver
the kernels cannot run on makes impl="auto" fall back to Triton with one warning.

The fallback tests fake the device query (capability, driver, build info, the driver's probe)
on a CPU-only machine; the build tests read the fatbin of the extension built here.
"""

import glob
import os
import subprocess
import warnings

import pytest
import torch

from gankern import _backend, _cuda_compat, _native

INFO = {"sass": "80,90", "ptx": "90", "runtime_version": 13000}


@pytest.mark.parametrize("cc,driver,ok", [
    ((8, 0), 13000, True),    # SASS sm_80
    ((8, 6), 13000, True),    # sm_80 SASS runs on sm_86 (same major, newer minor)
    ((8, 9), 13020, True),
    ((9, 0), 13000, True),    # SASS sm_90
    ((10, 0), 13000, True),   # no SASS: PTX compute_90 JIT-compiled by a new enough driver
    ((12, 0), 13010, True),
    ((10, 0), 12090, False),  # driver of an older CUDA major than the runtime
    ((9, 0), 12080, False),
    ((7, 5), 13000, False),   # older than every SASS and the PTX: no kernel image
    ((8, 0), 0, False),       # no driver
])
def test_check_decides_from_capability_and_driver(cc, driver, ok):
    runnable, why = _cuda_compat.check(INFO, cc, driver)
    assert runnable is ok
    assert (why == "") is ok


def test_ptx_only_needs_a_driver_as_new_as_the_toolkit():
    info = {"sass": "80,90", "ptx": "90", "runtime_version": 13020}
    runnable, why = _cuda_compat.check(info, (10, 0), 13010)
    assert not runnable and "older than the toolkit" in why
    assert _cuda_compat.check(info, (9, 0), 13010)[0]  # SASS: the same major driver is enough
    assert not _cuda_compat.check({"sass": "80,90", "ptx": "", "runtime_version": 13000}, (10, 0), 13000)[0]


class _FakeC:
    cuda_compiled = True


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of a chosen capability/driver/probe result, on a CPU-only machine."""
    state = {"cc": (9, 0), "driver": 13000, "probe": 0, "probes": 0}

    def probe(C, index):
        state["probes"] += 1
        return state["probe"]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(_native, "_load", lambda: _FakeC)
    monkeypatch.setattr(_cuda_compat, "_build_info", lambda C: INFO)
    monkeypatch.setattr(_cuda_compat, "_capability", lambda index: state["cc"])
    monkeypatch.setattr(_cuda_compat, "_driver_version", lambda C: state["driver"])
    monkeypatch.setattr(_cuda_compat, "_probe", probe)
    monkeypatch.setattr(_cuda_compat, "_verdicts", {})
    monkeypatch.delenv("GANKERN_IMPL", raising=False)
    return state


def _auto(device="cuda:0"):
    return _backend.resolve("auto", torch.device(device), _backend.BACKENDS, op="test")


def test_auto_picks_cuda_when_the_kernels_can_run(fake_gpu):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _auto() == "cuda"
    assert fake_gpu["probes"] == 1


@pytest.mark.parametrize("cc,driver,probe,reason", [
    ((10, 0), 12080, 0, "older than the CUDA 13.0 runtime"),
    ((7, 5), 13000, 0, "no kernel image for sm_75"),
    ((9, 0), 13000, 209, "cudaError 209"),  # the driver's own answer wins over the static check
])
def test_auto_falls_back_to_triton_and_warns_once(fake_gpu, cc, driver, probe, reason):
    fake_gpu.update(cc=cc, driver=driver, probe=probe)
    with pytest.warns(RuntimeWarning, match=reason):
        assert _auto() == "triton"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per device: the second call is silent
        assert _auto() == "triton"
        assert _auto("cuda") == "triton"
    with pytest.raises(ValueError, match="impl='cuda' is not available"):
        _backend.resolve("cuda", torch.device("cuda:0"), _backend.BACKENDS, op="test")


def test_each_device_is_checked_on_its_own(fake_gpu, monkeypatch):
    monkeypatch.setattr(_cuda_compat, "_capability", lambda index: (9, 0) if index == 0 else (7, 5))
    assert _auto("cuda:0") == "cuda"
    with pytest.warns(RuntimeWarning, match="cuda:1"):
        assert _auto("cuda:1") == "triton"


def test_a_query_that_fails_means_not_runnable(fake_gpu, monkeypatch):
    def broken(C):
        raise AttributeError("cuda_build_info")

    monkeypatch.setattr(_cuda_compat, "_build_info", broken)
    with pytest.warns(RuntimeWarning, match="cannot check"):
        assert _auto() == "triton"


# -- the fatbin of the extension built here ------------------------------------------------------
def _cuobjdump():
    """The cuobjdump Triton ships (found the same way as scripts/aot_compile.py does)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import aot_compile

    return aot_compile._cuobjdump()


needs_cuda_build = pytest.mark.skipif(not _native.cuda_compiled(), reason="built without CUDA (GANKERN_BUILD_CUDA=1)")


@needs_cuda_build
def test_build_info_reports_sass_and_ptx():
    info = _native._load().cuda_build_info()
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):  # the default build
        assert _cuda_compat._archs(info["sass"]) == [80, 90]
    assert _cuda_compat._archs(info["ptx"]), "no PTX: GPUs newer than the SASS would get no kernel"
    assert info["runtime_version"] >= 11000


@needs_cuda_build
def test_fatbin_holds_sass_for_sm80_sm90_and_ptx_of_every_cuda_file():
    so = _native._load().__file__
    listing = subprocess.run([_cuobjdump(), "-lelf", "-lptx", so], capture_output=True, text=True, check=True).stdout
    sources = [os.path.basename(f)[:-3] for f in glob.glob(os.path.join(os.path.dirname(__file__), "..", "csrc", "cuda", "*.cu"))]
    assert sources
    for src in sources:
        assert f"{src}.sm_80.cubin" in listing, src
        assert f"{src}.sm_90.cubin" in listing, src
        assert f"{src}.sm_90.ptx" in listing, src


@needs_cuda_build
def test_cuda_kernels_are_ieee_no_fast_math(tmp_path):
    """--use_fast_math shows in the SASS: tanhf becomes MUFU.TANH and float math gets .FTZ
    (flush denormals) on FFMA/FMUL; an IEEE build has neither in bias_act (tanh, exp, sigmoid)."""
    so = _native._load().__file__
    subprocess.run([_cuobjdump(), "-xelf", "bias_act.sm_90.cubin", so], cwd=tmp_path, check=True, capture_output=True)
    cubins = glob.glob(str(tmp_path / "*bias_act*.cubin"))
    assert cubins
    sass = subprocess.run([_cuobjdump(), "-sass", cubins[0]], capture_output=True, text=True, check=True).stdout
    assert "MUFU.EX2" in sass  # the exp is there, so the check below looks at real math
    assert "MUFU.TANH" not in sass
    assert "FFMA.FTZ" not in sass
