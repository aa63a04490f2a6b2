"""The `gankern` command (also `python -m gankern`).

Each subcommand lives in its own module exposing configure(parser) and main(args) -> int, so
the command grows without this file becoming a grab-bag. A bad value that a subcommand does not
catch itself (e.g. GANKERN_IMPL=foo) still ends in one "gankern <command>: error: ..." line and
exit status 2; GANKERN_TRACEBACK=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
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
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gankern", description="Fused kernels for GAN training (C++ on the CPU; CUDA and Triton on GPUs).")
    parser.add_argument("--version", action="version", version=f"gankern {__version__}")
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
    except (ValueError, TypeError) as e:
        if os.environ.get("GANKERN_TRACEBACK") == "1":
            raise
        text = str(e).strip()
        print(f"gankern {args.command}: error: {text.splitlines()[0] if text else type(e).__name__}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
