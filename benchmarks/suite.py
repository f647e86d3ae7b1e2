"""poolwatch's benchmark suite: what it costs per request, query, scrape and import.

    python benchmarks/suite.py [--pg postgresql://user@127.0.0.1:port/db] [--quick]
                               [--only middleware,uvicorn,queries,scrape,detection,import]

Prints Markdown: the machine, then one table per section, then every target with its
verdict and the run time. Sections (each also runnable alone; see its module):

1. per request, middleware only: a. in process (:mod:`middleware`), b. through uvicorn
   (:mod:`load`); bare FastAPI, poolwatch, prometheus-fastapi-instrumentator,
   starlette-exporter;
2. per query (:mod:`queries`): bare, poolwatch, OpenTelemetry, an event-pair floor;
   SQLite in memory, and PostgreSQL with ``--pg`` (its rows are skipped without it);
3. per scrape (:mod:`scrape`): ``GET /metrics`` vs ``generate_latest``, 1k-50k series;
4. N+1 detection (:mod:`detection`): counting vs detecting, per statement;
5. import time (:mod:`importtime`).

Method, everywhere: setups run interleaved (A B C, C B A, ...), figures are medians over
rounds and comparisons are ratios of medians against the uninstrumented baseline, with
the interquartile range of the per-round ratios as the spread (see :mod:`_timing`).
``--quick`` takes a minute or two and is for trying the suite out; the full run takes
about ten minutes and is the one to quote. Where a target is missed,
``benchmarks/hotspots.py`` profiles that case and sums the time poolwatch's functions
take. Everything runs on 127.0.0.1; PostgreSQL rows use a database of their own,
created and dropped by the run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from _pg import server_version
from _timing import Table
from detection import bench_detection
from importtime import bench_import
from load import bench_uvicorn
from middleware import bench_in_process
from queries import bench_queries
from scrape import bench_scrape

SECTIONS = ("middleware", "uvicorn", "queries", "scrape", "detection", "import")
PACKAGES = (
    "poolwatch", "fastapi", "starlette", "uvicorn", "uvloop", "httptools",
    "prometheus-client", "prometheus-fastapi-instrumentator", "starlette-exporter",
    "opentelemetry-sdk", "opentelemetry-instrumentation-sqlalchemy",
    "opentelemetry-instrumentation-tortoiseorm", "SQLAlchemy", "tortoise-orm", "psycopg",
    "asyncpg", "aiosqlite",
)  # fmt: skip


@dataclass(frozen=True)
class Effort:
    """How long each section runs."""

    middleware_rounds: int
    middleware_requests: int
    uvicorn_rounds: int
    uvicorn_seconds: float
    query_rounds: int
    query_ops: int
    scrape_seconds: float
    detection_rounds: int
    detection_requests: int
    import_runs: int


FULL = Effort(15, 3000, 10, 1.5, 15, 3000, 4.0, 9, 100, 15)
QUICK = Effort(5, 1000, 2, 1.0, 5, 600, 1.5, 3, 20, 5)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        finished = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return finished.stdout.strip()


def _poolwatch_revision() -> str:
    changed = _git("status", "--porcelain", "--", "poolwatch")
    state = "clean" if not changed else "with uncommitted changes"
    return f"commit {_git('rev-parse', '--short', 'HEAD')}, poolwatch/ {state}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(pg: str | None) -> str:
    """The facts that make the figures comparable, as a Markdown list."""
    getter = getattr(os, "sched_getaffinity", None)
    usable = len(getter(0)) if getter is not None else os.cpu_count()
    lines = [
        "### Machine",
        "",
        f"- CPUs: {os.cpu_count()} ({usable} usable by this process), {_cpu_model()}",
        f"- Load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- {platform.python_implementation()} {platform.python_version()} on "
        f"{platform.system()} {platform.release()}",
        f"- poolwatch: {_poolwatch_revision()}",
        "- " + ", ".join(f"{p} {_version(p)}" for p in PACKAGES),
    ]
    if pg:
        lines.append(f"- PostgreSQL {server_version(pg)} on 127.0.0.1")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", help="PostgreSQL DSN (postgresql://user@127.0.0.1:port/db)")
    parser.add_argument("--quick", action="store_true", help="a short run (1-2 minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    effort = QUICK if args.quick else FULL
    sections: dict[str, Callable[[], Table]] = {
        "middleware": lambda: bench_in_process(
            effort.middleware_rounds, effort.middleware_requests
        ),
        "uvicorn": lambda: bench_uvicorn(effort.uvicorn_rounds, effort.uvicorn_seconds),
        "queries": lambda: bench_queries(effort.query_rounds, effort.query_ops, args.pg),
        "scrape": lambda: bench_scrape(effort.scrape_seconds),
        "detection": lambda: bench_detection(effort.detection_rounds, effort.detection_requests),
        "import": lambda: bench_import(effort.import_runs),
    }
    command = " ".join(["python", "benchmarks/suite.py", *sys.argv[1:]])
    started = time.monotonic()
    scope = "all sections" if only == list(SECTIONS) else "sections: " + ", ".join(only)
    print(f"## poolwatch benchmarks ({'quick' if args.quick else 'full'} run, {scope})\n")
    print(f"`{command}`\n")
    print(machine(args.pg), end="\n\n", flush=True)
    tables: list[Table] = []
    for name in SECTIONS:
        if name not in only:
            continue
        print(f"[suite] {name}...", file=sys.stderr, flush=True)
        section_started = time.monotonic()
        table = sections[name]()
        table.notes.append(f"Section time: {time.monotonic() - section_started:.0f} s.")
        tables.append(table)
        print(table.render(), end="\n\n", flush=True)
    summary = Table("Targets", ["table / row", "target"])
    for table in tables:
        for where, target in table.targets:
            summary.rows.append([where, str(target)])
    print(summary.render(), end="\n\n")
    print(f"Run time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
