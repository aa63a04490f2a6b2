"""`gankern info` and the build: the CPU kernels load, and nvcc-compiled CUDA kernels link."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from gankern import _info, _native


def test_info_json_reports_backends():
    out = subprocess.run([sys.executable, "-m", "gankern", "info", "--json"], capture_output=True,
                         text=True, check=True).stdout
    info = json.loads(out)
    assert info["torch"] and "cpu" in info["backends"]
    assert info["backends"]["cpu"]["reference"] is True
    assert info["backends"]["cpu"]["cpu"] == _native.available("cpu")


def test_cpu_kernels_are_built():
    if os.environ.get("GANKERN_SKIP_NATIVE") == "1":
        pytest.skip("built with GANKERN_SKIP_NATIVE=1 on purpose")
    assert _native.load_error() is None, _native.load_error()
    assert _native.available("cpu")


def test_cuda_kernels_compiled_whenever_nvcc_exists_and_cuda_is_wanted():
    # setup.py runs nvcc only for a CUDA torch or with GANKERN_BUILD_CUDA=1 (CI sets it).
    if os.environ.get("GANKERN_SKIP_NATIVE") == "1" or os.environ.get("GANKERN_SKIP_CUDA") == "1":
        pytest.skip("native or CUDA build skipped on purpose")
    if not shutil.which("nvcc") and not os.path.exists("/usr/local/cuda/bin/nvcc"):
        pytest.skip("no nvcc on this machine")
    if torch.version.cuda is None and os.environ.get("GANKERN_BUILD_CUDA") != "1":
        pytest.skip("CPU-only torch without GANKERN_BUILD_CUDA=1: the user build skips nvcc")
    assert _native.cuda_compiled(), "nvcc is present but the CUDA kernels were not compiled into _C"


def test_info_table_prints(capsys):
    class Args:
        json = False

    assert _info.main(Args()) == 0
    assert "backends (cpu)" in capsys.readouterr().out
