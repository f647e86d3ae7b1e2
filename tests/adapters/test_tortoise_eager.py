"""Unused eager loads on Tortoise-ORM, in a FastAPI app with a router prefix, a
repository layer, a current-user dependency on a replica connection and response
models over relations; SQLite, and PostgreSQL on asyncpg and psycopg."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.exceptions import ConfigurationError

from poolwatch import PoolWatch
from poolwatch.adapters.tortoise import eager
from poolwatch.events import NPLUSONE, UNUSED_EAGER_LOAD
from poolwatch.testing import capture
from tests.adapters import tortoise_eager_app as shop
from tests.tortoise_models import IGNORE_OLD_PSYCOPG_CLIENT

pytestmark = IGNORE_OLD_PSYCOPG_CLIENT

ME = {"x-customer": "1"}


async def _init(url: str) -> None:
    # Tortoise caches each model's SQL per connection name across re-inits.
    EXECUTOR_CACHE.clear()
    await Tortoise.init(
        config={
            "connections": {"default": url, shop.REPLICA: url},
            "apps": {"models": {"models": shop.MODULES["models"], "default_connection": "default"}},
        }
    )


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("asyncpg", marks=pytest.mark.postgres),
        pytest.param("psycopg", marks=pytest.mark.postgres),
    ]
)
async def shop_client(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, PoolWatch]]:
    """(client, PoolWatch) of the shop over a seeded database, for one driver."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'shop.db'}"
    else:
        dsn = request.getfixturevalue("pg_database")
        url = request.param + "://" + dsn.split("://", 1)[1]
    await _init(url)
    await Tortoise.generate_schemas()
    await shop.seed()
    watch = PoolWatch()
    watch.instrument_tortoise()
    app = shop.build()
    watch.instrument_app(app)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            yield client, watch
    finally:
        watch.uninstrument()
        await Tortoise.close_connections()
        # Tortoise 0.21 merges each init's connections into the last's: without this the
        # next test's single-database init would still have a replica, and transactions
        # that name no connection would refuse to choose. (1.x ends the whole
        # configuration with the close.)
        with contextlib.suppress(ConfigurationError):
            connections.db_config.pop(shop.REPLICA, None)


def _unused(watch: PoolWatch) -> list[dict[str, Any]]:
    return [f for f in watch.findings() if f["kind"] == UNUSED_EAGER_LOAD]


def _counted(watch: PoolWatch, route: str) -> float:
    value = watch.registry.get_sample_value("poolwatch_unused_eager_loads_total", {"route": route})
    return -1.0 if value is None else value


async def test_relations_read_in_code_or_by_the_response_model_are_used(shop_client: Any) -> None:
    client, watch = shop_client
    mine = await client.get("/api/v1/orders/mine", headers=ME)
    assert mine.status_code == 200
    # The events were read by the response model alone, after the endpoint returned.
    assert [e["kind"] for e in mine.json()[0]["events"]] == ["placed", "paid"]
    named = await client.get("/api/v1/orders/customers")
    assert named.json()[0]["customer_name"] == "customer 0"
    assert _unused(watch) == []
    assert [f["kind"] for f in watch.findings() if f["kind"] == NPLUSONE] == []
    assert _counted(watch, "/api/v1/orders/mine") == 0.0  # at zero from the first request


async def test_an_unused_prefetch_is_reported_at_the_repository_call(shop_client: Any) -> None:
    client, watch = shop_client
    for _ in range(2):
        assert (await client.get("/api/v1/orders/totals", headers=ME)).status_code == 200
    [finding] = _unused(watch)
    assert finding["route"] == "/api/v1/orders/totals"
    assert finding["method"] == "GET"
    assert tuple(finding["relations"]) == ("Order.events",)
    assert finding["pool"] == "default"
    assert finding["count"] == 1
    assert finding["occurrences"] == 2
    # The call path runs from the endpoint into the repository method that queried.
    assert "in my_totals" in finding["call_path"]
    assert finding["call_path"].endswith("in OrderRepository.with_events")
    assert finding["fingerprint"].startswith("select ... from shop_order")
    assert 'remove "events" from `prefetch_related(...)`' in finding["suggestion"]
    assert _counted(watch, "/api/v1/orders/totals") == 2.0  # requests, not findings


