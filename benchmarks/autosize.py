"""Autosize against static pool sizes, on PostgreSQL, under three loads.

    python benchmarks/autosize.py --pg postgresql://user@127.0.0.1:5432/db [--quick]
                                  [--only compute,wait,mixed] [--out benchmarks/out/autosize]

The application is a purpose-built endpoint set run in process by closed-loop users
(each runs one "request" after another, no think time), through Tortoise-ORM on asyncpg
with poolwatch instrumenting it, on a database of the run's own:

* **compute**: a request runs a CPU-bound statement (``sum`` over a generated series,
  a few milliseconds of server CPU). The best pool is about the server's core count;
* **wait**: a request runs ``pg_sleep(0.02)``. Throughput grows with every connection;
* **mixed**: compute and wait alternate while the users step 5 -> 50 -> 200 -> 20.

Each load runs with several static sizes (``maxsize`` = 2, 10, 90; the pool is filled
before measuring) and with autosize (``min=2``, ``max=90``; the pool created with
``maxsize=90``, ``minsize=1``), in turn, in rounds: the machine's own speed drifts by
10% and more over minutes, so the full mode runs the compute and wait loads' setups
twice, in a rotated order, 30 s each, and pools the rounds (each round is a fresh start,
autosize's ramp from 2 connections included); the mixed load's four 30 s phases run
once. The quick mode runs one round of 20 s (12 s phases).

Requests that wait more than 10 s for a connection fail with ``PoolTimeoutError``
(``acquire_timeout``) and are counted. Reported per load and setup: requests/s (pooled,
and each round's), p50 and p99 latency, acquire timeouts, mean and max connections in
use, and for autosize the time each phase took to settle (the limit stays within 20% of
where the phase ends; the longest of the rounds).
The limit, in-use and waiting counts over time are drawn to PNG beside the load.
Everything runs on 127.0.0.1, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _pg import temporary_database, with_scheme
from tortoise import Tortoise, connections, fields
from tortoise.models import Model

from poolwatch import Autosize, PoolTimeoutError, PoolWatch

__all__ = ["main"]

STATIC = (2, 10, 90)
CEILING = 90
ACQUIRE_TIMEOUT = 10.0
COMPUTE_SQL = "SELECT sum(i) FROM generate_series(1, 40000) AS i"
WAIT_SQL = "SELECT pg_sleep(0.02)"


class Marker(Model):
    """Tortoise wants one model per app; the loads query no table."""

    id = fields.IntField(primary_key=True)


@dataclasses.dataclass(frozen=True)
class Phase:
    kind: str  # "compute" or "wait"
    users: int
    seconds: float


@dataclasses.dataclass
class Run:
    setup: str
    load: str
    phases: Sequence[Phase]
    latencies: list[float] = dataclasses.field(default_factory=list)
    done: int = 0
    timeouts: int = 0
    seconds: float = 0.0
    # (time since start, limit, in use, waiting), every 100 ms
    trace: list[tuple[float, int, int, int]] = dataclasses.field(default_factory=list)
    settle: list[float | None] = dataclasses.field(default_factory=list)
    # Pooled over rounds: connections in use at every sample, each round's requests/s.
    in_use: list[int] = dataclasses.field(default_factory=list)
    per_round: list[float] = dataclasses.field(default_factory=list)


def loads(quick: bool) -> dict[str, tuple[int, list[Phase]]]:
    """Each load's rounds and the phases of one round."""
    long, step = (20.0, 12.0) if quick else (30.0, 30.0)
    rounds, mixed_rounds = (1, 1) if quick else (2, 1)
    return {
        "compute": (rounds, [Phase("compute", 200, long)]),
        "wait": (rounds, [Phase("wait", 200, long)]),
        "mixed": (
            mixed_rounds,
            [
                Phase("compute", 5, step),
                Phase("wait", 50, step),
                Phase("compute", 200, step),
                Phase("wait", 20, step),
            ],
        ),
    }


