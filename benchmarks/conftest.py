"""pytest-benchmark over the same cases `gankern bench` runs (gankern/bench/cases/<op>.py).

Each bench_<op>.py sets OP and asks for the `case_impl` fixture: one test per (case, impl),
so `pytest benchmarks/ --benchmark-only` times every implementation of every case and
`--benchmark-disable` runs each once as a fast smoke check (quick-sized cases, unless
--bench-full). Every implementation's result is checked against the float64 reference before
it is timed; a wrong result fails its test instead of producing a number. On CUDA the timed
callable synchronizes, so the time is the kernel's, not the launch's.

Triton is not put in interpreter mode here: interpreted kernels are a test vehicle, not a
benchmark, so on a CPU-only machine the Triton rows are simply absent.
"""

from __future__ import annotations

import pytest
import torch

from gankern.bench import runner

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_configure(config):
    # As `gankern bench`: OpenMP threads spinning against other processes on a busy CPU turn
    # milliseconds into seconds, so a loaded CPU gets one torch thread.
    import os

    from gankern.bench import machine

    load = machine.load_average()
    if DEVICE.type == "cpu" and load is not None and load >= (os.cpu_count() or 1):
        torch.set_num_threads(1)


def pytest_addoption(parser):
    group = parser.getgroup("gankern-bench")
    group.addoption("--bench-quick", action="store_true", help="quick-sized cases (as gankern bench --quick)")
    group.addoption("--bench-full", action="store_true", help="full-sized cases even with --benchmark-disable")


def pytest_collect_file(file_path, parent):
    # The suites are bench_<op>.py (not test_*.py) so the unit-test run never picks them up.
    # A file named on the command line is collected by pytest itself; collecting it here too
    # would run every case twice on the same (stateful) objects.
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _quick(config) -> bool:
    if config.getoption("--bench-full"):
        return False
    disabled = False
    try:
        disabled = bool(config.getoption("benchmark_disable"))
    except ValueError:  # pytest-benchmark not installed: nothing is timed anyway
        disabled = True
    return bool(config.getoption("--bench-quick")) or disabled


_CASES: dict = {}


def _cases(config, op: str):
    if op not in _CASES:
        try:
            _CASES[op] = runner.load_cases(op, DEVICE, _quick(config))
        except Exception as e:  # noqa: BLE001 - reported as one failing test, not a collection crash
            _CASES[op] = e
    return _CASES[op]


def pytest_generate_tests(metafunc):
    if "case_impl" not in metafunc.fixturenames:
        return
    op = getattr(metafunc.module, "OP")
    cases = _cases(metafunc.config, op)
    if isinstance(cases, Exception):
        metafunc.parametrize("case_impl", [cases], ids=[f"{op}-cases-failed"])
        return
    items, ids = [], []
    for case in cases:
        for impl in case.impls:
            items.append((case, impl))
            ids.append(f"{case.name}|{impl.label}")
    metafunc.parametrize("case_impl", items, ids=ids)


@pytest.fixture
def bench_case(benchmark):
    """Check one (case, impl) against the reference, then hand its run to pytest-benchmark."""

    def go(case_impl):
        if isinstance(case_impl, Exception):
            pytest.fail(f"the cases could not be built: {type(case_impl).__name__}: {case_impl}")
        case, impl = case_impl
        if impl.skip:
            pytest.skip(impl.skip)  # e.g. ema_pytorch not installed: nothing to measure
        checked = runner.check_impl(case, impl, DEVICE)
        if checked.status != runner.STATUS_OK:
            pytest.fail(f"{impl.label} on {case.name}: {checked.status} ({checked.note})")
        benchmark.group = f"{case.op}: {case.name}"
        benchmark.extra_info.update(op=case.op, case=case.name, impl=impl.label, baseline=impl.is_baseline,
                                    max_rel_error=checked.error, bytes_moved=case.bytes_moved,
                                    device=str(DEVICE), params={k: str(v) for k, v in case.params.items()})
        run = impl.run
        if DEVICE.type == "cuda":
            def timed():
                run()
                torch.cuda.synchronize(DEVICE)
        else:
            timed = run
        benchmark(timed)

    return go
