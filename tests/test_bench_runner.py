"""The benchmark runner: a wrong result gets WRONG and no time, failures are contained, the JSON
record has everything the README table needs, and the EMA case's check can actually fail."""

import json
import math
import statistics

import pytest
import torch
from conftest import DEVICE, backends_for

from gankern.bench import machine, report, runner
from gankern.bench.case import Case, Impl
from gankern.bench.cases import ema as ema_cases
from gankern.ops.ema import IMPLEMENTED as EMA_IMPLEMENTED
from gankern.testing import rel_error

FAST = runner.TimingConfig(repeats=2, min_sample_s=0.0, budget_s=0.05, min_rounds=1)


def _counting(fn):
    calls = {"n": 0}

    def run():
        calls["n"] += 1
        return fn()

    return run, calls


def _toy_case():
    x = torch.randn(257, dtype=torch.float64)
    ref = torch.sin(x)
    good, good_calls = _counting(lambda: torch.sin(x.float()))
    base, _ = _counting(lambda: torch.sin(x))
    wrong, wrong_calls = _counting(lambda: torch.sin(x.float()) + 1e-3)
    nan, nan_calls = _counting(lambda: torch.full_like(x, float("nan")))

    def broken():
        raise RuntimeError("kernel exploded")

    impls = [Impl("fast-wrong", run=wrong), Impl("nan", run=nan), Impl("good", run=good),
             Impl("base", run=base, is_baseline=True), Impl("broken", run=broken),
             Impl("absent", run=lambda: None, skip="not installed")]
    case = Case(op="toy", name="sin, 257", impls=impls, error=lambda out: rel_error(out, ref),
                tolerance=1e-5, bytes_moved=257 * 16)
    return case, {"good": good_calls, "fast-wrong": wrong_calls, "nan": nan_calls}


def test_wrong_result_reports_wrong_and_no_time():
    case, calls = _toy_case()
    res = runner.run_case(case, torch.device("cpu"), FAST, bandwidth=1e9)
    by = {r.label: r for r in res.impls}
    for label in ("fast-wrong", "nan"):
        r = by[label]
        assert r.status == runner.STATUS_WRONG
        assert r.time_s is None and r.samples_s == [] and r.ratio is None and r.gbps is None
        # checked once, then never run again: no memory run, no timing
        assert calls[label]["n"] == 1
    assert by["fast-wrong"].error > case.tolerance
    assert math.isinf(by["nan"].error)
    assert by["good"].status == runner.STATUS_OK and by["good"].time_s is not None
    assert calls["good"]["n"] > 1  # it was timed
    assert by["good"].error <= case.tolerance
    assert by["base"].ratio == pytest.approx(1.0)
    assert by["good"].ratio == pytest.approx(by["base"].time_s / by["good"].time_s)
    assert by["good"].gbps == pytest.approx(case.bytes_moved / by["good"].time_s / 1e9)
    assert by["broken"].status == runner.STATUS_FAILED and "kernel exploded" in by["broken"].note
    assert by["absent"].status == runner.STATUS_SKIPPED and by["absent"].note == "not installed"


def test_table_never_shows_a_time_for_wrong():
    case, _ = _toy_case()
    res = runner.run_case(case, torch.device("cpu"), FAST, bandwidth=1e9)
    rows = {row[2].rstrip(" *"): row for row in report.table_rows([res])}
    assert rows["fast-wrong"][3] == "WRONG" and rows["fast-wrong"][4] == "-"
    assert rows["nan"][3] == "WRONG" and rows["nan"][5] == "inf"
    assert rows["broken"][3] == "failed"
    assert rows["good"][3].endswith("s")
    text = report.format_table([res])
    assert "WRONG" in text and "base *" in text


def test_json_schema(tmp_path):
    case, _ = _toy_case()
    res = runner.run_case(case, torch.device("cpu"), FAST, bandwidth=2e9)
    env = machine.environment(torch.device("cpu"))
    path = tmp_path / "r.json"
    report.write_json(str(path), report.to_json([res], env, bandwidth=2e9, quick=True, timing=vars(FAST)))
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert data["schema"] == report.SCHEMA
    e = data["environment"]
    for key in ("date", "git", "device", "driver", "torch", "triton", "cpu", "python", "gankern"):
        assert key in e, key
    assert e["torch"] == torch.__version__ and e["device"]["type"] == "cpu"
    assert set(e["git"]) == {"commit", "dirty"} and set(e["cpu"]) >= {"model", "logical_cores"}
    assert data["bandwidth_gbps"] == pytest.approx(2.0) and data["quick"] is True
    (c,) = data["results"]
    assert c["op"] == "toy" and c["bytes_moved"] == 257 * 16 and c["floor_s"] == pytest.approx(257 * 16 / 2e9)
    impls = {r["label"]: r for r in c["impls"]}
    for r in impls.values():
        assert set(r) >= {"label", "baseline", "status", "time_s", "samples_s", "ratio", "error", "gbps",
                          "pct_floor", "peak_mem_bytes", "note"}
    assert impls["nan"]["error"] == "inf" and impls["nan"]["time_s"] is None
    assert isinstance(impls["good"]["time_s"], float) and len(impls["good"]["samples_s"]) >= 1
    assert report.result_filename(data["environment"]).endswith("-cpu.json")


