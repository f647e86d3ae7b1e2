"""Rounds of hostile traffic against each shop, with and without poolwatch.

For every shop (an ORM and a driver, :mod:`.apps`) the campaign runs three setups on a
fresh database each: the **control** (no poolwatch), **poolwatch** (an acquire timeout
near the typical wait, leak detection) and **autosize** (the same, with autosize). Each
round, ``clients`` concurrent clients (in-process, through ``httpx.ASGITransport``, so an
abandoned request cancels the app's task where it stands) send ``requests`` requests each,
mixing reads, committed and rolled-back transactions, failing SQL, the app's own
``wait_for`` around a transaction, and requests the client abandons mid-flight. In one
round the database is restarted. After every round, with traffic stopped:

* the driver counts no connection in use, and holds no more than the pool's maximum;
* the server has no more sessions than that, and none idle in a transaction;
* poolwatch's gauges equal the driver's, its own accounting is empty, its drift is 0,
  and it counted no internal error and no failed give-back.

A setup with poolwatch may lose nothing; the control's losses are recorded, and whatever
it loses, poolwatch may not lose more. The typical wait is measured per shop first (one
round with poolwatch and no timeout); acquire timeouts, SQLAlchemy's ``pool_timeout`` and
the clients' abandon times are set around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql

from poolwatch import Autosize, PoolWatch
from tests.campaign.apps import (
    SCHEMA,
    Shop,
    SQLAlchemyAsyncShop,
    SQLAlchemySyncShop,
    TortoiseShop,
)
from tests.metrics_helpers import parse_exposition

__all__ = [
    "PROFILES",
    "Profile",
    "Restarter",
    "Round",
    "SetupResult",
    "failures",
    "run_campaign",
    "summary",
]

MAX_SIZE = 10
REQUEST_CAP = 10.0  # a client gives up on any request after this long
ABANDON_SHARE = 0.12  # requests the client abandons after a random fraction of 2 x typical
SETUPS = ("control", "poolwatch", "autosize")

# (name, method, path, weight)
ACTIONS = (
    ("read", "GET", "/api/v1/items/{item}", 40),
    ("order", "POST", "/api/v1/orders?item_id={item}", 15),
    ("rollback", "POST", "/api/v1/orders?item_id={item}&reject=1", 10),
    ("slow", "GET", "/api/v1/reports/slow", 15),
    ("broken", "GET", "/api/v1/reports/broken", 8),
    ("guarded", "GET", "/api/v1/reports/guarded?within={within}", 12),
)


@dataclasses.dataclass(frozen=True)
class Profile:
    """How long and how wide the campaign runs."""

    name: str
    rounds: int
    clients: int
    requests: int  # per client and round
    restart_round: int  # 1-based; the database restarts a third of the way into it
    shops: tuple[str, ...]
    seed: int = 13


SHOPS = (
    "tortoise-asyncpg",
    "sqlalchemy-async-asyncpg",
    "tortoise-psycopg",
    "sqlalchemy-async-psycopg",
    "sqlalchemy-sync-psycopg",
)

PROFILES = {
    "short": Profile("short", rounds=4, clients=200, requests=10, restart_round=3, shops=SHOPS[:2]),
    "long": Profile("long", rounds=12, clients=200, requests=25, restart_round=6, shops=SHOPS),
}


@dataclasses.dataclass
class Round:
    """One round of one setup: what was sent, and what was left afterwards."""

    number: int
    requests: int = 0
    actions: Counter[str] = dataclasses.field(default_factory=Counter)
    outcomes: Counter[str] = dataclasses.field(default_factory=Counter)
    restarted: bool = False
    seconds: float = 0.0
    in_use: int = 0  # the driver's count once traffic stopped: connections lost
    size: int = 0
    sessions: int = 0
    idle_in_transaction: int = 0
    poolwatch: dict[str, float] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SetupResult:
    """One shop under one setup, over all its rounds."""

    shop: str
    setup: str
    typical_wait: float
    rounds: list[Round] = dataclasses.field(default_factory=list)

    @property
    def lost(self) -> int:
        """Connections the driver still had out after the last round run."""
        return self.rounds[-1].in_use if self.rounds else 0

    @property
    def most_lost(self) -> int:
        return max((r.in_use for r in self.rounds), default=0)

    @property
    def problems(self) -> list[str]:
        return [f"round {r.number}: {p}" for r in self.rounds for p in r.problems]

    def total(self, outcome: str) -> int:
        return sum(r.outcomes[outcome] for r in self.rounds)

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.rounds)


# -- the database -------------------------------------------------------------------------


def _admin(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def fresh_database(dsn: str) -> str:
    """A new database on ``dsn``'s server with the shop's schema; its DSN."""
    name = f"shop_{uuid.uuid4().hex[:10]}"
    with _admin(dsn) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = urlsplit(dsn)._replace(path=f"/{name}").geturl()
    with _admin(database) as connection:
        connection.execute(SCHEMA)
    return database


def drop_database(dsn: str, database: str) -> None:
    name = urlsplit(database).path.lstrip("/")
    with _admin(dsn) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def server_sessions(database: str) -> tuple[int, int]:
    """(sessions on the database, those idle in a transaction), from the checker's side."""
    name = urlsplit(database).path.lstrip("/")
    with _admin(database) as connection:
        row = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE state LIKE 'idle in transaction%%') "
            "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


