"""Can this build's CUDA kernels run on this GPU and driver? Asked before the cuda backend is used.

Why: the fatbin holds SASS for some compute capabilities (sm_80, sm_90) and PTX for the newest
one. A GPU of another major version with no PTX at or below its capability, or a driver older
than the CUDA runtime the kernels were built with (or than the PTX it must JIT), fails every
launch ("no kernel image is available", "driver version is insufficient"). Checking once per
device here lets impl="auto" fall back to Triton with one warning, instead of picking cuda and
failing inside a training step. On a real GPU the answer also comes from the driver itself: a
probe asks cudaFuncGetAttributes of a tiny kernel, which fails exactly when the kernels cannot load.

The device query is four small functions (_build_info, _capability, _driver_version, _probe)
so tests can fake a GPU on a CPU-only machine.
"""

from __future__ import annotations

import warnings

import torch

_verdicts: dict = {}  # device index -> (ok, reason); one check and at most one warning each


def _build_info(C) -> dict:
    return C.cuda_build_info()


def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _driver_version(C) -> int:
    return C.cuda_driver_version()


def _probe(C, index: int) -> int:
    with torch.cuda.device(index):
        return C.cuda_probe_current_device()


def _archs(text: str) -> list[int]:
    return [int(a.rstrip("a")) for a in text.split(",") if a.strip()]


def _fmt(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def check(info: dict, capability: tuple[int, int], driver: int) -> tuple[bool, str]:
    """(runnable, why not) from what the fatbin holds, the GPU's capability and the driver.

    SASS of sm_XY runs on sm_XZ for Z >= Y (same major); PTX of compute_XY is JIT-compiled for
    any GPU of capability >= XY, by a driver at least as new as the toolkit that wrote it. A
    driver of an older CUDA major version than the runtime cannot run it at all.
    """
    cc = capability[0] * 10 + capability[1]
    built = int(info["runtime_version"])
    sass = [a for a in _archs(info["sass"]) if a // 10 == capability[0] and a <= cc]
    ptx = [a for a in _archs(info["ptx"]) if a <= cc]
    if driver <= 0:
        return False, "no CUDA driver found"
    if driver // 1000 < built // 1000:
        return False, (f"the driver supports CUDA {_fmt(driver)}, older than the CUDA {_fmt(built)} "
                       "runtime the kernels were built with")
    if sass:
        return True, ""
    if not ptx:
        return False, (f"no kernel image for sm_{cc}: built with SASS for sm_{info['sass'] or '-'} and "
                       f"PTX for compute_{info['ptx'] or '-'}; rebuild with TORCH_CUDA_ARCH_LIST including "
                       f"{capability[0]}.{capability[1]}")
    if driver < built:
        return False, (f"sm_{cc} needs the PTX JIT-compiled, and the driver (CUDA {_fmt(driver)}) is older "
                       f"than the toolkit that wrote it (CUDA {_fmt(built)})")
    return True, ""


def runnable(C, device=None) -> bool:
    """Whether gankern's CUDA kernels can run on `device` (default: the current one); warns once
    per device when they cannot (auto then falls back to Triton)."""
    index = torch.cuda.current_device() if device is None or device.index is None else device.index
    verdict = _verdicts.get(index)
    if verdict is None:
        try:
            ok, why = check(_build_info(C), _capability(index), _driver_version(C))
            if ok:
                code = _probe(C, index)
                if code != 0:
                    ok, why = False, f"the driver cannot load the kernels (cudaError {code})"
        except Exception as e:  # an old extension without the query, a driver error: not runnable
            ok, why = False, f"cannot check the CUDA build against this GPU ({type(e).__name__}: {e})"
        verdict = _verdicts[index] = (ok, why)
        if not ok:
            warnings.warn(f"gankern: the cuda backend cannot run on cuda:{index} ({why}); "
                          "impl='auto' uses Triton instead", RuntimeWarning, stacklevel=3)
    return verdict[0]