def test_cpu_peak_memory_sees_allocations():
    n = 1 << 20
    peak = runner.peak_memory(lambda: torch.empty(n, dtype=torch.float32).fill_(1.0), torch.device("cpu"))
    if peak is None:
        pytest.skip("this torch build's profiler reports no CPU memory events")
    assert peak >= 4 * n
    assert runner.peak_memory(lambda: None, torch.device("cpu")) == 0


def test_ema_case_checks_and_flags(monkeypatch):
    case = ema_cases.make_case(ema_cases.tiny_shapes(), torch.bfloat16, DEVICE, "tiny", with_compile=False)
    labels = [i.label for i in case.impls]
    for b in backends_for(EMA_IMPLEMENTED):
        if b not in ("reference", "cuda_sim"):  # cuda_sim is a test vehicle, never benchmarked
            assert f"gankern[{b}]" in labels
    res = runner.run_case(case, DEVICE, FAST)
    for r in res.impls:
        assert r.status in (runner.STATUS_OK, runner.STATUS_SKIPPED), (r.label, r.status, r.note)
        if r.status == runner.STATUS_OK:
            assert r.error < 1e-6
    # The check fails an implementation that skips the update (its shadow is the initial one).
    stale = [s.clone() for s in case.impls[0].run()]
    with torch.no_grad():
        for s in stale:
            s.mul_(0.99)
    assert case.error(stale) > case.tolerance


def test_ema_case_bytes_and_shapes():
    shapes = ema_cases.stylegan2_g_shapes(256)
    numel = sum(math.prod(s) for s in shapes)
    assert 20e6 < numel < 40e6 and len(shapes) > 100
    assert min(math.prod(s) for s in shapes) == 1  # noise strengths: scalars among megabyte convs
    case = ema_cases.make_case(ema_cases.tiny_shapes(), torch.float32, torch.device("cpu"), "tiny",
                               with_compile=False)
    n = sum(math.prod(s) for s in ema_cases.tiny_shapes())
    assert case.bytes_moved == 12 * n


def test_overhead_over_a_floor_implementation():
    # SN's targets are stated as overheads (time with SN - time without): the runner derives
    # them from the case's floor row, and the ratio of the baseline's overhead to each one's.
    def sleeper(s):
        def run():
            t = __import__("time").perf_counter()
            while __import__("time").perf_counter() - t < s:
                pass
            return torch.zeros(1)
        return run

    impls = [Impl("fast", run=sleeper(0.002)), Impl("base", run=sleeper(0.005), is_baseline=True),
             Impl("floor", run=sleeper(0.001))]
    case = Case(op="toy", name="overhead", impls=impls, error=lambda out: 0.0, overhead_over="floor")
    res = runner.run_case(case, torch.device("cpu"), FAST)
    by = {r.label: r for r in res.impls}
    assert by["floor"].overhead_s is None
    for label in ("fast", "base"):
        assert by[label].overhead_s == pytest.approx(
            runner.paired_overhead(by[label].samples_s, by["floor"].samples_s))
        assert len(by[label].samples_s) == len(by["floor"].samples_s)
        assert "overhead" in by[label].note
    if by["fast"].overhead_s > 0 and by["base"].overhead_s > 0:
        assert by["fast"].overhead_ratio == pytest.approx(by["base"].overhead_s / by["fast"].overhead_s)
    assert ("smaller than *" in by["fast"].note) == (by["fast"].overhead_ratio is not None)


def test_case_min_rounds_outlasts_the_time_budget():
    # A whole-iteration case asks for more rounds than the budget fits: it gets them; a case
    # that asks for nothing keeps the config's.
    cfg = runner.TimingConfig(repeats=3, min_sample_s=0.0, budget_s=1e-9, min_rounds=2, measure_memory=False)

    def toy(min_rounds):
        impls = [Impl("a", run=lambda: torch.zeros(1)), Impl("b", run=lambda: torch.zeros(1), is_baseline=True)]
        return Case(op="toy", name="rounds", impls=impls, error=lambda out: 0.0, min_rounds=min_rounds)

    asked = runner.run_case(toy(7), torch.device("cpu"), cfg)
    default = runner.run_case(toy(0), torch.device("cpu"), cfg)
    assert [len(r.samples_s) for r in asked.impls] == [7, 7]
    assert [len(r.samples_s) for r in default.impls] == [2, 2]


