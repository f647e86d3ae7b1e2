"""What poolwatch run instruments in a process, and with which PoolWatch: driven here by
hand, as the hooks drive it (the end-to-end tests run the hooks in real servers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from poolwatch import PoolWatch, context
from poolwatch.adapters.tortoise import TortoiseInstrumentation
from poolwatch.context import WorkScope
from poolwatch.exposition.middleware import PoolWatchMiddleware
from poolwatch.launch.automatic import POOL_NAMES, Automatic, SkipWhenTimed
from tests.metrics_helpers import total, value


@pytest.fixture
def automatic() -> Iterator[Automatic]:
    made = Automatic({POOL_NAMES: "audit=log"})
    yield made
    if made._watch is not None:
        made._watch.uninstrument()


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def _engine(engines: list[Engine], url: str, **kwargs: Any) -> Engine:
    engine = create_engine(url, **kwargs)
    engines.append(engine)
    return engine


def _app(engine: Engine) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"id": item_id}

    return app


async def _get(app: Any, *paths: str) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return [await client.get(path) for path in paths]


def _statements(watch: PoolWatch, pool: str, route: str = "/items/{item_id}") -> float:
    return value(watch.registry, "db_client_operation_duration_seconds_count",
                 pool=pool, operation="SELECT", route=route)  # fmt: skip


def _pools(watch: PoolWatch) -> set[str]:
    return {
        sample.labels["pool"]
        for family in watch.registry.collect()
        for sample in family.samples
        if "pool" in sample.labels
    }


async def test_an_app_without_poolwatch_gets_it_and_its_engines_their_names(
    automatic: Automatic, engines: list[Engine], tmp_path: Path
) -> None:
    (tmp_path / "replica").mkdir()
    shop = _engine(engines, f"sqlite:///{tmp_path / 'shop.db'}")
    replica = _engine(engines, f"sqlite:///{tmp_path / 'replica' / 'shop.db'}")
    audit = _engine(engines, f"sqlite:///{tmp_path / 'audit.db'}")
    named = _engine(engines, f"sqlite:///{tmp_path / 'x.db'}", logging_name="reports")
    for engine in (shop, replica, audit, named):
        automatic.engine_created(engine)
    assert automatic._watch is None  # engines made before the app starts wait for it
    app = _app(shop)
    automatic.app_building(app)
    watch = automatic.watch
    assert watch is not None
    assert [m.cls for m in app.user_middleware] == [SkipWhenTimed, PoolWatchMiddleware]
    item, metrics = await _get(app, "/items/3", "/metrics")
    assert item.status_code == 200
    assert _statements(watch, "shop") == 1
    assert _pools(watch) >= {"shop", "shop-2", "log", "reports"}
    assert 'db_client_connection_count{pool="shop",state="idle"} 1.0' in metrics.text
    automatic.app_building(app)  # built again (a second lifespan): nothing more
    assert len(app.user_middleware) == 2


async def test_an_app_with_its_own_poolwatch_keeps_it_and_it_gets_the_other_engines(
    automatic: Automatic, engines: list[Engine], tmp_path: Path, make_watch: Any
) -> None:
    shop = _engine(engines, f"sqlite:///{tmp_path / 'shop.db'}")
    audit = _engine(engines, f"sqlite:///{tmp_path / 'audit.db'}")
    automatic.engine_created(shop)
    automatic.engine_created(audit)
    app = _app(shop)
    own = make_watch()
    own.instrument_app(app)
    own.instrument_sqlalchemy(shop, pool="main")
    automatic.app_building(app)
    assert automatic._watch is None  # never needed
    assert automatic.target is own
    assert [m.cls for m in app.user_middleware] == [PoolWatchMiddleware]
    await _get(app, "/items/1")
    with audit.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert _statements(own, "main") == 1
    assert _statements(own, "log", route="none") == 1  # served on the app's /metrics
    assert "shop" not in _pools(own)  # what the app named itself is not named again
    requests = total(own.registry, "http_server_request_duration_seconds_count")
    assert requests == 1


def test_an_app_built_in_a_timed_request_is_left_to_that_requests_poolwatch(
    automatic: Automatic, engines: list[Engine], tmp_path: Path, make_watch: Any
) -> None:
    # Mounted in an app with poolwatch's middleware, or wrapped by watch.wrap(app).
    shop = _engine(engines, f"sqlite:///{tmp_path / 'shop.db'}")
    automatic.engine_created(shop)
    own, sub = make_watch(), FastAPI()
    token = context.enter(WorkScope(asgi_scope={}, owner=own))
    try:
        automatic.app_building(sub)
    finally:
        context.leave(token)
    assert sub.user_middleware == []
    assert automatic._watch is None
    assert automatic.target is own
    assert "shop" in _pools(own)


async def test_a_request_another_middleware_times_is_counted_once(
    automatic: Automatic, engines: list[Engine], tmp_path: Path, make_watch: Any
) -> None:
    engine = _engine(engines, f"sqlite:///{tmp_path / 'shop.db'}")
    outer, sub = FastAPI(), _app(engine)
    outer.mount("/sub", sub)
    own = make_watch()
    own.instrument_app(outer)
    automatic.app_building(sub)  # built on its own first (no request): instrumented
    watch = automatic.watch
    assert watch is not None
    (response,) = await _get(outer, "/sub/items/2")
    assert response.status_code == 200
    assert total(own.registry, "http_server_request_duration_seconds_count") == 1
    assert total(watch.registry, "http_server_request_duration_seconds_count") == 0


async def test_an_app_poolwatch_cannot_instrument_runs_as_it_is(
    automatic: Automatic, caplog: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()

    @app.get("/poolwatch/findings")
    def findings() -> list[str]:
        return []

    with caplog.at_level(logging.ERROR, logger="poolwatch"):
        automatic.app_building(app)
    assert app.user_middleware == []
    assert "poolwatch run: FastAPI is left as it is: findings_path='/poolwatch/findings'" in (
        caplog.text
    )
    (response,) = await _get(app, "/poolwatch/findings")
    assert response.json() == []


async def test_an_engine_made_in_a_lifespan_waits_a_turn_for_the_apps_own_call(
    automatic: Automatic, tmp_path: Path, make_watch: Any
) -> None:
    automatic.app_building(FastAPI())
    own = make_watch()
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
    try:
        automatic.engine_created(engine.sync_engine)
        own.instrument_sqlalchemy(engine, pool="main")  # the lifespan's next line
        later = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}")
        automatic.engine_created(later.sync_engine)
        await asyncio.sleep(0)
        watch = automatic.watch
        assert watch is not None
        assert "shop" not in _pools(watch)  # no series of a pool it never had
        assert "log" in _pools(watch)
        assert "main" in _pools(own)
        await later.dispose()
    finally:
        await engine.dispose()


def test_engines_of_a_spawned_childs_copy_of_main_are_not_the_workers(
    automatic: Automatic, engines: list[Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing.process

    monkeypatch.setattr(multiprocessing.process.current_process(), "_inheriting", True, False)
    automatic.engine_created(_engine(engines, f"sqlite:///{tmp_path / 'shop.db'}"))
    monkeypatch.undo()
    automatic.app_building(FastAPI())
    watch = automatic.watch
    assert watch is not None
    assert "shop" not in _pools(watch)


def test_tortoise_is_instrumented_once_the_app_starts(automatic: Automatic) -> None:
    assert TortoiseInstrumentation.installed() is None
    automatic.tortoise_initialising()
    assert TortoiseInstrumentation.installed() is None  # not before the app starts
    automatic.app_building(FastAPI())
    installed = TortoiseInstrumentation.installed()
    assert installed is not None
    assert installed.automatic
    automatic.tortoise_initialising()  # initialised again: the same one stays
    assert TortoiseInstrumentation.installed() is installed


def test_refused_settings_leave_the_app_as_it_is(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/poolwatch")
    automatic = Automatic({})
    app = FastAPI()
    with caplog.at_level(logging.ERROR, logger="poolwatch"):
        automatic.app_building(app)
    assert app.user_middleware == []
    assert "the app runs without poolwatch" in caplog.text
