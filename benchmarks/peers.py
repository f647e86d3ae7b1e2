"""Autosize's database budget with 1, 2 and 4 app instances sharing one PostgreSQL.

    python benchmarks/peers.py --pg postgresql://postgres@127.0.0.1:5432/postgres [--quick]
                               [--only 1,2,4] [--driver asyncpg|psycopg] [--transactions]
                               [--out benchmarks/out/peers]

Meant for a server with PostgreSQL's default ``max_connections = 100`` (the table says
what the server had). Each instance is a process of its own: Tortoise-ORM on asyncpg,
instrumented by poolwatch, its closed-loop users each running ``pg_sleep(0.02)`` one after
another (an I/O-bound load: throughput grows with every connection), 200 users in all,
(``--driver psycopg``: on psycopg's pool; ``--transactions``: each inside
``in_transaction()``, where the permit goes back once the transaction's release is over),
split evenly between the instances. They connect as an ordinary role made for the run
(the reserved slots are not theirs), to a database made for the run.

For each number of instances, in turn:

* **static**: every instance with a fixed pool, the best static split of what the role may
  open (``max_connections`` less the reserved slots and the run's own session, divided
  evenly), filled before measuring;
* **autosize**: every instance with ``Autosize(min=2, max=90)`` on a pool created at 90,
  all started at once;
* **autosize, one killed** (2 and 4 instances): as above, and the first instance is killed
  (SIGKILL) halfway: the others should take its share within two budget reads.

The full mode runs each setup twice, 30 s each, in a rotated order, and pools the rounds
(the machine's own speed drifts by 10% and more over minutes); ``--quick`` runs once, 20 s.

Reported: requests/s (all instances), p99, connections refused by the server ("too many
clients"), acquire timeouts, each instance's limit 10 s in (and its fair share: what the
tagged pools may hold together, over the number of instances), how long a lone instance
took to reach its max, and after a kill, how long (and how many budget reads) the others
took to reach 85% of their new fair share. Everything runs on 127.0.0.1, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from _pg import temporary_database, with_scheme

__all__ = ["main"]

USERS = 200
CEILING = 90
ACQUIRE_TIMEOUT = 10.0
WAIT_SQL = "SELECT pg_sleep(0.02)"
SETTLED_SHARE = 0.85  # of the fair share, for "took its share"
ROUNDS = 2  # in the full mode, each setup's runs, in a rotated order


# -- one instance (a process of its own) ------------------------------------------------


async def _open(url: str, mode: str) -> tuple[Any, Any, int]:
    """poolwatch and Tortoise for one instance: (watch, client, pool size)."""
    from tortoise import Tortoise, connections

    from poolwatch import Autosize, PoolWatch

    watch = PoolWatch(acquire_timeout=ACQUIRE_TIMEOUT, nplusone_mode="off")
    autosize = mode == "autosize"
    size = CEILING if autosize else int(mode.split("=")[1])
    if autosize:
        watch.instrument_tortoise(autosize=Autosize(min=2, max=CEILING))
    else:
        watch.instrument_tortoise()
    await Tortoise.init(
        db_url=f"{url}?minsize={1 if autosize else size}&maxsize={size}",
        modules={"models": ["tests.tortoise_models"]},
    )
    client = connections.get("default")
    await client.execute_query("SELECT 1")
    return watch, client, size


async def _request(client: Any, *, transactions: bool) -> None:
    if not transactions:
        await client.execute_query(WAIT_SQL)
        return
    from tortoise.transactions import in_transaction

    async with in_transaction() as connection:
        await connection.execute_query(WAIT_SQL)


async def instance(
    url: str, mode: str, users: int, start_at: float, seconds: float, *, transactions: bool
) -> dict[str, Any]:
    from tortoise import Tortoise

    from poolwatch import PoolTimeoutError
    from poolwatch.adapters.tortoise import read_pool_state

    watch, client, size = await _open(url, mode)
    latencies: list[float] = []
    trace: list[tuple[float, int, int, int]] = []  # (seconds in, limit, done, in use)
    reads: list[float] = []  # when a budget read landed
    counts = {"done": 0, "refused": 0, "timeouts": 0}
    await asyncio.sleep(max(0.0, start_at - time.time()))
    began = time.perf_counter()
    deadline = began + seconds

    async def user() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await _request(client, transactions=transactions)
            except PoolTimeoutError:
                counts["timeouts"] += 1
                continue
            except Exception as exc:
                if "too many" not in str(exc) and "remaining connection slots" not in str(exc):
                    raise
                counts["refused"] += 1
                await asyncio.sleep(0.01)
                continue
            latencies.append(time.perf_counter() - started)
            counts["done"] += 1

    async def sampler() -> None:
        last_budget = None
        while True:
            sizer = watch.guards.sizers.get("default")
            now = time.perf_counter() - began
            limit = sizer.limiter.limit if sizer is not None else size
            state = read_pool_state(client)  # the driver's own count of connections in use
            in_use = 0 if state is None else state.used or 0
            trace.append((now, limit, counts["done"], in_use))
            if sizer is not None and sizer.budget is not last_budget:
                last_budget = sizer.budget
                reads.append(now)
            await asyncio.sleep(0.05)

    sampling = asyncio.create_task(sampler())
    try:
        await asyncio.gather(*(user() for _ in range(users)))
    finally:
        sampling.cancel()
        await Tortoise.close_connections()
        watch.uninstrument()
    latencies.sort()
    return {
        **counts,
        "seconds": time.perf_counter() - began,
        "p50": latencies[len(latencies) // 2] if latencies else None,
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else None,
        "latencies": latencies[:: max(1, len(latencies) // 4000)],
        "trace": trace,
        "reads": reads,
        "opened": watch.pool_events("default").opened,
    }


# -- the coordinator ---------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    max_connections: int
    reserved: int
    headroom: int
    others: int  # sessions of others (the run's own) while the instances run

    def usable(self) -> int:
        """What the run's role may open: max_connections less reserved and others."""
        return self.max_connections - self.reserved - self.others

    def room(self) -> int:
        """What the tagged pools may hold together: usable less the headroom."""
        return self.usable() - self.headroom


