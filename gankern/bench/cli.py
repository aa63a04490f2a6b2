"""`gankern bench`: every op, every backend, against the references, in one table.

Each implementation's result is checked against the float64 reference before it is timed (a
wrong result shows WRONG and no time); the survivors are timed side by side in this process.
speedup = baseline time / time (baseline marked *); % floor = how close a memory-bound case
comes to a plain streaming kernel (read-only sum, copy, in-place add) moving the same bytes, timed the same way.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="smaller cases and fewer repeats (under 2 minutes on a 2-core CPU)")
    parser.add_argument("--ops", default=None, metavar="OP[,OP...]",
                        help="only these ops (see --list), e.g. --ops ema,spectral_norm")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results and machine info as JSON")
    parser.add_argument("--plot", default=None, metavar="PATH", help="write a bar chart of the speedups (PNG)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to run (auto: cuda when available)")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help="timing rounds per case (default 21, quick 11; cut to fit a time budget)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's; 1 when the CPU is already busy, because "
                             "OpenMP threads spinning against other processes make times meaningless)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--list", action="store_true", help="list the ops that have cases and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gankern bench: --device cuda, but torch sees no CUDA device")
    return torch.device(name)


def _command_line(args) -> str:
    words = ["gankern bench"]
    if args.quick:
        words.append("--quick")
    for flag in ("ops", "device", "repeats", "threads"):
        value = getattr(args, flag)
        if value is not None and not (flag == "device" and value == "auto"):
            words.append(f"--{flag} {value}")
    return " ".join(words)


def main(args) -> int:
    from . import machine, report, runner

    available = runner.case_modules()
    if args.list:
        print("\n".join(available))
        return 0
    if args.ops:
        ops = [o.strip() for o in args.ops.split(",") if o.strip()]
        unknown = [o for o in ops if o not in available]
        if unknown or not ops:
            print(f"gankern bench: --ops: unknown op(s) {', '.join(unknown) or '(none given)'}; "
                  f"available: {', '.join(available)}", file=sys.stderr)
            return 2
    else:
        ops = available
    if args.repeats is not None and args.repeats < 1:
        print("gankern bench: --repeats must be >= 1", file=sys.stderr)
        return 2
    device = _pick_device(args.device)
    cfg = runner.TimingConfig.quick() if args.quick else runner.TimingConfig()
    if args.repeats is not None:
        cfg.repeats = args.repeats
        cfg.min_rounds = min(cfg.min_rounds, args.repeats)

    if args.threads is not None:
        if args.threads < 1:
            print("gankern bench: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    elif device.type == "cpu":
        load, cores = machine.load_average(), os.cpu_count() or 1
        if load is not None and load >= cores and torch.get_num_threads() > 1:
            torch.set_num_threads(1)
            print(f"note: load average {load:.1f} on {cores} cores: running with 1 torch thread "
                  f"(--threads N overrides)", file=sys.stderr)
    env = machine.environment(device)
    print(f"gankern bench on {env['device']['name']} ({device.type}), torch {env['torch']}, "
          f"triton {env['triton']}, commit {(env['git']['commit'] or '?')[:10]}"
          f"{' (dirty)' if env['git']['dirty'] else ''}{', quick' if args.quick else ''}", file=sys.stderr)
    load, cores = env.get("loadavg_1m"), env["cpu"]["logical_cores"] or 1
    if device.type == "cpu" and load is not None and load > 0.75 * cores:
        print(f"warning: load average {load:.1f} on {cores} cores: other processes share this CPU, "
              f"so times are noisy (compare ratios, and the best_s column of the JSON)", file=sys.stderr)
    bandwidth = machine.measure_bandwidth(device)
    print(f"DRAM copy bandwidth {bandwidth / 1e9:.1f} GB/s; each case's floor is the fastest of a sum, a copy "
          f"and an in-place add of its own bytes, timed like it (so it holds at whatever cache level the data fits)",
          file=sys.stderr)

    bar = None
    if not args.no_progress:
        from ..progress import Progress

        bar = Progress(len(ops), "bench")  # a bar on a terminal, a line every 10 s in a log

    def progress(msg: str) -> None:
        if bar is not None:
            bar.set_postfix(refresh=True, now=msg[:60])

    results = runner.run_ops(ops, device, args.quick, cfg, bandwidth, progress,
                             on_op_done=(lambda op: bar.update(1)) if bar is not None else None,
                             measure_floor=True)
    if bar is not None:
        bar.close()

    print(report.format_table(results, markdown=args.markdown))
    print(f"\n{env['device']['name']}, {env['date'][:10]}; speedup = baseline (*) time / time; "
          f"error = max relative error vs the float64 reference; WRONG: over tolerance, not timed")
    if args.json:
        payload = report.to_json(results, env, bandwidth=bandwidth, quick=args.quick, timing=vars(cfg).copy())
        # What scripts/bench_readme.py states beside the figures: how to rerun them, and how busy
        # the machine was at the end too (a load that rose mid-run shows in no single sample).
        payload["command"] = _command_line(args)
        payload["threads"] = torch.get_num_threads()
        payload["loadavg_1m_end"] = machine.load_average()
        payload["floor"] = "the fastest per byte of a read-only sum, a copy and an in-place add of the case's bytes (and of half of them), timed like it"
        report.write_json(args.json, payload)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        report.plot(results, args.plot, title=f"gankern bench: {env['device']['name']} ({env['date'][:10]})")
        print(f"wrote {args.plot}", file=sys.stderr)
    bad = [(c.op, c.name, r.label) for c in results for r in c.impls if r.status in ("WRONG", "failed")]
    return 1 if bad else 0