async def run_one(url: str, setup: str, load: str, phases: Sequence[Phase]) -> Run:
    size = CEILING if setup == "autosize" else int(setup.split("=")[1])
    watch = PoolWatch(acquire_timeout=ACQUIRE_TIMEOUT, nplusone_mode="off")
    if setup == "autosize":
        watch.instrument_tortoise(autosize=Autosize(min=2, max=CEILING))
    else:
        watch.instrument_tortoise()
    # A static pool is opened full; autosize's is created at the ceiling and starts small.
    smallest = 1 if setup == "autosize" else size
    await Tortoise.init(
        db_url=f"{url}?minsize={smallest}&maxsize={size}",
        modules={"models": [__name__]},
    )
    client = connections.get("default")
    run = Run(setup, load, phases)
    try:
        await client.execute_query("SELECT 1")
        await _measure(run, client, watch)
    finally:
        await Tortoise.close_connections()
        watch.uninstrument()
    return run


async def _measure(run: Run, client: Any, watch: PoolWatch) -> None:
    started = time.perf_counter()
    phase_index = 0
    stop_all = False

    async def user(index: int) -> None:
        while not stop_all:
            phase = run.phases[phase_index]
            if index >= phase.users:
                await asyncio.sleep(0.05)
                continue
            sql = COMPUTE_SQL if phase.kind == "compute" else WAIT_SQL
            began = time.perf_counter()
            try:
                await client.execute_query(sql)
            except PoolTimeoutError:
                run.timeouts += 1
                continue
            run.latencies.append(time.perf_counter() - began)
            run.done += 1

    async def sampler() -> None:
        observer = watch.pool_events("default")
        while True:
            sizer = watch.guards.sizers.get("default")
            pool = client._pool
            limit = sizer.limiter.limit if sizer is not None else pool.get_max_size()
            in_use = pool.get_size() - pool.get_idle_size()
            run.trace.append(
                (time.perf_counter() - started, limit, in_use, observer.pending())  # type: ignore[attr-defined]
            )
            await asyncio.sleep(0.1)

    most = max(p.users for p in run.phases)
    users = [asyncio.create_task(user(i)) for i in range(most)]
    tracing = asyncio.create_task(sampler())
    boundaries = []
    for index, phase in enumerate(run.phases):
        phase_index = index
        boundaries.append(time.perf_counter() - started)
        await asyncio.sleep(phase.seconds)
    run.seconds = time.perf_counter() - started
    stop_all = True
    tracing.cancel()
    await asyncio.gather(*users, return_exceptions=True)
    boundaries.append(run.seconds)
    if run.setup == "autosize":
        run.settle = [
            _settle(run.trace, boundaries[i], boundaries[i + 1]) for i in range(len(run.phases))
        ]