# -- one round ----------------------------------------------------------------------------


class Restarter:
    """Restarts the database server (stop, a pause, start) in a thread."""

    def __init__(self, stop: Callable[[], None], start: Callable[[], None]) -> None:
        self.stop = stop
        self.start = start

    async def restart(self) -> None:
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(self.start)


async def _client(
    http: httpx.AsyncClient,
    rng: random.Random,
    *,
    count: int,
    typical: float,
    record: Round,
    progress: Callable[[], None],
) -> None:
    names = [a[0] for a in ACTIONS]
    weights = [a[3] for a in ACTIONS]
    by_name = {a[0]: a for a in ACTIONS}
    for _ in range(count):
        name = rng.choices(names, weights)[0]
        _, method, path, _ = by_name[name]
        # The app's own deadline (guarded) scattered around the typical wait, so that some
        # fire just as a connection is handed over.
        url = path.format(item=rng.randint(1, 50), within=rng.uniform(0.25, 1.5) * typical)
        abandon = rng.random() < ABANDON_SHARE
        limit = rng.uniform(0.0, 2.0 * typical) if abandon else REQUEST_CAP
        record.actions[name] += 1
        try:
            response = await asyncio.wait_for(http.request(method, url), limit)
            record.outcomes[str(response.status_code)] += 1
        except TimeoutError:
            record.outcomes["abandoned" if abandon else "client timeout"] += 1
        except Exception as exc:
            record.outcomes[type(exc).__name__] += 1
        record.requests += 1
        progress()


async def _settle(shop: Shop, seconds: float) -> int:
    """The driver's count of connections in use, once it stops falling (or ``seconds``)."""
    for _ in range(int(seconds / 0.05)):
        if not shop.in_use():
            break
        await asyncio.sleep(0.05)
    return shop.in_use()


async def run_round(
    shop: Shop,
    http: httpx.AsyncClient,
    profile: Profile,
    *,
    number: int,
    typical: float,
    restarter: Restarter | None,
) -> Round:
    record = Round(number)
    rng = random.Random(f"{profile.seed}-{shop.name}-{number}")
    total = profile.clients * profile.requests
    restart_at = total // 3 if restarter is not None else -1
    restarted = asyncio.Event()
    pending: list[asyncio.Task[None]] = []

    def progress() -> None:
        if record.requests == restart_at and restarter is not None and not restarted.is_set():
            restarted.set()
            pending.append(asyncio.create_task(restarter.restart()))

    started = time.monotonic()
    clients = [
        _client(
            http,
            random.Random(rng.random()),
            count=profile.requests,
            typical=typical,
            record=record,
            progress=progress,
        )
        for _ in range(profile.clients)
    ]
    await asyncio.gather(*clients)
    for task in pending:
        await task
    record.restarted = restarted.is_set()
    record.seconds = time.monotonic() - started
    # A restart leaves reconnects and terminated connections to clear up: give it longer.
    record.in_use = await _settle(shop, 15.0 if record.restarted else 5.0)
    record.size = record.in_use + shop.idle()
    return record


