"""Compile every Triton kernel ahead of time for real GPU targets, without a GPU, and read what
the compiled code costs.

Why: the tests run the Triton kernels under TRITON_INTERPRET=1, which never compiles them, so a
kernel that does not compile for sm_80/sm_90 (or spills, or loads 16 bits at a time) would only
show on a GPU. triton.compile with a GPUTarget needs no GPU: it runs the whole pipeline to PTX
and, through the ptxas Triton ships, to a cubin.

Steps: aot_capture.py (child process, interpreter on) records the specializations the launchers
produce; this picks the CI set (every hot path, and per kernel and dtype every value of every
flag at least once) or all of them (--full), compiles each for every --target in a process pool,
and writes one JSON row per (kernel, specialization, target): registers, spills, shared memory,
local memory, the widest global load/store read from the PTX (ld.global.v4.b32 = 128 bits), and
the number of 64-bit integer divides/modulos in the PTX (each a long software routine on a GPU).
"spills" is the local memory per thread / 4, the same count triton's driver reports as n_spills.
Exit status 1 if any compile failed or a kernel was not captured.

    python scripts/aot_compile.py [--full] [--out benchmarks/results/aot-triton.json] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "aot-triton.json")
_LD = re.compile(r"\bld\.global(?:\.[a-z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b")
_ST = re.compile(r"\bst\.global(?:\.[a-z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b")
_DIV64 = re.compile(r"\b(?:div|rem)(?:\.[a-z]+)*\.[su]64\b")
_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def run_capture(thorough: bool) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "specs.json")
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "aot_capture.py"), out] + (["--thorough"] if thorough else []), check=True, env=env,
                       cwd=ROOT)
        with open(out) as f:
            return json.load(f)


def _flags(spec):
    """(dtype group, {flag: value}) of a spec: the group is its pointer types and dtype constexprs."""
    names = list(spec["signature"])
    dtypes, flags = [], {}
    for path, value in spec["constexprs"]:
        name = names[path[0]]
        if isinstance(value, dict):
            dtypes.append(f"{name}={value['dtype']}")
        elif name != "BLOCK" and not name.endswith("_BLOCK") and not name.startswith("BLOCK"):
            flags[name] = value
    dtypes += [f"{k}={v}" for k, v in spec["signature"].items() if v.startswith("*")]
    return tuple(dtypes), flags


def ci_set(specs):
    """Every tagged (hot path) spec, then per kernel: every dtype group at least once and every
    flag value at least once (greedy), preferring the aligned (most 16-divisible arguments) variant."""
    chosen = [s for s in specs if s["tags"]]
    groups, values = set(), set()
    for s in chosen:
        group, flags = _flags(s)
        groups.add((s["module"], s["kernel"], group))
        values.update((s["module"], s["kernel"], kv) for kv in flags.items())
    for s in sorted((s for s in specs if not s["tags"]), key=lambda s: -len(s["attrs"])):
        group, flags = _flags(s)
        new_values = {(s["module"], s["kernel"], kv) for kv in flags.items()} - values
        if new_values or (s["module"], s["kernel"], group) not in groups:
            chosen.append(s)
            groups.add((s["module"], s["kernel"], group))
            values.update(new_values)
    return chosen


def _widest(pattern, ptx):
    best = 0
    for vec, bits in pattern.findall(ptx):
        best = max(best, int(vec or 1) * int(bits))
    return best


def _cuobjdump():
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else "cuobjdump"


def compile_one(job):
    """Compile one spec for one target in this (non-interpreter) process; a row for the JSON."""
    spec, arch = job
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import importlib

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    row = {"kernel": f"{spec['module']}.{spec['kernel']}", "target": f"sm_{arch}", "tags": spec["tags"],
           "signature": spec["signature"], "options": spec["options"],
           "constexprs": {list(spec["signature"])[p[0]]: (v["dtype"] if isinstance(v, dict) else v)
                          for p, v in spec["constexprs"]},
           "aligned": [list(spec["signature"])[p[0]] for p, _ in spec["attrs"]]}
    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    constexprs = {tuple(p): (tl.dtype(v["dtype"]) if isinstance(v, dict) else v) for p, v in spec["constexprs"]}
    attrs = {tuple(p): v for p, v in spec["attrs"]}
    t0 = time.perf_counter()
    try:
        src = triton.compiler.ASTSource(fn, spec["signature"], constexprs, attrs)
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(spec["options"]))
    except Exception as e:  # noqa: BLE001 - every failure is reported, the run fails at the end
        row["error"] = f"{type(e).__name__}: {e}"[:2000]
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 3)
    ptx = kernel.asm["ptx"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    m = _RES.search(usage)
    regs, stack, shared, local = (int(x) for x in m.groups())
    row.update(registers=regs, stack_bytes=stack, local_bytes=local, spills=local // 4,
               shared_bytes=max(shared, kernel.metadata.shared),
               widest_load_bits=_widest(_LD, ptx), widest_store_bits=_widest(_ST, ptx),
               div64=len(_DIV64.findall(ptx)))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="every flag combination driven and every captured specialization compiled (default: the CI set)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--targets", default="80,90", help="compute capabilities, comma separated")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    captured = run_capture(args.full)
    specs = captured["specs"] if args.full else ci_set(captured["specs"])
    jobs = [(s, int(a)) for s in specs for a in args.targets.split(",")]
    t1 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(compile_one, jobs, chunksize=4))
    failed = [r for r in rows if "error" in r]
    result = {
        "what": "Triton kernels compiled ahead of time (no GPU) by scripts/aot_compile.py",
        "set": "full" if args.full else "ci", "triton": _triton_version(),
        "kernels": captured["kernels"], "not_captured": captured["not_captured"],
        "captured_specializations": len(captured["specs"]), "compiled": len(rows), "failed": len(failed),
        "capture_s": round(t1 - t0, 1), "compile_s": round(time.perf_counter() - t1, 1), "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"aot_compile: {len(specs)} of {len(captured['specs'])} specializations x {args.targets} -> "
          f"{len(rows)} compiles, {len(failed)} failed; capture {result['capture_s']}s, compile "
          f"{result['compile_s']}s; {args.out}")
    for r in failed:
        print(f"FAILED {r['kernel']} {r['target']} {r['constexprs']}: {r['error'][:500]}")
    if captured["not_captured"]:
        print(f"NOT CAPTURED (no representative call reaches them): {captured['not_captured']}")
    return 1 if failed or captured["not_captured"] else 0


def _triton_version():
    import triton

    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