@dataclasses.dataclass
class Result:
    instances: int
    setup: str
    runs: list[dict[str, Any]]  # the instances that finished
    seconds: float
    killed_at: float | None = None

    def rate(self) -> float:
        return sum(r["done"] for r in self.runs) / self.seconds

    def p99(self) -> float:
        merged = sorted(x for r in self.runs for x in r["latencies"])
        return merged[int(len(merged) * 0.99)] if merged else float("nan")

    def total(self, key: str) -> int:
        return sum(int(r[key]) for r in self.runs)

    def limits_at(self, second: float) -> list[int]:
        out = []
        for run in self.runs:
            at = [limit for t, limit, *_ in run["trace"] if t <= second]
            out.append(at[-1] if at else 0)
        return out

    def reached(self, target: float, since: float = 0.0) -> list[tuple[float | None, int]]:
        """Per instance: seconds after ``since`` until its limit >= target, and the budget
        reads it made meanwhile."""
        out: list[tuple[float | None, int]] = []
        for run in self.runs:
            trace = run["trace"]
            hit = next((t for t, limit, *_ in trace if t >= since and limit >= target), None)
            made = sum(1 for t in run["reads"] if since < t <= (hit if hit is not None else 1e9))
            out.append((None if hit is None else hit - since, made))
        return out


@contextmanager
def bench_role(url: str) -> Iterator[str]:
    """An ordinary role for the instances (the reserved slots are not theirs)."""
    import psycopg
    from psycopg import sql

    name = f"poolwatch_peers_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    parts = urlsplit(url)
    netloc = f"{name}@{parts.hostname}:{parts.port or 5432}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def read_server(admin_url: str) -> Server:
    import psycopg

    from poolwatch.sizing.budget import default_headroom

    with psycopg.connect(admin_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int + "
            "coalesce(current_setting('reserved_connections', true), '0')::int, "
            "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int"
        ).fetchone()
    assert row is not None
    # The run holds one session (the coordinator's) while the instances run.
    return Server(row[0], row[1], default_headroom(row[0]), others=max(1, row[2]))


def run_instances(
    url: str,
    mode: str,
    count: int,
    seconds: float,
    *,
    kill_at: float | None,
    logs: Path,
    transactions: bool,
) -> Result:
    start_at = time.time() + 4.0  # every process imported and connected by then
    users = USERS // count
    command = [
        sys.executable,
        __file__,
        "--instance",
        url,
        mode,
        str(users),
        str(start_at),
        str(seconds),
        "transactions" if transactions else "statements",
    ]
    # The project root on the path (the instances import the tests' Tortoise models);
    # each instance logs autosize's decisions and budget reads (kept in logs/).
    path = os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "BENCH_PEERS_LOG": "1"}
    processes = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(count)
    ]
    if kill_at is not None:
        time.sleep(max(0.0, start_at + kill_at - time.time()))
        processes[0].send_signal(signal.SIGKILL)
    runs = []
    logs.mkdir(parents=True, exist_ok=True)
    for index, process in enumerate(processes):
        out, err = process.communicate(timeout=seconds + 120)
        name = f"{count}-{mode}{'-killed' if kill_at is not None else ''}-{index}.log"
        (logs / name).write_text(err)
        if kill_at is not None and index == 0:
            continue
        if process.returncode != 0:
            raise RuntimeError(f"instance {index} failed:\n{err[-3000:]}")
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return Result(
        count, mode if kill_at is None else "autosize, one killed", runs, seconds, kill_at
    )