def _poolwatch_view(text: str, pool: str) -> dict[str, float]:
    samples = parse_exposition(text)

    def one(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), float("nan"))

    internal = sum(
        count for (name, _), count in samples.items() if name == "poolwatch_internal_errors_total"
    )
    return {
        "used": one("db_client_connection_count", pool=pool, state="used"),
        "idle": one("db_client_connection_count", pool=pool, state="idle"),
        "pending": one("db_client_connection_pending_requests", pool=pool),
        "drift": one("poolwatch_pool_drift", pool=pool),
        "internal_errors": internal,
        "reclaimed": sum(
            one("poolwatch_connections_reclaimed_total", pool=pool, outcome=o)
            for o in ("returned", "closed")
        ),
        "reclaim_failed": one("poolwatch_connections_reclaimed_total", pool=pool, outcome="failed"),
        "timeouts": one("db_client_connection_timeouts_total", pool=pool),
    }


async def _judge(
    record: Round,
    shop: Shop,
    database: str,
    http: httpx.AsyncClient,
    watch: PoolWatch | None,
) -> None:
    record.sessions, record.idle_in_transaction = await asyncio.to_thread(server_sessions, database)
    problems = record.problems
    if record.in_use:
        problems.append(f"the driver still has {record.in_use} connection(s) in use")
    if record.size > shop.max_size:
        problems.append(f"the pool holds {record.size} connections, above {shop.max_size}")
    if record.sessions > shop.max_size:
        problems.append(f"the server has {record.sessions} sessions, above {shop.max_size}")
    if record.idle_in_transaction:
        problems.append(f"{record.idle_in_transaction} session(s) idle in transaction")
    if watch is None:
        return
    view = record.poolwatch = _poolwatch_view((await http.get("/metrics")).text, shop.pool)
    observer = watch._observers[shop.pool]
    expected = {"used": record.in_use, "idle": shop.idle(), "pending": 0, "drift": 0}
    for key, want in expected.items():
        if view[key] != want:
            problems.append(f"poolwatch's {key} is {view[key]:g}, the driver's {want}")
    if observer.checked_out() or observer.pending() or observer.returning:
        problems.append(
            f"poolwatch still counts {observer.checked_out()} out, {observer.pending()} "
            f"waiting, {observer.returning} returning"
        )
    if view["internal_errors"]:
        problems.append(f"{view['internal_errors']:g} poolwatch internal error(s)")
    if view["reclaim_failed"]:
        problems.append(f"{view['reclaim_failed']:g} failed give-back(s)")


# -- a setup, a shop, the campaign -------------------------------------------------------


def _make_shop(name: str, database: str, typical: float) -> Shop:
    """The shop ``name``, with SQLAlchemy's ``pool_timeout`` at ``typical``."""
    if name.startswith("tortoise-"):
        return TortoiseShop(database, name.removeprefix("tortoise-"), MAX_SIZE)
    if name == "sqlalchemy-sync-psycopg":
        return SQLAlchemySyncShop(database, MAX_SIZE, typical)
    driver = name.removeprefix("sqlalchemy-async-")
    return SQLAlchemyAsyncShop(database, driver, MAX_SIZE, typical)


def _watch(setup: str, typical: float) -> PoolWatch | None:
    if setup == "control":
        return None
    return PoolWatch(acquire_timeout=typical, leak_threshold=30.0)


