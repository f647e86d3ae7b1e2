"""``poolwatch run`` end to end: real servers (uvicorn, ``uvicorn --workers 2``, gunicorn
with two uvicorn workers, ``fastapi run``, hypercorn, ``python -m``) started by the
launcher on 127.0.0.1, serving apps written here the way apps are (a module-level engine
and a router with a prefix, an app factory whose lifespan makes an async engine, a
Tortoise app with RegisterTortoise, an app that instruments itself), none of them
changed for poolwatch. Each checks what a user would on ``/metrics``: the queries of a
route under its full template, counted once, and the pool's gauges."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.metrics_helpers import parse_exposition
from tests.servers import HOST, free_port

BIN = Path(sys.executable).parent
POOL_MAX = 5  # pool_size 3 + max_overflow 2 in every app below
ITEM = "/api/items/{item_id}"

SHOP = """\
    import os

    from fastapi import APIRouter, FastAPI
    from sqlalchemy import create_engine, text

    engine = create_engine("sqlite:///shop.db", pool_size=3, max_overflow=2)
    router = APIRouter(prefix="/api")


    @router.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.execute(text("SELECT 2"))
        return {"pid": os.getpid()}


    reports = FastAPI()  # a sub-app, mounted


    @reports.get("/daily")
    def daily() -> dict[str, int]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 3"))
        return {"pid": os.getpid()}


    app = FastAPI()
    app.include_router(router)
    app.mount("/reports", reports)

    if __name__ == "__main__":
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
"""

FACTORY = """\
    import os
    from contextlib import asynccontextmanager

    from fastapi import APIRouter, FastAPI, Request
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import AsyncAdaptedQueuePool


    def create_app() -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI):
            # (SQLAlchemy 2.0 gives a SQLite file a NullPool by default, 2.1 a queue.)
            engine = create_async_engine("sqlite+aiosqlite:///orders.db", pool_size=3,
                                         max_overflow=2, poolclass=AsyncAdaptedQueuePool)
            app.state.engine = engine
            yield
            await engine.dispose()

        router = APIRouter(prefix="/api")

        @router.get("/items/{item_id}")
        async def item(item_id: int, request: Request) -> dict[str, int]:
            async with request.app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                await conn.execute(text("SELECT 2"))
            return {"pid": os.getpid()}

        app = FastAPI(lifespan=lifespan)
        app.include_router(router)
        return app
"""

AUTHORS = """\
    import os
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from tortoise import fields
    from tortoise.contrib.fastapi import RegisterTortoise
    from tortoise.models import Model


    class Author(Model):
        id = fields.IntField(primary_key=True)
        name = fields.CharField(max_length=50)

        class Meta:
            app = "models"


    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with RegisterTortoise(app, db_url="sqlite://authors.db",
                                    modules={"models": ["authors"]}, generate_schemas=True):
            yield


    app = FastAPI(lifespan=lifespan)


    @app.get("/api/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        await Author.filter(id=item_id).first()
        await Author.filter(name="x").count()
        return {"pid": os.getpid()}
"""

EXPLICIT = """\
    import os

    from fastapi import APIRouter, FastAPI
    from sqlalchemy import create_engine, text

    from poolwatch import PoolWatch

    engine = create_engine("sqlite:///shop.db", pool_size=3, max_overflow=2)
    router = APIRouter(prefix="/api")


    @router.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.execute(text("SELECT 2"))
        return {"pid": os.getpid()}


    app = FastAPI()
    app.include_router(router)
    watch = PoolWatch()
    watch.instrument_app(app)
    watch.instrument_sqlalchemy(engine, pool="main")
"""

APPS = {"shop": SHOP, "orders": FACTORY, "authors": AUTHORS, "explicit": EXPLICIT}
PORT = "{port}"  # in a command: the server's port


class Server:
    """``poolwatch run -- COMMAND`` in ``cwd``, stopped (SIGTERM, then SIGKILL) at exit."""

    def __init__(self, cwd: Path, port: int, command: list[str]) -> None:
        self.port = port
        self.log_path = cwd / "server.log"
        env = {**os.environ, "PORT": str(port)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.pop("WEB_CONCURRENCY", None)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "poolwatch", "run", "--", *command],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str) -> tuple[int, str]:
        # A connection per request: the kernel hands them to different workers.
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited:\n{self.log()}")
            with contextlib.suppress(OSError):
                self.get("/metrics")
                return
            time.sleep(0.1)
        raise AssertionError(f"the server did not answer in {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, text = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}:\n{self.log()}"
        return parse_exposition(text)


def _sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
            **labels: str) -> float | None:  # fmt: skip
    return samples.get((name, frozenset(labels.items())))


Serve = Callable[..., Server]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``serve(command, *apps)``: the apps written to a directory, the command run there
    under ``poolwatch run`` and ready; stopped after the test."""
    started: list[Server] = []

    def start(command: list[str], *apps: str) -> Server:
        for name in apps:
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(APPS[name]))
        port = free_port()
        words = [word.replace(PORT, str(port)) for word in command]
        program = words[0] if words[0] == sys.executable else str(BIN / words[0])
        if not Path(program).exists():
            pytest.skip(f"{words[0]} is not installed")
        server = Server(tmp_path, port, [program, *words[1:]])
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


