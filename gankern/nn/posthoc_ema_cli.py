"""`gankern ema-synthesize RUN_DIR --sigma-rel S`: the EMA of any length from post-hoc snapshots.

Reads the ema-snapshot-*.pt files that gk.PostHocEMA(out_dir=...) wrote (in RUN_DIR, or in
RUN_DIR/posthoc_ema), solves the least-squares combination for --sigma-rel at --step (default:
the last snapshot) and writes the synthesized state_dict, loadable with
model.load_state_dict(torch.load(path)). Every failure is one line and exit status 2.
"""

from __future__ import annotations

import os
import sys

from .posthoc_ema import SnapshotError, atomic_torch_save, snapshot_paths, synthesize_state_dict
from .power_ema import check_sigma_rel


def configure(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="directory holding ema-snapshot-*.pt "
                        "(or a run directory with a posthoc_ema/ folder)")
    parser.add_argument("--sigma-rel", type=float, required=True,
                        help="relative EMA length to synthesize, in (0, 0.2887), e.g. 0.07")
    parser.add_argument("--step", type=int, default=None,
                        help="training step to synthesize at (default: the last snapshot)")
    parser.add_argument("--out", default=None,
                        help="output file (default: RUN_DIR/ema-sigma<S>-step<N>.pt)")


def _fail(message: str) -> int:
    print(f"gankern ema-synthesize: error: {message}", file=sys.stderr)
    return 2


def main(args) -> int:
    try:
        check_sigma_rel(args.sigma_rel)
    except ValueError as e:
        return _fail(f"--sigma-rel: {e}")
    if args.step is not None and args.step < 1:
        return _fail(f"--step must be >= 1, got {args.step}")
    run_dir = args.run_dir
    nested = os.path.join(run_dir, "posthoc_ema")
    try:
        paths = snapshot_paths(run_dir)
        if not paths and os.path.isdir(nested):
            run_dir, paths = nested, snapshot_paths(nested)
        if not paths:
            return _fail(f"no ema-snapshot-*.pt in {args.run_dir!r} (written by gk.PostHocEMA(out_dir=...))")
        state = synthesize_state_dict(paths, args.sigma_rel, args.step)
        step = args.step if args.step is not None else max(
            int(os.path.basename(p)[len("ema-snapshot-"):-3]) for p in paths)
        out = args.out or os.path.join(run_dir, f"ema-sigma{args.sigma_rel:g}-step{step}.pt")
        atomic_torch_save(state, out)
    except (SnapshotError, ValueError, OSError) as e:
        return _fail(str(e).splitlines()[0])
    print(f"synthesized sigma_rel={args.sigma_rel:g} at step {step} from {len(paths)} snapshot files -> {out}")
    return 0
