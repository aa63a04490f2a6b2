#!/usr/bin/env python
"""Regenerate the README's benchmark results and every inline speed figure from one JSON.

    python scripts/bench_readme.py benchmarks/results/2026-12-01-cpu-quick.json --plot
    python scripts/bench_readme.py --check     # exit 1 when README.md is not what its JSON renders

The JSON is a `gankern bench --json` record (machine, load, date, commit, every sample); with
no path, the one the README's `<!-- bench-results:begin PATH -->` marker names. --plot redraws
the chart beside it (same name, .png) from the same record. See gankern/bench/readme_section.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gankern.bench import readme_section, report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="?", help="bench --json record, relative to the repository root "
                                                "(default: the one the README names)")
    parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README is stale")
    parser.add_argument("--plot", action="store_true", help="also redraw the chart beside the JSON")
    args = parser.parse_args(argv)
    with open(args.readme, encoding="utf-8") as f:
        readme = f.read()
    try:
        rel = args.json or readme_section.section_source(readme)
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            payload = json.load(f)
        new = readme_section.render_readme(readme, payload, rel)
    except (OSError, ValueError) as e:
        print(f"bench_readme: {e}", file=sys.stderr)
        return 2
    if args.check:
        if new != readme:
            print(f"bench_readme: {args.readme} is stale; run python scripts/bench_readme.py {rel}", file=sys.stderr)
            return 1
        return 0
    if new != readme:
        with open(args.readme, "w", encoding="utf-8") as f:
            f.write(new)
        print(f"updated {args.readme} from {rel}")
    if args.plot:
        chart = os.path.join(ROOT, rel[:-len(".json")] + ".png" if rel.endswith(".json") else rel + ".png")
        env = payload["environment"]
        report.plot(report.results_from_json(payload), chart,
                    title=f"gankern bench: {env['device']['name']} ({env['date'][:10]})")
        print(f"wrote {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