def bench(
    url: str, server: Server, counts: Sequence[int], args: argparse.Namespace
) -> list[Result]:
    quick, out = args.quick, Path(args.out)
    seconds = 20.0 if quick else 30.0
    rounds = 1 if quick else ROUNDS
    results = []
    for count in counts:
        static = f"static={server.usable() // count}" if count > 1 else f"static={CEILING}"
        setups: list[tuple[str, float | None]] = [(static, None), ("autosize", None)]
        if count > 1:
            setups.append(("autosize", seconds / 2))
        done: dict[tuple[str, float | None], list[Result]] = {setup: [] for setup in setups}
        for round_ in range(rounds):
            # The machine's speed drifts by 10% and more over minutes: rotate the order.
            for mode, kill_at in setups[round_ % len(setups) :] + setups[: round_ % len(setups)]:
                label = mode if kill_at is None else f"{mode}, one killed"
                print(f"[peers] {count} / {label} / round {round_ + 1}", file=sys.stderr)
                run = run_instances(
                    url,
                    mode,
                    count,
                    seconds,
                    kill_at=kill_at,
                    logs=out / "logs" / f"round{round_ + 1}",
                    transactions=args.transactions,
                )
                done[mode, kill_at].append(run)
        results += [pooled(done[setup]) for setup in setups]
    return results


def pooled(rounds: list[Result]) -> Result:
    """One setup's rounds as one result: requests over the rounds' time, every instance
    of every round (the table shows each one's limit, and the slowest to take a share)."""
    first = rounds[0]
    runs = [run for result in rounds for run in result.runs]
    seconds = sum(result.seconds for result in rounds)
    return Result(first.instances, first.setup, runs, seconds, first.killed_at)


def report(results: list[Result], server: Server, version: str, args: argparse.Namespace) -> str:
    lines = [
        f"PostgreSQL {version}, max_connections = {server.max_connections}, "
        f"{server.reserved} reserved, the run's own sessions {server.others}: the role may "
        f"open {server.usable()}; headroom {server.headroom}, so the tagged pools may hold "
        f"{server.room()} together. I/O-bound load ({WAIT_SQL}"
        f"{' in a transaction' if args.transactions else ''}), {USERS} users in all, "
        f"Tortoise-ORM on {args.driver}, autosize min 2 max {CEILING}.",
        "",
        "| instances | setup | requests/s | vs static | p99 ms | p99 vs static | refused | "
        "timeouts | limits at 10 s (fair share) | reached |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    static: dict[int, Result] = {}
    for result in results:
        if result.setup.startswith("static"):
            static[result.instances] = result
        base = static.get(result.instances)
        fair = server.room() / result.instances
        # A killed instance's requests are lost with it: no throughput to compare.
        compare = base is not None and result is not base and result.killed_at is None
        ratio = f"{result.rate() / base.rate():.0%}" if compare and base else ""
        p99_ratio = f"{result.p99() / base.p99():.2f}x" if compare and base else ""
        limits = ""
        reached = ""
        if result.setup.startswith("autosize"):
            limits = f"{', '.join(map(str, result.limits_at(10.0)))} ({fair:.1f})"
            if result.instances == 1:
                hit = result.reached(CEILING)[0][0]
                reached = "max never" if hit is None else f"max {CEILING} in {hit:.1f} s"
            if result.killed_at is not None:
                share = min(float(CEILING), server.room() / (result.instances - 1))
                took = result.reached(SETTLED_SHARE * share, since=result.killed_at)
                worst = max((t if t is not None else float("inf")) for t, _ in took)
                most = max(n for _, n in took)
                reached = (
                    f"{SETTLED_SHARE:.0%} of the new share ({share:.1f}) in {worst:.1f} s, "
                    f"{most} budget read(s)"
                )
        lines.append(
            f"| {result.instances} | {result.setup} | {result.rate():.0f} | {ratio} | "
            f"{result.p99() * 1000:.0f} | {p99_ratio} | {result.total('refused')} | "
            f"{result.total('timeouts')} | {limits} | {reached} |"
        )
    lines.append("")
    lines.append(
        "A killed instance's own requests are not counted: requests/s of those runs are "
        "the survivors' over the whole run, not compared."
    )
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--instance":
        url, mode, users, start_at, seconds, what = sys.argv[2:8]
        if os.environ.get("BENCH_PEERS_LOG"):  # poolwatch's log lines, to stderr
            import logging

            logging.basicConfig(level=logging.INFO)
        run = instance(
            url,
            mode,
            int(users),
            float(start_at),
            float(seconds),
            transactions=what == "transactions",
        )
        result = asyncio.run(run)
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", required=True, help="postgresql://user@127.0.0.1:port/db")
    parser.add_argument("--quick", action="store_true", help="20 s runs instead of 30 s")
    parser.add_argument("--only", default="1,2,4", help="numbers of instances")
    parser.add_argument("--driver", default="asyncpg", choices=["asyncpg", "psycopg"])
    parser.add_argument("--transactions", action="store_true", help="in_transaction()")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "peers"))
    args = parser.parse_args()
    from _pg import server_version

    counts = [int(n) for n in args.only.split(",") if n]
    with temporary_database(args.pg) as admin_url, bench_role(admin_url) as url:
        server = read_server(admin_url)
        results = bench(with_scheme(url, args.driver), server, counts, args)
        table = report(results, server, server_version(args.pg), args)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
