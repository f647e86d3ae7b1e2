"""``python -m tests.campaign [--profile short|long] [--out FILE]``

Starts a throwaway PostgreSQL cluster on 127.0.0.1 (as the ``postgres`` user when run as
root), runs the campaign against it, prints every round and a summary table, and stops the
cluster. Exits 1 if a setup with poolwatch lost a connection or broke a check, or lost
more than the control.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

from tests.campaign.run import PROFILES, Restarter, failures, run_campaign, summary
from tests.servers import HOST, Postgres, workdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.campaign", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--out", type=Path, help="also write the summary (Markdown) here")
    parser.add_argument(
        "--log", type=Path, help="the apps' and drivers' log (default: a temporary file)"
    )
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    # Drivers log every refused reconnect during the restart with a traceback: keep them,
    # but out of the round lines.
    log = args.log or Path(tempfile.mkstemp(prefix="poolwatch-campaign-", suffix=".log")[1])
    logging.basicConfig(filename=log, level=logging.WARNING, force=True)
    print(f"logs: {log}")
    started = time.monotonic()
    with workdir() as work, Postgres(work) as postgres:
        dsn = f"postgresql://postgres@{HOST}:{postgres.port}/postgres"
        results = asyncio.run(run_campaign(profile, dsn, Restarter(postgres.stop, postgres.start)))
    table = summary(profile, results)
    print(table)
    print(f"\n{time.monotonic() - started:.0f} s")
    if args.out is not None:
        args.out.write_text(table + "\n")
    problems = failures(results)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
