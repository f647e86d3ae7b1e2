"""Protected, compressed and negotiated exposition, on the app's port or a port of its own."""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, text

from poolwatch import ConfigError, PoolWatch

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
GZIP = {"Accept-Encoding": "gzip"}


def build(watch: PoolWatch) -> FastAPI:
    app = FastAPI()
    watch.instrument_app(app)
    engine = create_engine("sqlite://")
    watch.instrument_sqlalchemy(engine)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"id": item_id}

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    watch = PoolWatch(metrics_bearer_token="s3cr3t-token")
    transport = httpx.ASGITransport(app=build(watch))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client
    watch.uninstrument()


async def test_bearer_token_guards_metrics_and_findings(client: httpx.AsyncClient) -> None:
    for path in ("/metrics", "/poolwatch/findings"):
        denied = await client.get(path)
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"] == 'Bearer realm="poolwatch"'
        wrong = await client.get(path, headers={"authorization": "Bearer s3cr3t-tokem"})
        assert wrong.status_code == 401
        ok = await client.get(path, headers={"authorization": "Bearer s3cr3t-token"})
        assert ok.status_code == 200
    # The app's own routes are not guarded.
    assert (await client.get("/items/1")).status_code == 200


async def test_basic_auth() -> None:
    watch = PoolWatch(metrics_basic_auth="prometheus:pa55:word")
    transport = httpx.ASGITransport(app=build(watch))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        denied = await client.get("/metrics")
        assert denied.headers["www-authenticate"] == 'Basic realm="poolwatch"'
        good = base64.b64encode(b"prometheus:pa55:word").decode()
        bad = base64.b64encode(b"prometheus:nope").decode()
        assert (await client.get("/metrics", headers={"authorization": f"Basic {good}"})).status_code == 200  # fmt: skip  # noqa: E501
        assert (await client.get("/metrics", headers={"authorization": f"Basic {bad}"})).status_code == 401  # fmt: skip  # noqa: E501
        assert (await client.get("/metrics", headers={"authorization": "Basic !!"})).status_code == 401  # fmt: skip  # noqa: E501
    watch.uninstrument()


async def test_gzip_when_asked(client: httpx.AsyncClient) -> None:
    auth = {"authorization": "Bearer s3cr3t-token"}
    plain = await client.get("/metrics", headers={**auth, "accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    raw = await client.get("/metrics", headers={**auth, "accept-encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"
    # httpx decodes gzip itself; compare with the plain body (but the process's own
    # figures, which move between two scrapes).

    def steady(text: str) -> list[str]:
        return [
            line for line in text.splitlines() if not line.startswith(("process_", "python_gc_"))
        ]

    assert steady(raw.text) == steady(plain.text)
    assert int(raw.headers["content-length"]) < len(plain.content)


async def test_openmetrics_exemplars_carry_the_trace_id(client: httpx.AsyncClient) -> None:
    await client.get("/items/1", headers={"traceparent": TRACEPARENT})
    await client.get("/items/2", headers={"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"})
    openmetrics = await client.get(
        "/metrics",
        headers={
            "authorization": "Bearer s3cr3t-token",
            "accept": "application/openmetrics-text; version=1.0.0",
        },
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    lines = openmetrics.text.splitlines()
    exemplars = [line for line in lines if f'# {{trace_id="{TRACE}"}}' in line]
    names = {line.split("{")[0] for line in exemplars}
    assert names == {
        "http_server_request_duration_seconds_bucket",
        "db_client_operation_duration_seconds_bucket",
    }
    assert openmetrics.text.endswith("# EOF\n")
    classic = await client.get("/metrics", headers={"authorization": "Bearer s3cr3t-token"})
    assert "trace_id" not in classic.text


def get_from_app(app: FastAPI, path: str) -> int:
    async def get() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get(path)).status_code

    return asyncio.run(get())


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, _lower(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _lower(error.headers), error.read()


def test_separate_port_serves_metrics_and_the_app_port_does_not() -> None:
    watch = PoolWatch(metrics_bearer_token="tok")
    host, port = watch.start_metrics_server(port=0)
    assert host == "127.0.0.1"
    assert get_from_app(build(watch), "/items/7") == 200
    url = f"http://{host}:{port}"
    status, headers, body = fetch(url + "/metrics", Authorization="Bearer tok", **GZIP)
    assert (status, headers["content-encoding"]) == (200, "gzip")
    sample = (
        "http_server_request_duration_seconds_count"
        '{method="GET",route="/items/{item_id}",status="200"} 1.0'
    )
    assert sample in gzip.decompress(body).decode()
    assert fetch(url + "/metrics")[0] == 401
    assert fetch(url + "/other", Authorization="Bearer tok")[0] == 404
    watch.uninstrument()
    with pytest.raises(urllib.error.URLError):
        fetch(url + "/metrics")


def test_metrics_port_setting_moves_metrics_off_the_app() -> None:
    watch = PoolWatch(metrics_port=_free_port())
    assert get_from_app(build(watch), "/metrics") == 404
    host, port = watch.start_metrics_server()
    assert fetch(f"http://{host}:{port}/metrics")[0] == 200
    watch.uninstrument()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_exposition_settings_fail_fast_without_echoing_secrets() -> None:
    with pytest.raises(ConfigError, match=r"metrics_basic_auth='\*\*\*': must be 'user:password'"):
        PoolWatch(metrics_basic_auth="no-colon-secret")
    with pytest.raises(ConfigError, match=r"metrics_port=0: must be a TCP port"):
        PoolWatch(metrics_port=0)
    watch = PoolWatch(metrics_bearer_token="tok")
    assert "tok" not in repr(watch.settings)
    watch.uninstrument()


def _lower(headers: object) -> dict[str, str]:
    return {k.lower(): v for k, v in getattr(headers, "items", dict)()}


def test_half_sent_requests_neither_pile_up_threads_nor_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from poolwatch.exposition import server as metrics_server

    monkeypatch.setattr(metrics_server, "READ_TIMEOUT", 0.5)
    watch = PoolWatch()
    host, port = watch.start_metrics_server(port=0)
    threads = threading.active_count()
    slow = []
    try:
        for _ in range(300):
            sock = socket.create_connection((host, port))
            sock.sendall(b"GET /metr")  # and never the rest
            slow.append(sock)
        time.sleep(0.2)
        assert threading.active_count() == threads  # waiting clients hold no thread
        time.sleep(1.0)  # past the read timeout: every slow client was dropped
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            assert response.status == 200
    finally:
        for sock in slow:
            sock.close()
        watch.uninstrument()
