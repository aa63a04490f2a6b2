"""scripts/bench_readme.py / gankern.bench.readme_section: the README's benchmark figures are
rendered from one bench JSON (here a small fixture), and the committed README matches its own."""

import json
import os
import subprocess
import sys

import pytest

from gankern.bench import readme_section as rs
from gankern.bench import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = "tests/data/bench_readme_fixture.json"


@pytest.fixture
def payload():
    with open(os.path.join(ROOT, FIXTURE)) as f:
        return json.load(f)


def _readme(claims=""):
    return ("# x\n\nintro " + claims + "\n\n## Benchmarks\n\n<!-- bench-results:begin old.json -->\nstale\n"
            "<!-- bench-results:end -->\n\nafter\n")


def test_section_states_machine_load_date_commit_and_each_row_against_its_target(payload):
    text = rs.render_section(payload, FIXTURE)
    assert "Fixture CPU (2 logical cores, 2 torch thread(s))" in text
    assert "2026-12-01 06:10 UTC" in text and "load average 0.5 at the start, 0.9 at the end" in text
    assert "`0123456789`" in text and "`gankern bench --quick`" in text
    assert "tests/data/bench_readme_fixture.png" in text
    ema = [ln for ln in text.splitlines() if ln.startswith("| ema |")]
    assert len(ema) == 2  # gankern[cpu] and gk.EMA.update; the baseline and skipped rows are not gankern rows
    # Every EMA row is judged: on a CPU, auto runs the kernel for every dtype pair.
    assert "| 1.07× | ≥ 1.00× ✓ |" in ema[0] and "| 1.4 ms | torch._foreach_lerp_ | 1.5 ms |" in ema[0]
    assert "| 1.00× | ≥ 1.00× ✓ |" in ema[1]
    sn = next(ln for ln in text.splitlines() if ln.startswith("| spectral_norm |"))
    assert "2.50× (overhead) | ≥ 2.00× ✓" in sn
    # Ceiling: torch SN's 44 ms over the no-SN floor's 38 ms, the most any SN could give.
    assert "| ≥ 2.00× ✓ | 1.16× |" in sn
    wrong = next(ln for ln in text.splitlines() if ln.startswith("| bias_act |"))
    assert "| WRONG | ✗ |" in wrong and "| inf |" in wrong
    conv = next(ln for ln in text.splitlines() if ln.startswith("| trainers |"))
    assert "1.11× | ≥ 1.20× ✗ | - |" in conv  # conv critics have the higher bar; no floor row, no ceiling
    assert "3 of 5 gankern rows meet their target; missed: " in text
    assert "bias_act bias+lrelu" in text and "trainers DCGAN WGAN-GP critic 3x32x32 (gankern: 1.11×)" in text
    assert "their floor (a same-protocol copy of the case's bytes): ema SNGAN-32 G, fp32 torch._foreach_lerp_ 101%." in text


def test_readme_section_and_inline_claims_regenerated_idempotently(payload):
    claim = "<!-- bench:speedup ema | SNGAN-32 G, fp32 | gankern[cpu] -->0.50×<!-- /bench -->"
    overhead = "<!-- bench:overhead spectral_norm | SNGAN-ResNet-32 D | gankern -->9×<!-- /bench -->"
    out = rs.render_readme(_readme(claim + " and " + overhead), payload, FIXTURE)
    assert "gankern[cpu] -->1.07×<!-- /bench -->" in out and "gankern -->2.50×<!-- /bench -->" in out
    assert "stale" not in out and f"<!-- bench-results:begin {FIXTURE} -->" in out and out.endswith("after\n")
    assert rs.render_readme(out, payload) == out


@pytest.mark.parametrize("spec", ["ema | SNGAN-32 G | nope", "ema | SNGAN | g", "ema | only two",
                                  "bias_act | bias+lrelu | gankern[cpu]"])
def test_a_claim_without_exactly_one_timed_row_is_an_error(payload, spec):
    with pytest.raises(rs.RenderError):
        rs.render_readme(_readme(f"<!-- bench:speedup {spec} -->1×<!-- /bench -->"), payload, FIXTURE)


def test_readme_without_markers_is_an_error(payload):
    with pytest.raises(rs.RenderError, match="bench-results:begin"):
        rs.render_readme("# no section\n", payload, FIXTURE)


def test_chart_redrawn_from_the_json(payload, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "chart.png"
    report.plot(report.results_from_json(payload), str(path), title="fixture")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_committed_readme_matches_the_json_it_names():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_readme.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("label", ["copy", "w_times_one"])
def test_per_layer_floor_gives_a_second_ceiling(payload, label):
    # An SN case that also timed a per-layer floor (gankern/bench/floors.py: a copy of W now, W·1
    # in older records) shows the ceiling of any SN computed layer by layer beside the no-SN one,
    # and the header says which floor the record timed.
    from gankern.bench.floors import PARAMETRIZED_FLOOR, W_TIMES_ONE_FLOOR

    sn_case = next(c for c in payload["results"] if c["op"] == "spectral_norm")
    base = next(r for r in sn_case["impls"] if r.get("baseline"))
    floor_label = PARAMETRIZED_FLOOR if label == "copy" else W_TIMES_ONE_FLOOR
    sn_case["impls"].append({"label": floor_label, "status": "ok", "time_s": base["time_s"] / 1.1})
    text = rs.render_section(payload, FIXTURE)
    assert ("W·1, through parametrize's own read" in text) == (label == "w_times_one")
    assert ("a copy of W read as gankern's SN weights are" in text) == (label == "copy")
    sn = next(ln for ln in text.splitlines() if ln.startswith("| spectral_norm |"))
    assert "| ≥ 2.00× ✓ | 1.16× (1.10× per layer) |" in sn
