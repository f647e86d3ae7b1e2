"""Where poolwatch's time goes in one benchmark case: a pyinstrument profile, summed up.

    python benchmarks/hotspots.py CASE [--setup poolwatch] [--seconds 5] [--ops 20000]
                                       [--pg postgresql://...] [--interval 0.0002]

Cases: ``uvicorn-json`` / ``uvicorn-items`` (the uvicorn server of section 1b, run and
profiled in this process while ``load.py hit`` loads it from another), ``asgi-json`` /
``asgi-items`` (the direct ASGI calls of section 1a), ``sa-sqlite`` / ``sa-pg`` /
``tortoise-sqlite`` / ``tortoise-pg`` (the poolwatch rows of section 2).

Each case runs twice, the same way: once plain, for the process CPU time per request (or
query), then under pyinstrument, which samples the running stack (``async_mode=
"disabled"``). Every sample is charged to the innermost poolwatch function on its stack,
unless the stack left poolwatch again for the code poolwatch wraps (the framework, the
ORM, the driver, asyncio, the endpoint): a poolwatch function's figure is its own time
plus what it calls for itself (prometheus_client, OpenTelemetry's API, the standard
library), not the application it times. The profiler slows every Python call, so the
share of the profiled CPU time is the figure to trust; "≈ µs" applies that share to the
plain run's CPU time per operation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinstrument import Profiler
from pyinstrument.frame import Frame

import poolwatch

__all__ = ["charges"]

POOLWATCH = str(Path(poolwatch.__file__).resolve().parent) + "/"
BENCHMARKS = str(Path(__file__).resolve().parent) + "/"
# Code poolwatch calls through to (what it wraps): time below it is not poolwatch's.
WRAPPED = (
    "/starlette/", "/fastapi/", "/uvicorn/", "/sqlalchemy/", "/tortoise/", "/asyncpg/",
    "/psycopg/", "/aiosqlite/", "/pypika", "/pydantic", "/asyncio/", "/sqlite3/",
    "/prometheus_fastapi_instrumentator/", "/starlette_exporter/", BENCHMARKS,
)  # fmt: skip
CASES = (
    "uvicorn-json", "uvicorn-items", "asgi-json", "asgi-items",
    "sa-sqlite", "sa-pg", "tortoise-sqlite", "tortoise-pg",
)  # fmt: skip


@dataclass
class Profile:
    """One profiled run and the plain run before it."""

    title: str
    unit: str
    operations: int
    root: Frame | None
    cpu: float  # process CPU seconds of the profiled run
    plain_cpu_per_op: float  # process CPU seconds per operation without the profiler


def _label(frame: Frame) -> str:
    path = frame.file_path or "?"
    if path.startswith(POOLWATCH):
        owner = f"{frame.class_name}." if frame.class_name else ""
        return f"poolwatch/{path.removeprefix(POOLWATCH)}:{owner}{frame.function}"
    short = path.rsplit("site-packages/", 1)[-1].rsplit("/lib/python3", 1)[-1]
    return f"{short}:{frame.function}"


def charges(root: Frame | None) -> dict[tuple[str, str | None], float]:
    """Seconds charged to (poolwatch function, the callee it went through or None).

    See the module docstring; the callee is the first non-poolwatch function below the
    poolwatch one, ``None`` for the poolwatch function's own lines.
    """
    found: dict[tuple[str, str | None], float] = defaultdict(float)
    stack: list[tuple[Frame, str | None, str | None]] = [] if root is None else [(root, None, None)]
    while stack:
        frame, owner, callee = stack.pop()
        path = frame.file_path or ""
        if path.startswith(POOLWATCH):
            owner, callee = _label(frame), None
        elif owner is not None and any(part in path for part in WRAPPED):
            owner = callee = None
        elif owner is not None and callee is None:
            callee = _label(frame)
        if owner is not None:
            found[owner, callee] += frame.total_self_time
        stack.extend((child, owner, callee) for child in frame.children if not child.is_synthetic)
    return found


def report(profile: Profile, rows: int = 15) -> str:
    """A Markdown table of the charges, costliest first, with their costliest callees."""
    found = charges(profile.root)
    by_owner: dict[str, float] = defaultdict(float)
    for (owner, _), seconds in found.items():
        by_owner[owner] += seconds
    unit, plain = profile.unit, profile.plain_cpu_per_op
    units = "queries" if unit == "query" else f"{unit}s"
    lines = [
        f"### Hot spots: {profile.title}",
        "",
        f"{profile.operations:,} {units} profiled; process CPU {plain * 1e6:.1f} µs/{unit} "
        f"without the profiler, {profile.cpu / profile.operations * 1e6:.1f} with it.",
        "",
        f"| poolwatch function | % of CPU (profiled) | ≈ µs/{unit} | of which (% of CPU) |",
        "|---|---|---|---|",
    ]

    def share(seconds: float) -> float:
        return seconds / profile.cpu

    total = sum(by_owner.values())
    lines.append(f"| **all poolwatch** | {share(total):.1%} | {share(total) * plain * 1e6:.2f} | |")
    for owner, seconds in sorted(by_owner.items(), key=lambda item: -item[1])[:rows]:
        callees = sorted(
            ((c, t) for (o, c), t in found.items() if o == owner and c is not None),
            key=lambda item: -item[1],
        )[:3]
        parts = ", ".join(f"{c} {share(t):.1%}" for c, t in callees if share(t) >= 0.001)
        lines.append(
            f"| {owner} | {share(seconds):.1%} | {share(seconds) * plain * 1e6:.2f} | {parts} |"
        )
    return "\n".join(lines)


def _root(profiler: Profiler) -> Frame | None:
    session = profiler.last_session
    return None if session is None else session.root_frame()


def _measure(run: Callable[[], int], interval: float) -> tuple[float, Profiler, float, int]:
    """Plain CPU per operation; then the profiler, its CPU seconds and operations."""
    started = time.process_time()
    operations = run()
    plain = (time.process_time() - started) / operations
    profiler = Profiler(interval=interval, async_mode="disabled")
    started = time.process_time()
    profiler.start()
    try:
        operations = run()
    finally:
        profiler.stop()
    return plain, profiler, time.process_time() - started, operations


# -- cases ---------------------------------------------------------------------------------


def profile_uvicorn(setup: str, endpoint: str, seconds: float, interval: float) -> Profile:
    import uvicorn
    import uvloop
    from apps import build_app
    from load import HOST, SCRIPT, _free_port

    app, undo = build_app(setup)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host=HOST, port=port, loop="none", http="httptools",
                       access_log=False, log_level="warning", lifespan="on")
    )  # fmt: skip
    outcome: dict[str, Any] = {}

    async def hit(duration: float) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "hit", "--port", str(port), "--endpoint", endpoint,
            "--seconds", str(duration), "--warmup", "0",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), timeout=duration + 60)
        return int(json.loads(out)["requests"])

    async def measure(profiler: Profiler | None) -> tuple[float, int]:
        started = time.process_time()
        if profiler is not None:
            profiler.start()
        try:
            requests = await hit(seconds)
        finally:
            if profiler is not None:
                profiler.stop()
        return time.process_time() - started, requests

    async def drive() -> None:
        try:
            for _ in range(600):  # up to 30 s for the server to listen
                if server.started:
                    break
                await asyncio.sleep(0.05)
            await hit(1.0)  # warm-up
            plain, requests = await measure(None)
            profiler = Profiler(interval=interval, async_mode="disabled")
            cpu, profiled = await measure(profiler)
            outcome.update(plain=plain / requests, profiler=profiler, cpu=cpu, ops=profiled)
        finally:
            server.should_exit = True

    async def main() -> None:
        await asyncio.gather(server.serve(), drive())

    try:
        uvloop.run(main())
    finally:
        undo()
    return Profile(
        f"uvicorn, {setup}, GET /{endpoint}", "request", outcome["ops"],
        _root(outcome["profiler"]), outcome["cpu"], outcome["plain"],
    )  # fmt: skip


def profile_asgi(setup: str, endpoint: str, ops: int, interval: float) -> Profile:
    from apps import build_app, paths
    from middleware import _time

    app, undo = build_app(setup)
    targets = [(path, path.encode()) for path in paths(endpoint)]
    loop = asyncio.new_event_loop()

    def run() -> int:
        loop.run_until_complete(_time(app, targets, ops))
        return ops

    try:
        loop.run_until_complete(_time(app, targets, 1000))
        plain, profiler, cpu, done = _measure(run, interval)
    finally:
        loop.close()
        undo()
    title = f"direct ASGI call, {setup}, GET /{endpoint}"
    return Profile(title, "request", done, _root(profiler), cpu, plain)


def profile_sqlalchemy(url: str, ops: int, interval: float) -> Profile:
    from queries import BY_ID, ROWS, ROWS_TABLE
    from sqlalchemy import create_engine, insert

    from poolwatch import PoolWatch

    engine = create_engine(url)
    ROWS_TABLE.metadata.drop_all(engine)
    ROWS_TABLE.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(ROWS_TABLE), [{"id": i, "v": f"v{i}"} for i in range(1, ROWS + 1)])
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine, pool="bench")
    ids = [{"row_id": i % ROWS + 1} for i in range(ops)]
    try:
        with engine.connect() as conn:

            def run() -> int:
                for params in ids:
                    conn.execute(BY_ID, params).all()
                return ops

            run()  # warm-up
            plain, profiler, cpu, done = _measure(run, interval)
    finally:
        watch.uninstrument()
        engine.dispose()
    title = f"SQLAlchemy core select by pk, {url.split('://', maxsplit=1)[0]}"
    return Profile(title, "query", done, _root(profiler), cpu, plain)


def profile_tortoise(url: str, ops: int, interval: float) -> Profile:
    from queries import ROWS, Item
    from tortoise import Tortoise
    from tortoise.backends.base.executor import EXECUTOR_CACHE

    from poolwatch import PoolWatch

    async def run_all() -> Profile:
        EXECUTOR_CACHE.clear()
        await Tortoise.init(db_url=url, modules={"bench": ["queries"]})
        await Tortoise.generate_schemas(safe=True)
        await Item.all().delete()
        await Item.bulk_create([Item(id=i, name=f"n{i}") for i in range(1, ROWS + 1)])
        watch = PoolWatch()
        watch.instrument_tortoise()

        async def run() -> tuple[float, int]:
            started = time.process_time()
            for i in range(ops):
                await Item.get(id=i % ROWS + 1)
            return time.process_time() - started, ops

        try:
            await run()  # warm-up
            plain, _ = await run()
            profiler = Profiler(interval=interval, async_mode="disabled")
            profiler.start()
            try:
                cpu, done = await run()
            finally:
                profiler.stop()
        finally:
            watch.uninstrument()
            await Tortoise.close_connections()
        title = f"Tortoise get by pk, {url.split('://', maxsplit=1)[0]}"
        root = _root(profiler)
        return Profile(title, "query", done, root, cpu, plain / ops)

    return asyncio.run(run_all())


def profile(case: str, args: argparse.Namespace) -> Profile:
    """Run ``case`` plain and profiled."""
    from _pg import temporary_database, with_scheme

    kind, _, target = case.partition("-")
    if kind == "uvicorn":
        return profile_uvicorn(args.setup, target, args.seconds, args.interval)
    if kind == "asgi":
        return profile_asgi(args.setup, target, args.ops, args.interval)
    if kind == "sa":
        run: Callable[[str], Profile] = lambda url: profile_sqlalchemy(  # noqa: E731
            url, args.ops, args.interval
        )
        scheme, memory = "postgresql+psycopg", "sqlite://"
    else:
        run = lambda url: profile_tortoise(url, args.ops // 10, args.interval)  # noqa: E731
        scheme, memory = "asyncpg", "sqlite://:memory:"
    if target == "sqlite":
        return run(memory)
    if not args.pg:
        raise SystemExit(f"{case} needs --pg")
    with temporary_database(args.pg) as url:
        return run(with_scheme(url, scheme))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--setup", default="poolwatch", help="an apps.SETUPS name (HTTP cases)")
    parser.add_argument("--seconds", type=float, default=5.0, help="uvicorn cases")
    parser.add_argument("--ops", type=int, default=20000, help="requests or queries (/10 Tortoise)")
    parser.add_argument("--pg", help="PostgreSQL DSN for the -pg cases")
    parser.add_argument("--interval", type=float, default=0.0002, help="sampling interval, s")
    args = parser.parse_args()
    print(report(profile(args.case, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
