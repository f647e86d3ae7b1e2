"""``python -m loadtests SCENARIO [...]``: run load tests and judge the alerts they fire.

    python -m loadtests healthy                 # one scenario, full length
    python -m loadtests all --ci                # every scenario, short (what CI runs)
    python -m loadtests nplusone_storm --workers 4   # Locust as a master and 4 workers
    python -m loadtests healthy --host http://127.0.0.1:8000   # your running app

Exit status 0 when every must-fire alert fired, no must-not-fire alert did and every
dashboard query returned data; 1 otherwise. Reports: loadtests/out/<scenario>/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from loadtests.runner import OUT, environment_ready, run, table
from loadtests.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests", description=__doc__.splitlines()[0]
    )
    parser.add_argument("scenario", nargs="+", help=f"'all' or any of: {', '.join(SCENARIOS)}")
    parser.add_argument("--ci", action="store_true", help="short runs (CI mode)")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--workers", type=int, default=0, help="Locust worker processes")
    parser.add_argument("--host", help="load this running app instead of starting one")
    parser.add_argument("--out", type=Path, default=OUT, help="where reports go")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == ["all"] else args.scenario
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    if args.host is not None and not args.host.startswith(
        ("http://127.0.0.1", "http://[::1]", "http://localhost")
    ):
        parser.error("--host: load tests target 127.0.0.1 / ::1 only")
    missing = environment_ready()
    if missing:
        print("cannot run load tests here, missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    started = time.monotonic()
    results = run(
        names, ci=args.ci, sqlite=args.sqlite, workers=args.workers, host=args.host, out=args.out
    )
    summary = table(results)
    print(summary)
    print(
        f"\n{len(results)} scenario(s) in {time.monotonic() - started:.0f} s; reports in {args.out}"
    )
    (args.out / "summary.md").write_text(summary + "\n")
    return 0 if all(r.ok or r.skipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
