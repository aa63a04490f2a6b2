"""`gankern info`: what this installation can run, so a user can see why auto picked a backend."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess

import torch

from . import _backend, _native


def collect() -> dict:
    info = {
        "gankern": __import__("gankern").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": None,
        "nvcc": None,
        "native_extension": "loaded" if _native.load_error() is None else f"missing ({_native.load_error()})",
        "cuda_kernels_compiled": _native.cuda_compiled(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "GANKERN_IMPL": os.environ.get("GANKERN_IMPL"),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:
        info["triton"] = f"unavailable ({type(e).__name__})"
    nvcc = shutil.which("nvcc")
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        info["nvcc"] = out[-1] if out else nvcc
    if _native.cuda_compiled() and torch.cuda.is_available():
        info["cuda_runtime_linked"] = _native._C.cuda_runtime_version()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    info["backends"] = {d.type: {b: _backend.usable(b, d) for b in _backend.BACKENDS} for d in devices}
    info["auto"] = {d.type: _backend.resolve("auto", d) for d in devices}
    return info


def configure(parser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "backends":
            for dev, flags in value.items():
                usable = ", ".join(b for b, ok in flags.items() if ok)
                print(f"{'backends (' + dev + ')':<24} {usable}")
        else:
            print(f"{key:<24} {value}")
    return 0
