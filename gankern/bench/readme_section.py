"""The README's benchmark results, rendered from one committed `gankern bench --json` file.

Every speed figure the README states is a view of that file: the results section between the
`bench-results` markers (machine, load, date, commit, then one row per case with its target),
and each inline figure elsewhere, written as
`<!-- bench:speedup OP | CASE | IMPL -->1.23x<!-- /bench -->` (CASE and IMPL: the start of the
case name and implementation label in the JSON; `bench:overhead` quotes the SN overhead ratio).
Nothing here measures. A new run replaces every figure at once (scripts/bench_readme.py), and a
figure whose row the JSON lacks is an error, so no number outlives the run it came from.
"""

from __future__ import annotations

import math
import re
from typing import Optional

from .floors import PER_LAYER_FLOOR_LABELS, W_TIMES_ONE_FLOOR

BEGIN_RE = re.compile(r"<!-- bench-results:begin (\S+) -->\n")
END = "<!-- bench-results:end -->"
CLAIM_RE = re.compile(r"<!-- bench:(speedup|overhead) ([^>]*?) -->(.*?)<!-- /bench -->", re.S)

# The targets of issue 16, per row: (what is compared, at least). SN rows are judged on the SN
# overhead (time with SN - time without), the trainers' conv critics on a higher bar.
SPEEDUP, OVERHEAD = "speedup", "SN overhead, times smaller"


def target(op: str, case: str, impl: str = "") -> Optional[tuple[str, float]]:
    """(figure, at least) a gankern row is judged on; None: shown, not judged (e.g. the
    penalty op alone in an unfused D, which the D-step target does not cover)."""
    if op == "ema":  # on a CPU, auto runs the kernel for every dtype pair: every row is judged
        return SPEEDUP, 1.0
    if op == "bias_act":
        return SPEEDUP, 1.0
    if op == "spectral_norm":
        return OVERHEAD, 2.0
    if op == "gradient_penalty":
        # Judged: what users run (auto). Shown only: the penalty op alone in an unfused D, and
        # the CPU kernels named explicitly for a fused D, which auto does not run on a CPU.
        return None if "only" in impl or impl.startswith("gankern[cpu]") else (SPEEDUP, 1.15)
    if op == "trainers":  # the conv WGAN-GP critics carry the higher bar
        return SPEEDUP, 1.2 if case.startswith("DCGAN") else 1.0
    if op == "e2e":
        return SPEEDUP, 1.3
    return None


class RenderError(ValueError):
    """The README and the JSON disagree: a marker without its row, a section without markers."""


def _is_gankern(label: str) -> bool:
    return label.startswith("gankern") or label.startswith("gk.")


def _fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s >= 1.0:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _fmt_x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}×"


def _metric(impl: dict, kind: str) -> Optional[float]:
    return impl.get("overhead_ratio") if kind == OVERHEAD else impl.get("ratio")


def rows(payload: dict) -> list[dict]:
    """One entry per (case, gankern implementation): its figures, its baseline and its target."""
    out = []
    for case in payload["results"]:
        impls = case["impls"]
        base = next((r for r in impls if r.get("baseline")), None)
        # A case whose baseline is itself gankern (e.g. one fused pass vs two) compares gankern
        # with gankern: its rows are shown, and no issue target applies to them.
        own_baseline = base is not None and _is_gankern(base["label"])
        # A "(floor)" row is the case without the piece gankern replaces (no SN, no penalty):
        # baseline time / its time is the most any implementation of that piece could give.
        floor = next((r for r in impls if r["label"].endswith("(floor)") and r.get("time_s")), None)
        ceiling = (base["time_s"] / floor["time_s"]
                   if floor is not None and base is not None and base.get("time_s") else None)
        # SN cases may also time the floor of a per-layer parametrized SN (gankern/bench/floors.py).
        per_layer = next((r for r in impls if r["label"] in PER_LAYER_FLOOR_LABELS and r.get("time_s")), None)
        per_layer_ceiling = (base["time_s"] / per_layer["time_s"]
                             if per_layer is not None and base is not None and base.get("time_s") else None)
        for r in impls:
            if not _is_gankern(r["label"]) or r["status"] == "skipped" or r is base:
                continue
            goal = None if own_baseline else target(case["op"], case["name"], r["label"])
            kind, bar = goal if goal else (SPEEDUP, None)
            value = _metric(r, kind) if r["status"] == "ok" else None
            met = None if bar is None or value is None else value >= bar
            out.append({"op": case["op"], "case": case["name"], "impl": r["label"], "status": r["status"],
                        "time_s": r.get("time_s"), "baseline": base["label"] if base else None,
                        "baseline_s": base.get("time_s") if base else None, "kind": kind, "value": value,
                        "target": bar, "met": met if r["status"] == "ok" else False, "ceiling": ceiling,
                        "per_layer_ceiling": per_layer_ceiling,
                        "error": r.get("error"), "pct_floor": r.get("pct_floor")})
    return out


