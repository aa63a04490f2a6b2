"""What machine a benchmark ran on, and how fast it can move memory.

A benchmark number means nothing without the machine, the versions and the commit beside it,
so every JSON the suite writes carries `environment()`. The bandwidth measured here is the
floor every memory-bound case is held against (% of floor), taken once per run on the same
device, with a plain large copy: the fastest thing the framework itself can do.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import statistics
import subprocess
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> dict:
    """The commit measured, and whether the tree had uncommitted changes (then the commit alone
    does not reproduce the number)."""
    if not shutil.which("git"):
        return {"commit": None, "dirty": None}
    commit = _run(["git", "rev-parse", "HEAD"])
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def cpu_info() -> dict:
    model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"model": model, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine()}


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def gpu_driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_info()["model"] or "cpu"


def environment(device: torch.device) -> dict:
    from .. import __version__, _native

    try:
        import triton

        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001 - any import failure means "no triton here"
        triton_version = f"unavailable ({type(e).__name__})"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_commit(),
        "device": {"type": device.type, "name": device_name(device)},
        "driver": gpu_driver(),
        "cuda_runtime": torch.version.cuda,
        "gankern": __version__,
        "native_extension": _native.load_error() is None,
        "cuda_kernels_compiled": _native.cuda_compiled(),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        # Other processes share the cores: a load above the core count means noisy medians.
        "loadavg_1m": load_average(),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "GANKERN_IMPL": os.environ.get("GANKERN_IMPL"),
    }


def measure_bandwidth(device: torch.device, nbytes: int | None = None) -> float:
    """Achieved bytes/s of one large tensor copy (bytes read + bytes written): GPU the median
    of event-timed runs, CPU the fastest of a few (other processes steal a shared CPU). Big enough to leave every cache: 256 MiB per buffer on CPU, 1 GiB on a GPU."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    moved = 2 * src.numel() * src.element_size()
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
            return moved / (ms * 1e-3)
        except ImportError:
            pass
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        for _ in range(10):
            start.record()
            dst.copy_(src)
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end) * 1e-3)
        return moved / statistics.median(samples[2:])
    dst.copy_(src)  # first touch: page faults are not bandwidth
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        dst.copy_(src)
        samples.append(time.perf_counter() - t0)
    return moved / min(samples)  # the floor is the best this machine does: least disturbed run