async def test_an_unused_select_related_is_reported(shop_client: Any) -> None:
    client, watch = shop_client
    assert (await client.get("/api/v1/orders/ids")).status_code == 200
    [finding] = _unused(watch)
    assert tuple(finding["relations"]) == ("Order.customer",)
    assert 'remove "customer" from `select_related(...)`' in finding["suggestion"]


async def test_the_unread_part_of_a_nested_prefetch_is_that_part(shop_client: Any) -> None:
    client, watch = shop_client
    assert (await client.get("/api/v1/customers/order-counts")).status_code == 200
    [finding] = _unused(watch)
    assert tuple(finding["relations"]) == ("Order.events",)
    assert 'prefetch_related("orders__events")' in finding["suggestion"]
    assert 'prefetch_related("orders")' in finding["suggestion"]  # what to write instead


async def test_a_prefetch_on_the_replica_names_the_replica(shop_client: Any) -> None:
    client, watch = shop_client
    assert (await client.get("/api/v1/orders/replica", headers=ME)).status_code == 200
    [finding] = _unused(watch)
    assert finding["pool"] == shop.REPLICA
    assert tuple(finding["relations"]) == ("Order.events",)


async def test_capture_lists_it_apart_from_the_nplusones(shop_client: Any) -> None:
    client, watch = shop_client
    watch.recorder.enabled = False
    with capture() as captured:
        await client.get("/api/v1/orders/totals", headers=ME)
        await client.get("/api/v1/orders/mine", headers=ME)
    [finding] = captured.unused_eager_loads
    assert finding.relations == ("Order.events",)
    assert finding.route == "/api/v1/orders/totals"
    assert captured.nplusone == []  # an unused eager load is no N+1
    assert _unused(watch) == []


async def test_a_fault_in_the_hook_is_counted_and_the_request_succeeds(
    shop_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, watch = shop_client

    def broken(queryset: Any) -> Any:
        raise RuntimeError("the queryset's attributes moved")

    monkeypatch.setattr(eager, "eager_relations", broken)
    response = await client.get("/api/v1/orders/totals", headers=ME)
    assert response.status_code == 200
    assert len(response.json()) == 4
    errors = watch.registry.get_sample_value(
        "poolwatch_internal_errors_total", {"component": "eager_loads"}
    )
    assert errors is not None
    assert errors >= 1
    assert _unused(watch) == []


async def test_relations_are_put_back_after_each_request(shop_client: Any) -> None:
    client, watch = shop_client
    properties = {
        (model, name): model.__dict__[name]
        for model, name in ((shop.Order, "events"), (shop.Order, "customer"))
    }
    for _ in range(20):
        await client.get("/api/v1/orders/totals", headers=ME)
        await client.get("/api/v1/orders/mine", headers=ME)
        await client.get("/api/v1/orders/ids")
    for (model, name), original in properties.items():
        assert model.__dict__[name] is original
    assert len(_unused(watch)) == 2  # aggregated, not one entry per request


async def test_outside_a_request_nothing_is_tracked(shop_client: Any) -> None:
    """No request, no scope: the query runs untouched and nothing is judged."""
    _, watch = shop_client
    orders = await shop.Order.all().prefetch_related("events")
    assert len(orders) == 12
    assert _unused(watch) == []


async def test_the_private_queryset_attributes_read_are_where_they_were(
    shop_client: Any,
) -> None:
    """Fails loudly if a new Tortoise moves what :func:`eager_relations` reads."""
    queryset = shop.Order.all().prefetch_related("events").select_related("customer")
    chains, _ = eager.eager_relations(queryset)
    assert chains == [
        ("prefetch_related", 'prefetch_related("events")', ("events",)),
        ("select_related", 'select_related("customer")', ("customer",)),
    ]