def test_paired_overhead_cancels_load_shared_by_a_round():
    # Load moved over the run: rounds 3-5 were 10 ms slower for everyone, and in round 3 the
    # implementation ran just before the load arrived. Four of five rounds differ by exactly
    # 1 ms; the separate medians straddle the change and read -9 ms.
    floor = [20e-3, 20e-3, 30e-3, 30e-3, 30e-3]
    impl = [21e-3, 21e-3, 21e-3, 31e-3, 31e-3]
    assert runner.paired_overhead(impl, floor) == pytest.approx(1e-3)
    assert statistics.median(impl) - statistics.median(floor) == pytest.approx(-9e-3)
    # Lists of unequal length cannot be paired: the difference of the medians.
    assert runner.paired_overhead([3.0, 5.0, 4.0], [1.0, 2.0]) == pytest.approx(4.0 - 1.5)


def test_measured_floor_is_a_same_protocol_copy_of_the_case_bytes(monkeypatch):
    # With measure_floor the floor comes from floor_copy_time (a copy of the case's own bytes,
    # timed like the case), not from the DRAM bandwidth passed in; % floor is taken against it.
    asked = []

    def fake_floor(nbytes, device, cfg):
        asked.append(nbytes)
        return 1e-3

    monkeypatch.setattr(runner, "floor_copy_time", fake_floor)
    case, _ = _toy_case()
    res = runner.run_case(case, torch.device("cpu"), FAST, bandwidth=1e9, measure_floor=True)
    assert asked == [257 * 16] and res.floor_s == pytest.approx(1e-3)
    good = next(r for r in res.impls if r.label == "good")
    assert good.pct_floor == pytest.approx(100.0 * 1e-3 / good.time_s)


def test_floor_copy_time_scales_with_bytes_and_is_finite():
    small = runner.floor_copy_time(1 << 16, torch.device("cpu"), FAST)
    big = runner.floor_copy_time(1 << 24, torch.device("cpu"), FAST)
    assert 0 < small < big < 1.0  # 16 MiB cannot move faster than 64 KiB on any machine


def test_floor_is_timed_over_at_least_21_rounds_whatever_the_case_gets(monkeypatch):
    # A floor is a minimum: too few samples and a briefly slow machine lifts it, and a row then
    # reads over 100% of it (seen: 104% with the quick run's 11 rounds).
    seen = []

    def fake_time_cpu(runs, cfg):
        seen.append((cfg.min_rounds, cfg.repeats))
        return {label: [1e-3] for label in runs}

    monkeypatch.setattr(runner, "_time_cpu", fake_time_cpu)
    runner.floor_copy_time(1 << 16, torch.device("cpu"), runner.TimingConfig.quick())
    assert seen and all(min_rounds >= 21 and repeats >= 21 for min_rounds, repeats in seen)


def test_cpu_timing_flushes_before_every_call_and_gives_every_implementation_the_same_count(monkeypatch):
    """A sample averages n calls, each after its own cache flush, with one n for the whole case
    (a per-implementation n let a lucky fast warm-up buy more warm calls per sample)."""
    import time

    events = []
    monkeypatch.setattr(runner, "_flush_cpu_cache", lambda: events.append("flush"))

    def make(label, seconds):
        def run():
            events.append(label)
            time.sleep(seconds)
        return run

    cfg = runner.TimingConfig(repeats=3, min_sample_s=0.004, budget_s=10.0, min_rounds=3)
    runs = {"fast": make("fast", 0.0005), "slow": make("slow", 0.003)}
    samples = runner._time_cpu(runs, cfg)
    assert len(samples["fast"]) == len(samples["slow"]) == 3
    timed = events[events.index("flush") + 1:]  # after the warm-up calls and the flush probe
    calls = [e for e in timed if e != "flush"]
    assert calls.count("fast") == calls.count("slow") > 3  # the fast one sets n for both
    # every timed call directly follows a flush
    assert all(timed[i - 1] == "flush" for i, e in enumerate(timed) if e != "flush")


def test_every_case_module_defines_cases():
    # A helper module dropped into gankern/bench/cases/ would be run as an op and recorded as
    # "(cases could not be built)": helpers live beside the package (gankern/bench/floors.py).
    import importlib

    for name in runner.case_modules():
        module = importlib.import_module(f"gankern.bench.cases.{name}")
        assert callable(getattr(module, "cases", None)), f"gankern/bench/cases/{name}.py has no cases()"