def _hit(server: Server, workers: int = 1, at_least: int = 4) -> int:
    """Requests to the item route until each worker has served one; how many were sent."""
    pids: set[str] = set()
    sent = 0
    deadline = time.monotonic() + 20  # a worker still starting answers none
    while sent < at_least or len(pids) < workers:
        assert time.monotonic() < deadline, f"{len(pids)} of {workers} workers answered"
        status, body = server.get(f"/api/items/{sent + 1}")
        assert status == 200, f"{status} {body}\n{server.log()}"
        pids.add(body)
        sent += 1
        if sent >= at_least:
            time.sleep(0.02)
    return sent


def _check_route(server: Server, pool: str, sent: int, workers: int = 1) -> None:
    """What a user checks: the route's queries, counted once, and the pool's gauges."""
    deadline = time.monotonic() + 5
    while True:  # the workers write their pool gauges on each checkout, and every 0.5 s
        samples = server.metrics()
        pool_max = _sample(samples, "db_client_connection_max", pool=pool)
        used = _sample(samples, "db_client_connection_count", pool=pool, state="used")
        if (pool_max == POOL_MAX * workers and used == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert _sample(samples, "poolwatch_request_queries_count", route=ITEM) == sent, server.log()
    assert _sample(samples, "poolwatch_request_queries_sum", route=ITEM) == 2 * sent
    assert _sample(samples, "http_server_request_duration_seconds_count",
                   method="GET", route=ITEM, status="200") == sent  # fmt: skip
    statements = sum(
        value
        for (name, labels), value in samples.items()
        if name == "db_client_operation_duration_seconds_count"
        and dict(labels).get("route") == ITEM
        and dict(labels).get("pool") == pool
    )
    assert statements == 2 * sent
    assert pool_max == POOL_MAX * workers  # each worker's pool, summed
    assert used == 0
    idle = _sample(samples, "db_client_connection_count", pool=pool, state="idle")
    assert idle is not None
    assert idle >= workers


def test_uvicorn(serve: Serve) -> None:
    server = serve(["uvicorn", "shop:app", "--host", HOST, "--port", PORT], "shop")
    sent = _hit(server)
    _check_route(server, "shop", sent)
    # A mounted app's requests: under the mount's full template, counted once.
    for _ in range(3):
        assert server.get("/reports/daily")[0] == 200
    samples = server.metrics()
    assert _sample(samples, "poolwatch_request_queries_count", route="/reports/daily") == 3
    assert _sample(samples, "poolwatch_request_queries_sum", route="/reports/daily") == 3


def test_uvicorn_factory_with_an_async_engine_made_in_its_lifespan(serve: Serve) -> None:
    server = serve(
        ["uvicorn", "--factory", "orders:create_app", "--host", HOST, "--port", PORT],
        "orders",
    )
    _check_route(server, "orders", _hit(server))


def test_uvicorn_with_two_workers_shows_both_in_one_scrape(serve: Serve) -> None:
    server = serve(
        ["uvicorn", "shop:app", "--host", HOST, "--port", PORT, "--workers", "2"], "shop"
    )
    assert "2 workers: multiprocess mode" in server.log()
    _check_route(server, "shop", _hit(server, workers=2), workers=2)


def test_gunicorn_with_two_uvicorn_workers(serve: Serve) -> None:
    command = ["gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
               "--bind", f"{HOST}:{PORT}", "shop:app"]  # fmt: skip
    server = serve(command, "shop")
    _check_route(server, "shop", _hit(server, workers=2), workers=2)
    shared = next(
        line.split(" in ")[1].split(" (")[0] for line in server.log().splitlines()
        if "multiprocess mode" in line
    )  # fmt: skip
    server.stop()
    assert not Path(shared).exists()  # removed when the command's process exited


@pytest.mark.skipif(importlib.util.find_spec("fastapi_cli") is None, reason="no fastapi-cli")
def test_fastapi_run(serve: Serve) -> None:
    server = serve(["fastapi", "run", "shop.py", "--host", HOST, "--port", PORT], "shop")
    _check_route(server, "shop", _hit(server))


@pytest.mark.skipif(importlib.util.find_spec("hypercorn") is None, reason="no hypercorn")
def test_hypercorn(serve: Serve) -> None:
    server = serve(["hypercorn", "shop:app", "--bind", f"{HOST}:{PORT}"], "shop")
    _check_route(server, "shop", _hit(server))


def test_uvicorn_with_a_tortoise_app(serve: Serve) -> None:
    server = serve(["uvicorn", "authors:app", "--host", HOST, "--port", PORT], "authors")
    sent = _hit(server)
    samples = server.metrics()
    assert _sample(samples, "poolwatch_request_queries_count", route=ITEM) == sent
    assert _sample(samples, "poolwatch_request_queries_sum", route=ITEM) == 2 * sent
    assert _sample(samples, "db_client_operation_duration_seconds_count",
                   operation="SELECT", pool="default", route=ITEM) == 2 * sent  # fmt: skip
    assert _sample(samples, "db_client_connection_count", pool="default", state="used") == 0


def test_python_m(serve: Serve) -> None:
    server = serve([sys.executable, "-m", "shop"], "shop")
    _check_route(server, "shop", _hit(server))


def test_an_app_that_instruments_itself_is_counted_once(serve: Serve) -> None:
    server = serve(["uvicorn", "explicit:app", "--host", HOST, "--port", PORT], "explicit")
    sent = _hit(server)
    _check_route(server, "main", sent)  # the app's own name, its queries once
    assert not any(dict(labels).get("pool") == "shop" for _, labels in server.metrics())
