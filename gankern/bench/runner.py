"""Run benchmark cases: check every implementation's result first, then time them side by side.

Order matters. Each Impl runs once and its result goes through the case's error function
before anything is timed: a fast wrong answer is worth nothing, so it is reported WRONG and
gets no time. The survivors are timed in the same process, interleaved round by round (CPU)
or in alternating rounds of event-timed medians (GPU), so machine noise hits every
implementation alike and the ratios, not the absolute times, are what to trust.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import pkgutil
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable, Optional

import torch

from .case import Case, Impl

# Cases show in this order; case modules not listed (new ops) follow alphabetically.
OP_ORDER = ("ema", "spectral_norm", "gradient_penalty", "bias_act", "e2e")

STATUS_OK, STATUS_WRONG, STATUS_FAILED, STATUS_SKIPPED = "ok", "WRONG", "failed", "skipped"


@dataclass
class TimingConfig:
    """How long to measure. repeats: interleaved rounds (CPU) / do_bench rounds (GPU);
    min_sample_s: each CPU sample averages calls (each after its own cache flush) until they
    last this long, at most _MAX_CALLS_PER_SAMPLE (kept short so a sample the scheduler
    preempted stays one outlier, not smeared into all);
    budget_s: the rounds of one case are cut to fit (never below min_rounds)."""

    repeats: int = 21
    min_sample_s: float = 0.002
    budget_s: float = 20.0
    min_rounds: int = 3
    gpu_rep_ms: float = 100.0
    measure_memory: bool = True

    @classmethod
    def quick(cls) -> "TimingConfig":
        return cls(repeats=11, min_sample_s=0.002, budget_s=4.0, min_rounds=3, gpu_rep_ms=40.0)


@dataclass
class ImplResult:
    label: str
    baseline: bool
    status: str                          # ok | WRONG | failed | skipped
    time_s: Optional[float] = None       # median seconds per call; None unless status == ok
    samples_s: list = field(default_factory=list)
    best_s: Optional[float] = None       # fastest sample: on a loaded machine, the least disturbed
    ratio: Optional[float] = None        # baseline time / this time: > 1 is faster than baseline
    error: Optional[float] = None        # relative error against the float64 reference
    gbps: Optional[float] = None         # bytes_moved / time
    pct_floor: Optional[float] = None    # bandwidth floor time / this time, in %
    peak_mem_bytes: Optional[int] = None  # memory allocated during one call above what was live
    overhead_s: Optional[float] = None   # time - the floor row's time (median of per-round differences)
    overhead_ratio: Optional[float] = None  # baseline's overhead / this overhead: > 1 is smaller
    note: str = ""


@dataclass
class CaseResult:
    op: str
    name: str
    params: dict
    tolerance: float
    bytes_moved: Optional[int]
    flops: Optional[int]
    floor_s: Optional[float]
    impls: list

    def to_dict(self) -> dict:
        d = asdict(self)
        d["impls"] = [asdict(r) if isinstance(r, ImplResult) else r for r in self.impls]
        return d


# -- case discovery ------------------------------------------------------------------------------
def case_modules() -> list[str]:
    """Names of the modules under gankern/bench/cases/, in display order."""
    from . import cases

    names = [m.name for m in pkgutil.iter_modules(cases.__path__) if not m.name.startswith("_")]
    known = [n for n in OP_ORDER if n in names]
    return known + sorted(n for n in names if n not in OP_ORDER)


def load_cases(op: str, device: torch.device, quick: bool) -> list[Case]:
    module = importlib.import_module(f"{__package__}.cases.{op}")
    return list(module.cases(device, quick))


# -- measuring -----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler prints start/stop banners straight to fd 2; keep them out of the table."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def run_measuring_memory(run: Callable[[], object], device: torch.device) -> tuple[object, Optional[int]]:
    """(run(), bytes allocated during the call above what was live before it: its workspace
    and outputs). GPU: the caching allocator's peak. CPU: the allocation events the profiler
    sees from torch's CPU allocator, summed in time order; None where the profiler has none."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = run()
        _sync(device)
        return out, max(0, torch.cuda.max_memory_allocated(device) - before)
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return run(), None
    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = run()
        try:
            events = prof.profiler.kineto_results.events()
            allocs = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        except Exception:  # noqa: BLE001 - profiler internals vary across torch versions
            return out, None
    live = peak = 0
    for _, nbytes in allocs:
        live += nbytes
        peak = max(peak, live)
    return out, peak