async def run_setup(
    shop_name: str,
    setup: str,
    profile: Profile,
    *,
    dsn: str,
    typical: float,
    restarter: Restarter,
    log: Callable[[str], None],
) -> SetupResult:
    result = SetupResult(shop_name, setup, typical)
    database = fresh_database(dsn)
    shop = _make_shop(shop_name, database, typical)
    watch = _watch(setup, typical)
    if watch is not None:
        autosize = Autosize(min=2) if setup == "autosize" else None
        shop.instrument(watch, autosize)
    try:
        await shop.start()
        transport = httpx.ASGITransport(app=shop.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
            for number in range(1, profile.rounds + 1):
                restart = restarter if number == profile.restart_round else None
                record = await run_round(
                    shop, http, profile, number=number, typical=typical, restarter=restart
                )
                await _judge(record, shop, database, http, watch)
                result.rounds.append(record)
                log(_round_line(result, record))
                if setup == "control" and record.in_use >= shop.max_size:
                    log(f"    {shop_name}/control: every connection lost; no more rounds")
                    break
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(shop.stop(), 10)
        if watch is not None:
            watch.uninstrument()
        with contextlib.suppress(Exception):
            drop_database(dsn, database)
    return result


async def calibrate(shop_name: str, profile: Profile, dsn: str) -> float:
    """The median latency of successful requests with poolwatch and no timeout: the
    typical wait for a connection under this load (most of a request is that wait)."""
    database = fresh_database(dsn)
    shop = _make_shop(shop_name, database, 30.0)
    watch = PoolWatch()
    shop.instrument(watch, None)
    latencies: list[float] = []
    try:
        await shop.start()
        transport = httpx.ASGITransport(app=shop.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:

            async def client(seed: int) -> None:
                rng = random.Random(seed)
                for _ in range(max(2, profile.requests // 2)):
                    started = time.monotonic()
                    response = await http.get(f"/api/v1/items/{rng.randint(1, 50)}")
                    if rng.random() < 0.5:
                        response = await http.get("/api/v1/reports/slow")
                    if response.status_code == 200:
                        latencies.append(time.monotonic() - started)

            await asyncio.gather(*(client(i) for i in range(profile.clients)))
    finally:
        await shop.stop()
        watch.uninstrument()
        drop_database(dsn, database)
    return statistics.median(latencies)


def _round_line(result: SetupResult, record: Round) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(record.outcomes.items()))
    verdict = "ok" if not record.problems else "; ".join(record.problems)
    restart = " (database restarted)" if record.restarted else ""
    return (
        f"  {result.shop}/{result.setup} round {record.number}{restart}: {record.requests} "
        f"requests in {record.seconds:.1f} s [{outcomes}]; lost {record.in_use}: {verdict}"
    )


async def run_campaign(
    profile: Profile,
    dsn: str,
    restarter: Restarter,
    log: Callable[[str], None] = print,
) -> list[SetupResult]:
    """Every shop of ``profile`` under every setup; the results in order."""
    results: list[SetupResult] = []
    for shop_name in profile.shops:
        typical = await calibrate(shop_name, profile, dsn)
        log(f"{shop_name}: typical wait {typical * 1000:.0f} ms")
        for setup in SETUPS:
            results.append(
                await run_setup(
                    shop_name,
                    setup,
                    profile,
                    dsn=dsn,
                    typical=typical,
                    restarter=restarter,
                    log=log,
                )
            )
    return results


def failures(results: list[SetupResult]) -> list[str]:
    """What makes the campaign fail: any problem with poolwatch, or more lost than the
    control of the same shop."""
    control = {r.shop: r.most_lost for r in results if r.setup == "control"}
    found = []
    for result in results:
        if result.setup == "control":
            continue
        found += [f"{result.shop}/{result.setup} {p}" for p in result.problems]
        if result.most_lost > control.get(result.shop, 0):
            found.append(f"{result.shop}/{result.setup} lost more than the control")
    return found


def summary(profile: Profile, results: list[SetupResult]) -> str:
    """A Markdown table of the campaign."""
    lines = [
        f"Profile `{profile.name}`: {profile.rounds} rounds of {profile.clients} clients x "
        f"{profile.requests} requests, database restarted in round {profile.restart_round}.",
        "",
        "| shop | setup | rounds | requests | abandoned | rolled back | failing SQL | "
        "app timeouts | pool timeouts | 5xx | reclaimed | connections lost | problems |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        actions = Counter[str]()
        for record in result.rounds:
            actions.update(record.actions)
        five = sum(result.total(code) for code in ("500", "503"))
        last = result.rounds[-1].poolwatch if result.rounds else {}
        reclaimed = f"{last.get('reclaimed', 0):.0f}" if last else "n/a"
        timeouts = f"{last.get('timeouts', 0):.0f}" if last else "n/a"
        lines.append(
            f"| {result.shop} | {result.setup} | {len(result.rounds)} | {result.requests} | "
            f"{result.total('abandoned')} | {actions['rollback']} | {actions['broken']} | "
            f"{result.total('504')} | {timeouts} | {five} | {reclaimed} | "
            f"{result.most_lost} | {len(result.problems)} |"
        )
    return "\n".join(lines)