def _settle(trace: list[tuple[float, int, int, int]], start: float, end: float) -> float | None:
    """Seconds after ``start`` from which the limit stays within 20% of its final third."""
    inside = [(t, limit) for t, limit, _, _ in trace if start <= t < end]
    if not inside:
        return None
    tail = [limit for t, limit in inside if t >= start + (end - start) * 2 / 3]
    final = statistics.median(tail) if tail else inside[-1][1]
    band = max(1.0, 0.2 * final)
    settled_at = start
    for t, limit in inside:
        if abs(limit - final) > band:
            settled_at = t
    return settled_at - start


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(runs: list[Run], out: Path) -> str:
    lines = [
        "| load | setup | requests/s | each round | p50 ms | p99 ms | acquire timeouts "
        "| mean in use | max in use | settle s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for load in dict.fromkeys(r.load for r in runs):
        rows = [r for r in runs if r.load == load]
        for r in rows:
            in_use = r.in_use or [u for _, _, u, _ in r.trace]
            each = ", ".join(f"{x:,.0f}" for x in r.per_round)
            settle = (
                ""
                if not r.settle
                else ", ".join("-" if s is None else f"{s:.0f}" for s in r.settle)
            )
            p50, p99 = percentile(r.latencies, 0.5), percentile(r.latencies, 0.99)
            lines.append(
                f"| {load} | {r.setup} | {r.done / r.seconds:,.0f} | {each} | {p50 * 1e3:.1f} | "
                f"{p99 * 1e3:.1f} | {r.timeouts} | {statistics.mean(in_use):.1f} | "
                f"{max(in_use)} | {settle} |"
            )
        best = max((r for r in rows if r.setup != "autosize"), key=lambda r: r.done / r.seconds)
        auto = next(r for r in rows if r.setup == "autosize")
        share = (auto.done / auto.seconds) / (best.done / best.seconds)
        p99 = percentile(auto.latencies, 0.99) / percentile(best.latencies, 0.99)
        settled = all(s is not None and s <= 30 for s in auto.settle)
        ok = share >= 0.95 and p99 <= 1.1 and auto.timeouts == 0 and settled
        verdicts.append(
            f"- {load}: autosize {share:.0%} of the best static ({best.setup}) throughput, "
            f"p99 {p99:.2f}x, {auto.timeouts} timeouts, settled within 30 s: "
            f"{'yes' if settled else 'no'} -> **{'met' if ok else 'missed'}**"
        )
        _plot(auto, out / f"autosize-{load}.png")
    targets = "Targets (≥ 95% throughput, ≤ 1.1x p99, 0 timeouts, settle ≤ 30 s):"
    return "\n".join([*lines, "", targets, *verdicts])


def _plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p[0] for p in run.trace]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t, [p[1] for p in run.trace], label="limit", linewidth=2)
    ax.plot(t, [p[2] for p in run.trace], label="in use", alpha=0.8)
    ax.plot(t, [p[3] for p in run.trace], label="waiting", alpha=0.6)
    edge = 0.0
    for phase in run.phases:
        ax.axvspan(
            edge, edge + phase.seconds, alpha=0.08 if phase.kind == "compute" else 0.0, color="red"
        )
        ax.text(
            edge + 0.5,
            ax.get_ylim()[1] * 0.95 if ax.get_ylim()[1] else 1,
            f"{phase.kind}, {phase.users} users",
            fontsize=8,
            va="top",
        )
        edge += phase.seconds
    ax.set_xlabel("seconds")
    ax.set_ylabel("connections / requests")
    ax.set_title(f"autosize, {run.load} load (shaded: compute)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pooled(rounds: list[Run]) -> Run:
    """One setup's rounds as one run: counts and latencies added up, the settle time of
    each phase the longest of any round, the trace of the first round (for the plot)."""
    first = rounds[0]
    run = Run(first.setup, first.load, first.phases, trace=first.trace)
    for one in rounds:
        run.latencies += one.latencies
        run.done += one.done
        run.timeouts += one.timeouts
        run.seconds += one.seconds
        run.in_use += [u for _, _, u, _ in one.trace]
        run.per_round.append(one.done / one.seconds)
    if first.settle:
        run.settle = [
            None if any(s is None for s in phase) else max(s for s in phase if s is not None)
            for phase in zip(*(one.settle for one in rounds), strict=True)
        ]
    return run


async def bench(url: str, quick: bool, out: Path, only: Sequence[str]) -> str:
    runs = []
    setups = [f"static={n}" for n in STATIC] + ["autosize"]
    for load, (rounds, phases) in loads(quick).items():
        if only and load not in only:
            continue
        done: dict[str, list[Run]] = {setup: [] for setup in setups}
        for round_ in range(rounds):
            order = setups[round_ % len(setups) :] + setups[: round_ % len(setups)]
            for setup in order:
                print(f"[autosize] {load} / {setup} / round {round_ + 1} ...", file=sys.stderr)
                done[setup].append(await run_one(url, setup, load, phases))
        runs += [pooled(done[setup]) for setup in setups]
    return report(runs, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", required=True, help="postgresql://user@127.0.0.1:port/db")
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--only", default="", help="comma-separated loads: compute,wait,mixed")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "autosize"))
    args = parser.parse_args()
    out = Path(args.out)
    with temporary_database(args.pg) as url:
        table = asyncio.run(
            bench(
                with_scheme(url, "asyncpg"), args.quick, out, [o for o in args.only.split(",") if o]
            )
        )
    print(table)
    (out / "report.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
