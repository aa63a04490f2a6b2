"""Which implementations of an op exist on a device, and which one a call uses.

Backends: "reference" (pure PyTorch, the definition), "triton" (GPU; CPU tensors only under
TRITON_INTERPRET=1, which is how the test suite runs it without a GPU), "cuda" (csrc/cuda)
and "cpu" (csrc/cpu). impl="auto" takes the first usable backend of the op's order for the
device; GANKERN_IMPL=<name> replaces "auto" everywhere (an explicit impl= still wins).
An explicit backend that is not usable raises ValueError; auto never picks an unusable one.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import torch

from . import _native

BACKENDS = ("reference", "triton", "cuda", "cpu")

# Test-only: the CUDA kernels' source run on CPU tensors by the host harness (issue 15,
# scripts/build_cuda_sim.py). Every op with a "cuda" backend has it when the harness is built;
# auto never picks it; an explicit impl="cuda_sim" (or GANKERN_IMPL) is the only way in.
TEST_BACKENDS = ("cuda_sim",)

# Auto order per device type. CPU: the native kernels beat the reference in every benchmark run
# so far (see README, CPU table); the Triton interpreter is a test vehicle, never a CPU choice.
# CUDA: native first, then Triton (order set from kernel design; not yet measured on a GPU).
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


# GANKERN_IMPL is read on every call (a user or a test may set it at any time). os.environ.get on
# an unset name raises and catches a KeyError inside: 0.7 us warm and several us with a cold
# cache, paid by every op call and twice by every fused layer pair on a CPU (measured: 32 us of
# a 360 us MLP critic forward). os.environ keeps its current contents in _data, keyed by
# encodekey(name), on every CPython; anything else falls back to os.environ.get.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("GANKERN_IMPL") if hasattr(os.environ, "encodekey") else None


def env_impl() -> str:
    """GANKERN_IMPL as it is now: "auto" when unset or empty."""
    if _ENV_DATA is not None and _ENV_KEY is not None:
        value = _ENV_DATA.get(_ENV_KEY)
        return (os.environ.decodevalue(value) or "auto") if value is not None else "auto"
    return os.environ.get("GANKERN_IMPL", "auto") or "auto"


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def usable(backend: str, device: torch.device) -> bool:
    if backend == "reference":
        return True
    if backend == "triton":
        if not triton_importable():
            return False
        if device.type == "cuda":
            return True
        return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if backend == "cuda":
        return device.type == "cuda" and _native.available("cuda", device)
    if backend == "cpu":
        return device.type == "cpu" and _native.available("cpu")
    if backend == "cuda_sim":
        return device.type == "cpu" and _native.available("cuda_sim")
    return False


def _implements(implemented: Iterable[str], backend: str) -> bool:
    return backend in implemented or (backend == "cuda_sim" and "cuda" in implemented)


def available(implemented: Iterable[str], device: torch.device) -> list[str]:
    return [b for b in implemented if usable(b, device)]  # cuda_sim only when asked for by name


def chosen_by_auto(impl: str) -> bool:
    """True when impl leaves the choice to gankern (impl="auto" and no GANKERN_IMPL): an op may
    then take a measured plain-PyTorch path where its kernel does not win. A backend named in
    the call or in GANKERN_IMPL always runs its kernels."""
    return impl == "auto" and env_impl() == "auto"


def resolve(impl, device: torch.device, implemented: Sequence[str] = BACKENDS, op: str = "op") -> str:
    """The backend name a call runs on; ValueError names the usable ones when impl is not."""
    if not isinstance(impl, str):
        raise TypeError(f"impl must be a str, got {type(impl).__name__}")
    requested = impl
    if impl == "auto":
        impl = env_impl()
    if impl == "auto":
        for backend in AUTO_ORDER.get(device.type, ("reference",)):
            if backend in implemented and usable(backend, device):
                return backend
        return "reference"
    if impl not in BACKENDS + TEST_BACKENDS:
        raise ValueError(f"impl must be 'auto' or one of {BACKENDS}, got {impl!r}"
                         + (" (from GANKERN_IMPL)" if requested == "auto" else ""))
    if not _implements(implemented, impl) or not usable(impl, device):
        ok = ", ".join(available(implemented, device))
        why = "" if _implements(implemented, impl) else f" ({op} has no {impl} implementation)"
        src = " (from GANKERN_IMPL)" if requested == "auto" else ""
        raise ValueError(f"impl={impl!r}{src} is not available for {op} on {device}{why}; available: {ok}")
    return impl
