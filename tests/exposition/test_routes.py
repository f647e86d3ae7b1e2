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
from typing import Any

import httpx
import pytest
import starlette
from fastapi import APIRouter, Depends, FastAPI, Header, WebSocket
from sqlalchemy import Engine, create_engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route
from starlette.staticfiles import StaticFiles

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


# Dependencies as defaults, as apps on FastAPI before 0.95 (no Annotated) declare them.
AUTHORIZATION = Header("token alice")


def current_user(authorization: str = AUTHORIZATION) -> str:
    return authorization.removeprefix("token ")


USER = Depends(current_user)


def build(engine: Engine) -> FastAPI:
    articles = Articles(engine)

    # /api/v1/admin/users/{user_id}: prefixes from the router itself and from each include.
    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    def get_user(user_id: int, user: str = USER) -> dict[str, Any]:
        return {"user": user, "article": articles.one(user_id)}

    @users.delete("/{user_id}")
    def delete_user(user_id: int, user: str = USER) -> dict[str, Any]:
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


# Since Starlette 0.35 (with uvicorn 0.26) the server also puts the root path in front of the
# path, as the ASGI spec says; the routers of older Starlette (FastAPI 0.92's 0.25) match the
# path as it is, and the servers of their time left the root path out of it.
ROOT_PATH_IN_PATH = tuple(int(part) for part in starlette.__version__.split(".")[:2]) >= (0, 35)


def behind_proxy(app: Any, root_path: str) -> Any:
    """``app`` served as ``uvicorn --root-path ROOT_PATH`` serves it behind a proxy."""

    async def server(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = root_path + scope["path"] if ROOT_PATH_IN_PATH else scope["path"]
            scope = {**scope, "root_path": root_path, "path": path}
        await app(scope, receive, send)

    return server


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
    # uvicorn --root-path /api: the proxy strips /api, the server puts it back in root_path.
    app = build(engine)
    watch.instrument_app(app)

    transport = httpx.ASGITransport(app=behind_proxy(app, "/api"))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/t/acme/shop/items/1")).status_code == 200
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'route="/t/{tenant}/shop/items/{item_id}"' in metrics.text
    assert routes_seen(watch, OPS) == {"/t/{tenant}/shop/items/{item_id}": 1}


def build_with_docs(engine: Engine, static: Path) -> FastAPI:
    """An app whose routes FastAPI and Starlette partly add themselves: the documentation
    (moved by ``docs_url``, and a tenant app's own), a Starlette route, static files."""
    articles = Articles(engine)
    app = FastAPI(docs_url="/api/docs", title="shop")
    items = APIRouter(prefix="/items")

    @items.get("/{item_id}")
    def item(item_id: int) -> dict[str, Any]:
        return {"article": articles.one(item_id)}

    app.include_router(items, prefix="/api/v1")

    async def health(request: Request) -> PlainTextResponse:
        await asyncio.to_thread(articles.titles)
        return PlainTextResponse(request.path_params["probe"])

    app.add_route("/health/{probe}", health)
    app.mount("/static", StaticFiles(directory=static), name="static")
    tenant = FastAPI()  # its documentation at /t/{tenant}/docs

    @tenant.get("/orders/{order_id}")
    def order(order_id: int) -> dict[str, Any]:
        return {"article": articles.one(order_id)}

    app.mount("/t/{tenant}", tenant)
    return app


@pytest.mark.parametrize("root_path", ["", "/shop"])
async def test_routes_fastapi_and_starlette_add_are_labelled_by_their_path(
    watch: PoolWatch, engine: Engine, tmp_path: Path, root_path: str
) -> None:
    (tmp_path / "app.css").write_text("body {}")
    app = build_with_docs(engine, tmp_path)
    watch.instrument_app(app)
    served = behind_proxy(app, root_path) if root_path else app
    paths = {
        "/openapi.json": 200,
        "/api/docs": 200,
        "/redoc": 200,
        "/docs/oauth2-redirect": 200,
        "/health/live": 200,
        "/health/ready": 200,
        "/static/app.css": 200,
        "/static/missing.css": 404,  # the mount answered: its label, not unmatched
        "/t/acme/docs": 200,
        "/t/acme/openapi.json": 200,
        "/t/acme/orders/1": 200,
        "/api/v1/items/1": 200,
        "/docs": 404,  # moved by docs_url: unknown URLs stay unmatched
        "/wp-login.php": 404,
        "/api/v1/items/1/comments": 404,
    }
    assert await get_all(served, list(paths)) == list(paths.values())

    assert routes_seen(watch, HTTP) == {
        "/openapi.json": 1,
        "/api/docs": 1,
        "/redoc": 1,
        "/docs/oauth2-redirect": 1,
        "/health/{probe}": 2,
        "/static/{path}": 2,
        "/t/{tenant}/docs": 1,
        "/t/{tenant}/openapi.json": 1,
        "/t/{tenant}/orders/{order_id}": 1,
        "/api/v1/items/{item_id}": 1,
        "unmatched": 3,
    }
    # The statements of a Starlette route count under its template too.
    assert routes_seen(watch, OPS) == {
        "/health/{probe}": 2,
        "/t/{tenant}/orders/{order_id}": 1,
        "/api/v1/items/{item_id}": 1,
    }
