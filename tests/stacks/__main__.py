"""``python -m tests.stacks [--mode short|full] [--stack NAME ...] [--out FILE]``

Runs the stack matrix against the servers the test command describes
(``POOLWATCH_TEST_PG_DSN``, ``POOLWATCH_TEST_MYSQL_URL``), prints each cell as it ends and
the table, and exits 1 if any cell failed its checks. ``--mode full`` (the default here)
sends each cell 100 clients x 60 requests; the test suite runs ``short``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tests.stacks.run import MODES, run_matrix, servers_from_environment
from tests.stacks.stacks import STACKS, WIRINGS
from tests.stacks.verdicts import failures, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stacks", description=__doc__)
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument("--stack", action="append", choices=[s.name for s in STACKS])
    parser.add_argument("--wiring", action="append", choices=WIRINGS)
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    stacks = [s for s in STACKS if not args.stack or s.name in args.stack]
    started = time.monotonic()
    results = run_matrix(
        servers_from_environment(),
        MODES[args.mode],
        stacks=stacks,
        wirings=args.wiring or WIRINGS,
    )
    text = table(results)
    print(text)
    print(f"\n{time.monotonic() - started:.0f} s")
    if args.out is not None:
        args.out.write_text(text + "\n")
    problems = failures(results)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
