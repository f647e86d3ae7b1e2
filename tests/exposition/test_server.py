"""The metrics port answers scrapes whatever other clients do: stall, flood, never read.

No assertion here depends on the machine being fast: where the server must act before a
timeout, the timeout is made long and the test checks that the clients it would have
dropped are still connected when the scrape has been answered.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from poolwatch.exposition import server as metrics_server
from poolwatch.exposition.endpoints import Exposition
from poolwatch.safety import FaultReporter

SAMPLE = b"srv_test_up 1.0"
HALF_REQUEST = b"GET /metr"
FULL_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"


def exposition(findings: list[dict[str, Any]] | None = None) -> Exposition:
    registry = CollectorRegistry()
    Gauge("srv_test_up", "Always 1.", registry=registry).set(1)
    return Exposition(
        registry=lambda: registry,
        findings=lambda: findings or [],
        faults=FaultReporter(),
        metrics_path="/metrics",
        findings_path="/findings",
    )


@pytest.fixture
def server() -> Iterator[metrics_server.MetricsServer]:
    served = metrics_server.MetricsServer(exposition(), "127.0.0.1", 0)
    served.start()
    yield served
    served.stop()


def request(
    address: tuple[str, int], path: str = "/metrics", method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        connection.close()


def raw(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data``; everything received until the server closes (or resets)."""
    received = b""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # closed with part of our request unread: what came before still counts
    return received


def hang(address: tuple[str, int], count: int, sent: bytes = HALF_REQUEST) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(sent)
        clients.append(sock)
    return clients


def still_open(sock: socket.socket) -> bool:
    """Whether the server has neither closed nor answered ``sock`` (without waiting)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    return False


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (waiting up to 10 s), having answered nothing."""
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def close_all(clients: list[socket.socket]) -> None:
    for sock in clients:
        sock.close()


def test_a_scrape_is_answered_while_200_clients_hang_without_a_thread_each(
    monkeypatch: pytest.MonkeyPatch, server: metrics_server.MetricsServer
) -> None:
    # Long enough that the server cannot have dropped anyone to make room for the scrape.
    monkeypatch.setattr(metrics_server, "READ_TIMEOUT", 60.0)
    threads = threading.active_count()
    hanging = hang(server.address, 100) + hang(server.address, 100, sent=b"")
    try:
        status, _, body = request(server.address)
        assert status == 200
        assert SAMPLE in body
        assert all(still_open(sock) for sock in hanging)
        assert threading.active_count() == threads
    finally:
        close_all(hanging)


