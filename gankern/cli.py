"""The `gankern` command (also `python -m gankern`).

Each subcommand lives in its own module exposing configure(parser) and main(args) -> int, so
the command grows without this file becoming a grab-bag.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "info": ("gankern._info", "versions, backends built and usable, the device"),
    "demo": ("gankern.train.demo", "the main job: a GAN on the 8-Gaussian ring through the fused ops"),
    "train": ("gankern.train.cli", "train a GAN on ring, grid, digits or an image folder"),
    "dirac": ("gankern.train.dirac", "the Dirac GAN: trajectories per loss and regularizer"),
    "bench": ("gankern.bench.cli", "benchmark table: every op, every backend, vs the references"),
    "ema-synthesize": ("gankern.nn.posthoc_ema_cli", "post-hoc EMA: synthesize any EMA length from snapshots"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gankern", description="Fused GPU kernels for GAN training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        module = importlib.import_module(COMMANDS[name][0])
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.configure(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
