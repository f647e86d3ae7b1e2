"""Route labels on apps shaped like real ones: the full template, across every level.

The app below has what public FastAPI apps have: routers nested with prefixes at every
level (and one router included twice), a repository between the routes and the ORM, a
current-user dependency, a tenant sub-app mounted under a path parameter, a Starlette
sub-app with a mount of its own, a plain ASGI app mounted as is, a host-routed API and a
websocket. Every label must be the template the author wrote, whatever the URL held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, WebSocket
from sqlalchemy import Engine, create_engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route

from poolwatch import PoolWatch
from tests.metrics_helpers import total

OPS = "db_client_operation_duration_seconds_count"
HTTP = "http_server_request_duration_seconds_count"


class Articles:
    """The repository layer: routes never see SQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def one(self, article_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT id, title FROM articles WHERE id = :id"), {"id": article_id}
            ).first()
        return None if row is None else {"id": row.id, "title": row.title}

    def titles(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r.title for r in conn.execute(text("SELECT title FROM articles"))]


def current_user(authorization: Annotated[str, Header()] = "token alice") -> str:
    return authorization.removeprefix("token ")


User = Annotated[str, Depends(current_user)]


def build(engine: Engine) -> FastAPI:
    articles = Articles(engine)

    # /api/v1/admin/users/{user_id}: prefixes from the router itself and from each include.
    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    def get_user(user_id: int, user: User) -> dict[str, Any]:
        return {"user": user, "article": articles.one(user_id)}

    @users.delete("/{user_id}")
    def delete_user(user_id: int, user: User) -> dict[str, Any]:
        return {"article": articles.one(user_id)}

    admin = APIRouter(prefix="/admin")
    admin.include_router(users)
    v1 = APIRouter()
    v1.include_router(admin, prefix="/v1")

    root = APIRouter()

    @root.get("/")
    def index() -> list[str]:
        return articles.titles()

    app = FastAPI()
    app.include_router(v1, prefix="/api")
    app.include_router(v1, prefix="/legacy-api")  # the same routers under a second prefix
    app.include_router(root)

    # A tenant's own FastAPI app, mounted under a path parameter, with a router inside.
    tenant = FastAPI()
    items = APIRouter(prefix="/items")

    @items.get("/{item_id}")
    def item(item_id: int) -> dict[str, Any]:
        return {"article": articles.one(item_id)}

    tenant.include_router(items, prefix="/shop")
    app.mount("/t/{tenant}", tenant)

    # A Starlette app with a mount of its own, also under a parameter.
    async def page(request: Request) -> PlainTextResponse:
        await asyncio.to_thread(articles.one, int(request.path_params["n"]))
        return PlainTextResponse("page")

    pages = Starlette(
        routes=[Route("/p/{n:int}", page), Mount("/book/{book}", routes=[Route("/p/{n}", page)])]
    )
    app.mount("/docs", pages)

    # A plain ASGI app mounted as is: no routes inside, the mount is the route.
    async def legacy(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.to_thread(articles.titles)
        await PlainTextResponse("legacy")(scope, receive, send)

    app.mount("/old", legacy)

    # Requests for another host go to another app.
    partner = FastAPI()

    @partner.get("/orders/{order_id}")
    def order(order_id: int) -> dict[str, Any]:
        return {"article": articles.one(order_id)}

    app.router.routes.insert(0, Host("partner.example.com", app=partner))

    @app.websocket("/ws/{room}")
    async def chat(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        await websocket.send_text(room)
        await websocket.close()

    return app


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT)"))
        conn.execute(text("INSERT INTO articles VALUES (1, 'one'), (2, 'two')"))
    yield engine
    engine.dispose()


@pytest.fixture
def watch(engine: Engine) -> Iterator[PoolWatch]:
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine, pool="main")
    yield watch
    watch.uninstrument()


def routes_seen(watch: PoolWatch, name: str) -> dict[str, float]:
    seen: dict[str, float] = {}
    for family in watch.registry.collect():
        for sample in family.samples:
            route = sample.labels.get("route")
            if sample.name == name and route not in (None, "none"):
                seen[route] = seen.get(route, 0.0) + sample.value
    return seen


async def get_all(app: Any, paths: list[str], host: str = "test", **kw: Any) -> list[int]:
    transport = httpx.ASGITransport(app=app, **kw)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
        return [(await client.get(path)).status_code for path in paths]


async def test_labels_are_the_full_template_at_every_level(
    watch: PoolWatch, engine: Engine
) -> None:
    app = build(engine)
    watch.instrument_app(app)
    paths = [
        *(f"/api/v1/admin/users/{i}" for i in range(1, 4)),
        "/legacy-api/v1/admin/users/2",
        "/",
        *(f"/t/tenant-{i}/shop/items/{i}" for i in range(40)),
        "/docs/p/1",
        *(f"/docs/book/b{i}/p/2" for i in range(5)),
        "/old/anything/at/all",
    ]
    assert set(await get_all(app, paths)) == {200}
    assert await get_all(app, ["/orders/1"], host="partner.example.com") == [200]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.delete("/api/v1/admin/users/1")).status_code == 200

    expected = {
        "/api/v1/admin/users/{user_id}": 4,  # three GETs and a DELETE
        "/legacy-api/v1/admin/users/{user_id}": 1,
        "/": 1,
        "/t/{tenant}/shop/items/{item_id}": 40,
        "/docs/p/{n}": 1,
        "/docs/book/{book}/p/{n}": 5,
        "/old/{path}": 1,
        "/orders/{order_id}": 1,
    }
    assert routes_seen(watch, HTTP) == expected
    assert routes_seen(watch, OPS) == expected  # one statement per request
    assert total(watch.registry, HTTP, method="DELETE") == 1


async def test_a_websocket_is_not_timed_as_a_request(watch: PoolWatch, engine: Engine) -> None:
    app = build(engine)
    watch.instrument_app(app)
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws/lobby",
        "raw_path": b"/ws/lobby",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "subprotocols": [],
    }
    await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert routes_seen(watch, HTTP) == {}


async def test_behind_a_proxy_prefix_routes_and_metrics_are_where_the_app_is(
    watch: PoolWatch, engine: Engine
) -> None:
    # uvicorn --root-path /api: the proxy strips /api, the server puts it back in root_path
    # and in front of the path, as uvicorn does.
    app = build(engine)
    watch.instrument_app(app)

    async def behind_proxy(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "root_path": "/api", "path": "/api" + scope["path"]}
        await app(scope, receive, send)

    transport = httpx.ASGITransport(app=behind_proxy)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/t/acme/shop/items/1")).status_code == 200
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'route="/t/{tenant}/shop/items/{item_id}"' in metrics.text
    assert routes_seen(watch, OPS) == {"/t/{tenant}/shop/items/{item_id}": 1}