def _header(payload: dict, json_path: str) -> str:
    env = payload["environment"]
    cpu = env.get("cpu") or {}
    dev = env["device"]
    where = (f"{dev['name']} ({cpu.get('logical_cores')} logical cores, "
             f"{payload.get('threads') or cpu.get('torch_threads')} torch thread(s))"
             if dev["type"] == "cpu" else f"{dev['name']} (driver {env.get('driver')})")
    load = env.get("loadavg_1m")
    load_end = payload.get("loadavg_1m_end")
    load_text = "load average unknown" if load is None else (
        f"load average {load:.1f} at the start" + ("" if load_end is None else f", {load_end:.1f} at the end"))
    commit = (env.get("git") or {}).get("commit") or "unknown"
    dirty = (env.get("git") or {}).get("dirty")
    command = payload.get("command") or ("gankern bench --quick" if payload.get("quick") else "gankern bench")
    chart = re.sub(r"\.json$", ".png", json_path)
    labels = {i["label"] for case in payload["results"] for i in case["impls"]}
    per_layer = ("W·1, through parametrize's own read: that read, one tensor and one autograd node per "
                 "layer, nothing else" if W_TIMES_ONE_FLOOR in labels else
                 "a copy of W read as gankern's SN weights are: the read, one tensor and one autograd node "
                 "per layer, nothing else")
    return (f"`{command}` on {where}, {env['date'][:16].replace('T', ' ')} UTC, {load_text}, commit "
            f"`{commit[:10]}`{' with uncommitted changes' if dirty else ''}, torch {env.get('torch')}. "
            f"Record: [`{json_path}`]({json_path}); chart: [`{chart}`]({chart}). "
            f"Speedup = baseline time / gankern time, medians of interleaved samples; SN rows give the "
            f"SN overhead (time with SN − time without) as times smaller than torch SN's. Ceiling = "
            f"baseline time / the case's floor row (the same work without SN, or without the penalty): "
            f"the speedup if that piece cost nothing at all; in parentheses, where timed, the ceiling of "
            f"any SN computed layer by layer as a parametrization (each weight replaced by {per_layer}).")


def _ceiling_text(r: dict) -> str:
    text = _fmt_x(r["ceiling"])
    if r.get("per_layer_ceiling") is not None:
        text += f" ({_fmt_x(r['per_layer_ceiling'])} per layer)"
    return text