@pytest.mark.parametrize("sent", [b"", HALF_REQUEST, b"GET /metrics HTTP/1.1\r\nHost: t\r\n"])
def test_a_client_that_does_not_finish_its_request_is_closed_after_the_header_timeout(
    monkeypatch: pytest.MonkeyPatch, server: metrics_server.MetricsServer, sent: bytes
) -> None:
    monkeypatch.setattr(metrics_server, "READ_TIMEOUT", 0.3)
    with socket.create_connection(server.address, timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        assert closed_by_server(sock)
        assert time.monotonic() - started >= 0.25  # and not before its time was up


def test_a_byte_at_a_time_does_not_keep_a_connection_open(
    monkeypatch: pytest.MonkeyPatch, server: metrics_server.MetricsServer
) -> None:
    monkeypatch.setattr(metrics_server, "READ_TIMEOUT", 0.3)
    deadline = time.monotonic() + 10
    with socket.create_connection(server.address) as sock:
        sock.settimeout(0.05)
        while True:
            assert time.monotonic() < deadline, "a trickling client kept its connection"
            try:
                sock.sendall(b"X")
                if sock.recv(1) == b"":
                    break  # closed: the timeout is on the whole request, not each byte
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break


def test_clients_beyond_the_bound_get_503_with_retry_after(
    monkeypatch: pytest.MonkeyPatch, server: metrics_server.MetricsServer
) -> None:
    monkeypatch.setattr(metrics_server, "READ_TIMEOUT", 60.0)
    hanging = hang(server.address, metrics_server.MAX_CONNECTIONS - 1)
    try:
        assert request(server.address)[0] == 200  # one slot left: the scrape gets it
        hanging += hang(server.address, 1)
        status, headers, body = request(server.address)
        assert (status, headers["retry-after"], body) == (503, "1", b"busy\n")
        assert all(still_open(sock) for sock in hanging)  # turning away drops no one
        hanging.pop().close()
        # The server frees the slot when it sees that client leave.
        deadline = time.monotonic() + 10
        while request(server.address)[0] != 200:
            assert time.monotonic() < deadline, "a closed client's slot was never freed"
            time.sleep(0.01)
    finally:
        close_all(hanging)


def test_clients_reconnecting_as_fast_as_they_are_dropped_do_not_keep_scrapes_out(
    monkeypatch: pytest.MonkeyPatch, server: metrics_server.MetricsServer
) -> None:
    monkeypatch.setattr(metrics_server, "READ_TIMEOUT", 0.2)
    stop = threading.Event()
    dropped = threading.Semaphore(0)

    def flood() -> None:
        while not stop.is_set():
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(HALF_REQUEST)
                closed_by_server(sock)
            dropped.release()

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(20)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(20):  # every flooding client has been dropped once and is back
            assert dropped.acquire(timeout=10)
        statuses = [request(server.address)[0] for _ in range(20)]
        assert statuses == [200] * 20
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


def test_a_client_that_does_not_read_its_response_blocks_no_one_and_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two slots: the client that does not read holds one, and a scrape needs the other.
    monkeypatch.setattr(metrics_server, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(metrics_server, "READ_TIMEOUT", 60.0)
    monkeypatch.setattr(metrics_server, "WRITE_TIMEOUT", 0.5)
    size = 16 << 20  # more than the kernel buffers on both ends can take
    served = metrics_server.MetricsServer(exposition([{"text": "x" * size}]), "127.0.0.1", 0)
    served.start()
    hanging: list[socket.socket] = []
    try:
        with socket.socket() as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.settimeout(10)
            stuck.connect(served.address)
            stuck.sendall(b"GET /findings HTTP/1.1\r\nHost: t\r\n\r\n")
            assert stuck.recv(1, socket.MSG_PEEK)  # its answer is being written
            status, _, body = request(served.address)
            assert (status, SAMPLE in body) == (200, True)
            # Fill the other slot: scrapes are turned away until the server gives up on
            # the client that does not read, which only its write timeout can make it do.
            hanging = hang(served.address, 1)
            deadline = time.monotonic() + 10
            while request(served.address)[0] != 200:
                assert time.monotonic() < deadline, "a client that never reads stayed"
                time.sleep(0.01)
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := stuck.recv(1 << 20):
                    received += len(chunk)
            assert 0 < received < size  # cut short, then closed
    finally:
        close_all(hanging)
        served.stop()


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Big: " + b"a" * (20 << 10) + b"\r\n",  # one line past the limit
        b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(200)),  # many lines
    ],
)
def test_oversized_headers_are_refused_with_431(
    server: metrics_server.MetricsServer, headers: bytes
) -> None:
    answer = raw(server.address, b"GET /metrics HTTP/1.1\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_headers_within_the_limit_are_served(server: metrics_server.MetricsServer) -> None:
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(100))  # ~11 KiB
    answer = raw(server.address, b"GET /metrics HTTP/1.1\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert SAMPLE in answer


@pytest.mark.parametrize("line", [b"GARBAGE", b"GET /metrics", b"GET /metrics SPDY/3"])
def test_a_malformed_request_gets_400(server: metrics_server.MetricsServer, line: bytes) -> None:
    assert raw(server.address, line + b"\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_head_unknown_paths_and_methods_answer_as_the_exposition_says(
    server: metrics_server.MetricsServer,
) -> None:
    status, headers, body = request(server.address, method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > len(SAMPLE)
    assert request(server.address, "/metrics?x=1")[0] == 200
    assert request(server.address, "/other")[:3:2] == (404, b"Not Found\n")
    status, headers, _ = request(server.address, method="POST")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    head, _, body = raw(server.address, FULL_REQUEST).partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head  # one request per connection
    assert SAMPLE in body


def test_stop_closes_the_port_and_every_connection_and_ends_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_server, "READ_TIMEOUT", 60.0)
    threads = threading.active_count()
    served = metrics_server.MetricsServer(exposition(), "127.0.0.1", 0)
    served.start()
    hanging = hang(served.address, 20) + hang(served.address, 20, sent=b"")
    try:
        assert request(served.address)[0] == 200
        served.stop()
        assert threading.active_count() == threads
        assert all(closed_by_server(sock) for sock in hanging)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(served.address, timeout=10).close()
    finally:
        close_all(hanging)


def test_a_server_bound_but_never_started_frees_the_port_on_stop() -> None:
    served = metrics_server.MetricsServer(exposition(), "127.0.0.1", 0)
    served.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(served.address, timeout=10).close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_host_is_served() -> None:
    served = metrics_server.MetricsServer(exposition(), "::1", 0)
    served.start()
    try:
        assert served.address[0] == "::1"
        status, _, body = request(served.address)
        assert (status, SAMPLE in body) == (200, True)
    finally:
        served.stop()


def test_a_second_server_on_the_port_fails_and_a_standby_one_takes_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_server, "STANDBY_RETRY", 0.05)
    first = metrics_server.MetricsServer(exposition(), "127.0.0.1", 0)
    first.start()
    host, port = first.address
    with pytest.raises(OSError, match="in use") as taken:
        metrics_server.MetricsServer(exposition(), host, port)
    assert taken.value.errno == errno.EADDRINUSE
    standby = metrics_server.MetricsServer(exposition(), host, port, standby=True)
    standby.start()
    try:
        assert not standby.serving
        assert standby.address == (host, port)
        first.stop()
        deadline = time.monotonic() + 10
        while not standby.serving:
            assert time.monotonic() < deadline, "the standby server never took over"
            time.sleep(0.01)
        status, _, body = request((host, port))
        assert (status, SAMPLE in body) == (200, True)
    finally:
        first.stop()
        standby.stop()
