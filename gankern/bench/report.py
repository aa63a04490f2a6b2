"""Turn benchmark results into the three things people read: a table, a JSON file, a chart.

The JSON is the record (benchmarks/results/<date>-<device>.json): machine, versions, commit
and every sample, so a number in the README can always be traced to a run. The table and the
chart are views of the same results; WRONG and failed implementations appear in both with
no time, so a fast wrong answer can never look like a win.
"""

from __future__ import annotations

import json
import math
import re
from typing import Optional

SCHEMA = "gankern-bench/1"


def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _cell(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _error_cell(err: Optional[float]) -> str:
    if err is None:
        return "-"
    return "inf" if not math.isfinite(err) else f"{err:.1e}"


def table_rows(results) -> list[list[str]]:
    rows = []
    for case in results:
        for r in case.impls:
            if r.status == "ok":
                time_cell = fmt_time(r.time_s)
            else:
                time_cell = r.status  # WRONG / failed / skipped: never a time
            label = r.label + (" *" if r.baseline else "")
            rows.append([case.op, case.name, label, time_cell,
                         "-" if r.ratio is None else f"{r.ratio:.2f}x",
                         _error_cell(r.error), _cell(r.gbps, ".1f"), _cell(r.pct_floor, ".0f"),
                         fmt_bytes(r.peak_mem_bytes) if r.status == "ok" else "-",
                         r.note])
    return rows


HEADER = ["op", "case", "implementation", "median time", "speedup", "max rel err", "GB/s",
          "% floor", "peak mem", "note"]


def format_table(results, markdown: bool = False) -> str:
    """One row per (case, implementation). speedup = baseline time / time (the baseline is
    marked *); % floor = time a copy at the measured bandwidth needs for bytes_moved / time."""
    rows = table_rows(results)
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADER)]
    widths[-1] = len(HEADER[-1])  # the note trails; do not pad every row to the longest one
    out = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    prev = None
    for row in rows:
        key = (row[0], row[1])
        shown = row if key != prev else ["", ""] + row[2:]
        prev = key
        out.append("  ".join(c.ljust(w) for c, w in zip(shown, widths)).rstrip())
    return "\n".join(out)


def to_json(results, environment: dict, *, bandwidth: Optional[float], quick: bool, timing: dict) -> dict:
    return {
        "schema": SCHEMA,
        "environment": environment,
        "bandwidth_gbps": None if bandwidth is None else bandwidth / 1e9,
        "quick": quick,
        "timing": timing,
        "results": [c.to_dict() for c in results],
    }


def write_json(path: str, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(_strict(payload), f, indent=2, allow_nan=False)
        f.write("\n")


def _strict(obj):
    """Strict JSON has no NaN/Infinity: a non-finite error (a WRONG result) becomes a string."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def result_filename(environment: dict) -> str:
    """benchmarks/results naming: <date>-<device>.json, e.g. 2025-01-31-nvidia-h100-80gb-hbm3.json."""
    date = environment["date"][:10]
    dev = environment["device"]["name"] if environment["device"]["type"] == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", dev.lower()).strip("-") or "device"
    return f"{date}-{slug}.json"


def plot(results, path: str, title: str = "") -> None:
    """Horizontal bars of speedup over each case's baseline (log scale, 1x marked); WRONG,
    failed and skipped implementations are listed with their status instead of a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors, notes = [], [], [], []
    group_edges = []
    for case in results:
        group_edges.append(len(labels))
        for r in case.impls:
            labels.append(f"{case.op} | {case.name[:48]} | {r.label}")
            values.append(r.ratio if r.ratio else 0.0)
            if r.status != "ok":
                colors.append("#bbbbbb")
                notes.append(r.status)
            else:
                colors.append("#1f77b4" if r.label.startswith(("gankern", "gk.")) else "#ff7f0e")
                notes.append(f"{r.ratio:.2f}x" if r.ratio else "")
    n = max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.32 * n))
    y = list(range(n))[::-1]
    positive = [v for v in values if v > 0]
    lo = min(positive + [1.0]) / 1.5
    hi = max(positive + [1.0]) * 1.8
    ax.barh(y, [v if v > 0 else lo for v in values], color=colors, left=0)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.axvline(1.0, color="black", linewidth=0.8)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    for yi, v, note in zip(y, values, notes):
        ax.text(max(v, lo) * 1.03, yi, note, va="center", fontsize=8)
    for edge in group_edges[1:]:
        ax.axhline(n - edge - 0.5, color="#dddddd", linewidth=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels[:n], fontsize=8)
    ax.set_xlabel("speedup over the case's baseline (baseline time / time; >1 is faster)")
    ax.set_title(title or "gankern bench")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results_from_json(payload: dict) -> list:
    """The CaseResults a `--json` file holds (to redraw its chart without rerunning)."""
    from .runner import CaseResult, ImplResult

    if payload.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} file (schema {payload.get('schema')!r})")
    out = []
    for c in payload["results"]:
        fields = dict(c)
        fields["impls"] = [ImplResult(**r) for r in c["impls"]]
        out.append(CaseResult(**fields))
    return out