def render_section(payload: dict, json_path: str) -> str:
    """The markdown between the bench-results markers (without them)."""
    lines = [_header(payload, json_path), "",
             "| op | case | gankern | time | baseline | baseline time | figure | target | ceiling | max rel err | % floor |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    table = rows(payload)
    for r in table:
        if r["status"] != "ok":
            figure, verdict = r["status"], "✗"
        else:
            figure = _fmt_x(r["value"]) + (" (overhead)" if r["kind"] == OVERHEAD else "")
            verdict = "" if r["target"] is None else f"≥ {r['target']:.2f}× {'✓' if r['met'] else '✗'}"
        err = r["error"]
        err_text = "-" if err is None else ("inf" if isinstance(err, str) or not math.isfinite(err) else f"{err:.1e}")
        floor = "-" if r["pct_floor"] is None else f"{r['pct_floor']:.0f}"
        lines.append(f"| {r['op']} | {r['case']} | {r['impl']} | {_fmt_time(r['time_s'])} | {r['baseline'] or '-'} | "
                     f"{_fmt_time(r['baseline_s'])} | {figure} | {verdict} | {_ceiling_text(r)} | {err_text} | {floor} |")
    judged = [r for r in table if r["target"] is not None]
    missed = [r for r in judged if not r["met"]]
    over = [{"op": c["op"], "case": c["name"], "impl": r["label"], "pct_floor": r["pct_floor"]}
            for c in payload["results"] for r in c["impls"]
            if r.get("pct_floor") is not None and r["pct_floor"] > 100.0]  # every row, baselines too
    lines.append("")
    lines.append(f"{len(judged) - len(missed)} of {len(judged)} gankern rows meet their target"
                 + ("." if not missed else "; missed: " + "; ".join(
                     f"{r['op']} {r['case']} ({r['impl']}: {_fmt_x(r['value']) if r['value'] else r['status']})"
                     for r in missed) + "."))
    over_text = ", ".join(f"{r['op']} {r['case']} {r['impl']} {r['pct_floor']:.0f}%" for r in over) or "none"
    floor = payload.get("floor") or "bytes moved / DRAM copy bandwidth"
    lines.append(f"Rows above 100% of their floor ({floor}): {over_text}.")
    return "\n".join(lines) + "\n"


def find_row(payload: dict, kind: str, spec: str) -> dict:
    """The implementation a claim names: 'OP | CASE-prefix | IMPL-prefix' (exactly one match)."""
    parts = [p.strip() for p in spec.split("|")]
    if len(parts) != 3:
        raise RenderError(f"bench claim {spec!r}: expected 'OP | CASE | IMPL'")
    op, case_prefix, impl_prefix = parts
    hits = [(c, r) for c in payload["results"] if c["op"] == op and c["name"].startswith(case_prefix)
            for r in c["impls"] if r["label"].startswith(impl_prefix)]
    if len(hits) != 1:
        raise RenderError(f"bench claim {spec!r} matches {len(hits)} rows of the JSON (needs exactly 1)")
    c, r = hits[0]
    value = r.get("overhead_ratio") if kind == "overhead" else r.get("ratio")
    if r["status"] != "ok" or value is None:
        raise RenderError(f"bench claim {spec!r}: the row has no {kind} figure (status {r['status']})")
    return {"value": value}


def render_claims(text: str, payload: dict) -> str:
    def claim(m: re.Match) -> str:
        kind, spec = m.group(1), m.group(2)
        return f"<!-- bench:{kind} {spec} -->{_fmt_x(find_row(payload, kind, spec)['value'])}<!-- /bench -->"

    return CLAIM_RE.sub(claim, text)


def section_source(readme: str) -> str:
    """The JSON path the README's results section names."""
    m = BEGIN_RE.search(readme)
    if not m:
        raise RenderError("the README has no '<!-- bench-results:begin PATH -->' marker")
    return m.group(1)


def render_readme(readme: str, payload: dict, json_path: Optional[str] = None) -> str:
    """readme with its results section and every inline claim regenerated from payload; the
    section's marker is rewritten to json_path when given."""
    m = BEGIN_RE.search(readme)
    end = readme.find(END, m.end()) if m else -1
    if not m or end < 0:
        raise RenderError(f"the README needs '<!-- bench-results:begin PATH -->' ... '{END}' around the results")
    path = json_path or m.group(1)
    body = render_section(payload, path)
    out = readme[:m.start()] + f"<!-- bench-results:begin {path} -->\n" + body + readme[end:]
    return render_claims(out, payload)