def peak_memory(run: Callable[[], object], device: torch.device) -> Optional[int]:
    return run_measuring_memory(run, device)[1]


_FLUSH: dict = {}


def _flush_cpu_cache() -> None:
    """Evict the last-level cache before a sample, as do_bench flushes L2 on a GPU: in training,
    the forward/backward between two EMA steps leaves none of the weights cached, so an
    in-cache time would flatter every implementation (and read over 100% of the floor)."""
    if "buf" not in _FLUSH:
        _FLUSH["buf"] = torch.empty(_llc_bytes() * 2 // 4, dtype=torch.float32)
    _FLUSH["buf"].fill_(1.0)


def _llc_bytes() -> int:
    best = 32 << 20
    try:
        base = "/sys/devices/system/cpu/cpu0/cache"
        for entry in os.listdir(base):
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip().upper()
            n = int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            best = max(best, n)
    except (OSError, ValueError):
        pass
    return min(best, 512 << 20)


# Calls per sample at most: each costs a flush of twice the last-level cache (~5 ms here).
_MAX_CALLS_PER_SAMPLE = 8


def _time_cpu(runs: dict[str, Callable], cfg: TimingConfig) -> dict[str, list[float]]:
    """Seconds per call: each round times every implementation once, in a rotating order.

    Every call starts from a cold last-level cache, as triton's do_bench clears the L2 before
    every call on a GPU: the cache is flushed before each call and only the call is timed. A
    sample used to be one flush and then n calls in a row, so all but the first call found the
    tail of the previous call's data in the cache, and how much of it depended on traversal
    order, not speed (measured: an SNGAN-32 EMA step takes ~1.1 ms cold and ~0.6 ms warm; with
    per-implementation n, one whose warm-up call happened to be fast got more warm calls per
    sample, and an identical-speed kernel read 0.66-0.75x). A sample is the mean of n calls,
    the same n for every implementation of the case (the fastest one's, for the timer)."""
    single = {}
    for label, run in runs.items():  # warm-up call (after the check call) sizes the loop
        t0 = time.perf_counter()
        run()
        single[label] = max(time.perf_counter() - t0, 1e-9)
    n = min(_MAX_CALLS_PER_SAMPLE, max(1, math.ceil(cfg.min_sample_s / min(single.values()))))
    t0 = time.perf_counter()
    _flush_cpu_cache()
    flush_s = time.perf_counter() - t0
    per_round = sum((s + flush_s) * n for s in single.values())
    rounds = max(cfg.min_rounds, min(cfg.repeats, int(cfg.budget_s / max(per_round, 1e-9))))
    labels = list(runs)
    samples: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(rounds):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            run, total = runs[label], 0.0
            for _ in range(n):
                _flush_cpu_cache()
                t0 = time.perf_counter()
                run()
                total += time.perf_counter() - t0
            samples[label].append(total / n)
    return samples


def _time_cuda(runs: dict[str, Callable], cfg: TimingConfig, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call: triton.testing.do_bench medians (CUDA events, L2 flushed between calls),
    in alternating rounds; CUDA events by hand when Triton is missing."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    rounds = max(cfg.min_rounds, min(cfg.repeats, 5))
    labels = list(runs)
    samples: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(rounds):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            run = runs[label]
            if do_bench is not None:
                ms = do_bench(run, warmup=max(1.0, cfg.gpu_rep_ms / 4), rep=cfg.gpu_rep_ms,
                              return_mode="median")
                samples[label].append(ms * 1e-3)
                continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            run()
            inner = []
            for _ in range(10):
                start.record()
                run()
                end.record()
                torch.cuda.synchronize(device)
                inner.append(start.elapsed_time(end) * 1e-3)
            samples[label].append(statistics.median(inner))
    return samples


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:200]


def check_impl(case: Case, impl: Impl, device: torch.device, measure_memory: bool = False) -> ImplResult:
    """Run impl once (after its setup) and judge the result; no timing. The same call gives
    the peak memory, so a slow case (a training step) is not run once more just for that."""
    res = ImplResult(label=impl.label, baseline=impl.is_baseline, status=STATUS_OK)
    if impl.skip:
        res.status, res.note = STATUS_SKIPPED, impl.skip
        return res
    try:
        if impl.setup is not None:
            impl.setup()
        if measure_memory:
            out, res.peak_mem_bytes = run_measuring_memory(impl.run, device)
        else:
            out = impl.run()
        _sync(device)
    except Exception as e:  # noqa: BLE001 - one broken implementation must not end the run
        res.status, res.note = STATUS_FAILED, _short(e)
        if os.environ.get("GANKERN_BENCH_DEBUG"):
            traceback.print_exc()
        return res
    if case.error is not None:
        try:
            err = float(case.error(out))
        except Exception as e:  # noqa: BLE001
            res.status, res.note = STATUS_FAILED, "error check raised " + _short(e)
            return res
        res.error = err
        if not math.isfinite(err) or err > case.tolerance:
            res.status = STATUS_WRONG
            res.note = f"error {err:.2e} > tolerance {case.tolerance:.0e}"
    return res


def floor_copy_time(nbytes: int, device: torch.device, cfg: TimingConfig) -> float:
    """The fastest time this device takes to move nbytes with a plain streaming kernel, timed by
    the very protocol the case's implementations get (a cold cache before each call). A DRAM
    bandwidth taken on 256 MiB buffers is no floor for a case whose 40 MB partly stay in a
    32 MiB L3 (rows read 101-152% of it when samples ran calls back to back). Kernels of the
    same size under the same protocol see the same caches, so they are one.

    Three STREAM patterns, and the fastest per byte is the floor: a read-only sum, a copy (dst = src; at bytes_moved
    and at half of it, since an in-place case touches fewer distinct bytes than it moves), and an
    in-place add (a += b; read a, read b, write a). A copy's destination is read for ownership
    before it is written (the cache fetches each line it then overwrites), so it moves 3 bytes
    for every 2 it is credited with; an in-place update such as an EMA step reads the lines it
    writes anyway. Measured at load ~10 (one thread): _foreach_lerp_ over an SNGAN-32 G read
    126% of the copy floor; the in-place add of the same bytes is as fast per byte as the lerp."""
    # The floor is a minimum, so it gets at least 21 rounds whatever the case's: with the quick
    # run's 11, one idle run on an EPYC had an EMA row at 104% of a floor timed while the machine
    # was briefly slower (the row's own median came from a quieter moment). Each round is a few
    # short streaming calls: this costs well under a second per case.
    cfg = replace(cfg, min_rounds=max(cfg.min_rounds, 21), repeats=max(cfg.repeats, 21))
    best = math.inf
    for size in (nbytes, nbytes // 2):
        n = max(1, size // 8)  # float32 elements per buffer: src + dst = size bytes
        src = torch.ones(n, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        copy = {"copy": lambda: dst.copy_(src)}
        samples = _time_cuda(copy, cfg, device) if device.type == "cuda" else _time_cpu(copy, cfg)
        best = min(best, min(samples["copy"]) / (2 * n * 4))
        del src, dst
    for size in (nbytes, nbytes // 2):
        n = max(1, size // 12)  # a += b: read a, read b, write a = 12 bytes per float32 element
        a = torch.ones(n, dtype=torch.float32, device=device)
        b = torch.zeros_like(a)  # adding zeros keeps a finite over any number of calls
        add = {"add": lambda: a.add_(b)}
        samples = _time_cuda(add, cfg, device) if device.type == "cuda" else _time_cpu(add, cfg)
        best = min(best, min(samples["add"]) / (3 * n * 4))
        # A pure read (a sum) is the fastest a byte can move at all: with it the floor holds even
        # for a case whose mix of reads and writes beats both patterns above. Measured idle: the
        # fused 2-profile post-hoc EMA (3 reads, 2 writes) read 110% of the copy/add floor.
        total = {"sum": lambda: a.sum()}
        samples = _time_cuda(total, cfg, device) if device.type == "cuda" else _time_cpu(total, cfg)
        best = min(best, min(samples["sum"]) / (n * 4))
        del a, b
    return best * nbytes


def run_case(case: Case, device: torch.device, cfg: TimingConfig, bandwidth: Optional[float] = None,
             progress: Optional[Callable[[str], None]] = None, measure_floor: bool = False) -> CaseResult:
    """Check, then time, every Impl of case; ratios against the case's baseline. The floor is
    bytes_moved / bandwidth, or, with measure_floor, a same-size copy timed alongside
    (floor_copy_time: the one that holds whatever cache level the case's data fits in)."""
    floor = case.bytes_moved / bandwidth if case.bytes_moved and bandwidth else None
    if measure_floor and case.bytes_moved:
        if progress:
            progress(f"{case.op}: floor copy of {case.bytes_moved / 1e6:.1f} MB")
        floor = floor_copy_time(case.bytes_moved, device, cfg)
    result = CaseResult(op=case.op, name=case.name, params=dict(case.params), tolerance=case.tolerance,
                        bytes_moved=case.bytes_moved, flops=case.flops, floor_s=floor, impls=[])
    runs = {}
    for impl in case.impls:
        if progress:
            progress(f"{case.op}: check {impl.label}")
        r = check_impl(case, impl, device, measure_memory=cfg.measure_memory)
        result.impls.append(r)
        if r.status == STATUS_OK:
            runs[impl.label] = impl.run
    if runs:
        if progress:
            progress(f"{case.op}: timing {len(runs)} impls")
        timing = cfg if case.min_rounds <= cfg.min_rounds else replace(
            cfg, min_rounds=case.min_rounds, repeats=max(cfg.repeats, case.min_rounds))
        try:
            samples = _time_cuda(runs, timing, device) if device.type == "cuda" else _time_cpu(runs, timing)
        except Exception as e:  # noqa: BLE001 - e.g. an impl that fails only on a later call
            samples = {}
            for r in result.impls:
                if r.label in runs:
                    r.status, r.note = STATUS_FAILED, "while timing: " + _short(e)
        for r in result.impls:
            if r.label in samples and samples[r.label]:
                r.samples_s = samples[r.label]
                r.time_s = statistics.median(r.samples_s)
                r.best_s = min(r.samples_s)
                if case.bytes_moved:
                    r.gbps = case.bytes_moved / r.time_s / 1e9
                if floor:
                    r.pct_floor = 100.0 * floor / r.time_s
    base = next((r for r in result.impls if r.baseline), None)
    if base is not None and base.time_s:
        for r in result.impls:
            if r.time_s:
                r.ratio = base.time_s / r.time_s
    _overheads(result, case.overhead_over, base)
    return result


def paired_overhead(samples: list, floor_samples: list) -> float:
    """Median over rounds of (sample - the floor's sample of the same round).

    An overhead is a small difference of two large times (SN's few ms inside a ~20 ms D step),
    so the difference of two separate medians inherits both medians' noise, and load that
    drifts over the run lands wherever it lands. Each round times every implementation back to
    back, so a round's difference cancels what the two calls shared; with unequal sample lists
    (never from one run_case) it falls back to the difference of the medians."""
    if len(samples) != len(floor_samples) or not samples:
        return statistics.median(samples) - statistics.median(floor_samples)
    return statistics.median(a - b for a, b in zip(samples, floor_samples))


def _overheads(result: CaseResult, floor_label: Optional[str], base) -> None:
    floor = next((r for r in result.impls if r.label == floor_label and r.time_s), None)
    if floor is None:
        return
    for r in result.impls:
        if r.time_s and r is not floor:
            r.overhead_s = paired_overhead(r.samples_s, floor.samples_s)
    if base is None or base.overhead_s is None:
        return
    for r in result.impls:
        if r.overhead_s is not None:
            if r.overhead_s > 0 and base.overhead_s > 0:
                r.overhead_ratio = base.overhead_s / r.overhead_s
            extra = f"overhead {r.overhead_s * 1e3:+.3g} ms"
            if r is not base and r.overhead_ratio is not None:
                extra += f" ({r.overhead_ratio:.2f}x smaller than *)"
            r.note = f"{r.note}; {extra}" if r.note else extra


def failed_op(op: str, exc: BaseException) -> CaseResult:
    """The row an op gets when its cases cannot even be built (e.g. a module mid-edit)."""
    return CaseResult(op=op, name="(cases could not be built)", params={}, tolerance=0.0,
                      bytes_moved=None, flops=None, floor_s=None,
                      impls=[ImplResult(label="-", baseline=False, status=STATUS_FAILED, note=_short(exc))])


def run_ops(ops: Iterable[str], device: torch.device, quick: bool, cfg: TimingConfig,
            bandwidth: Optional[float] = None, progress: Optional[Callable[[str], None]] = None,
            on_op_done: Optional[Callable[[str], None]] = None, measure_floor: bool = False) -> list[CaseResult]:
    """Build each op's cases in turn (only one op's tensors alive at a time) and run them."""
    results = []
    for op in ops:
        if progress:
            progress(f"{op}: building cases")
        try:
            cases = load_cases(op, device, quick)
        except Exception as e:  # noqa: BLE001
            if os.environ.get("GANKERN_BENCH_DEBUG"):
                traceback.print_exc()
            results.append(failed_op(op, e))
        else:
            while cases:
                case = cases.pop(0)  # drop each case's tensors once measured
                results.append(run_case(case, device, cfg, bandwidth, progress, measure_floor))
                del case
        if on_op_done:
            on_op_done(op)
    return results
