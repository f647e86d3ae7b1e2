"""Multiprocess mode with real worker processes (gunicorn, uvicorn --workers): one scrape."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.metrics_helpers import parse_exposition

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3
POOL_MAX = 15  # pool_size 5 + max_overflow 10, per worker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    # A new connection per request, so the kernel hands requests to different workers.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


class Server:
    """gunicorn with uvicorn workers, or ``uvicorn --workers``, serving the test app."""

    def __init__(self, tmp: Path, kind: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        shared = tmp / "metrics"
        shared.mkdir()
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(shared),
            "POOLWATCH_TEST_DB": str(tmp / "app.db"),
            "WEB_CONCURRENCY": str(WORKERS),
            **(env or {}),
        }
        if kind == "gunicorn":
            command = [
                sys.executable, "-m", "gunicorn", "-c", str(ROOT / "examples" / "gunicorn.conf.py"),
                "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "5",
                "tests.multiprocess_app:app",
            ]  # fmt: skip
        else:
            command = [
                sys.executable, "-m", "uvicorn", "tests.multiprocess_app:app",
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(WORKERS),
                "--log-level", "warning",
            ]  # fmt: skip
        self.log = (tmp / "gunicorn.log").open("w")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.requests = 0
        self.last_scrape = ""

    def wait_ready(self, port: int | None = None) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if _get(port or self.port, "/metrics")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail("the server did not start: " + Path(self.log.name).read_text())

    def hit_until(self, pids: set[int], timeout: float = 30) -> set[int]:
        """Send /hit until every pid in ``pids`` (or ``WORKERS`` pids) has answered."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status, body = _get(self.port, "/hit")
            except ConnectionRefusedError:
                # uvicorn --workers binds the app's socket in the supervisor but listens
                # only once a worker serves; poolwatch's own port may be up before that.
                time.sleep(0.1)
                continue
            assert status == 200
            self.requests += 1
            seen.add(json.loads(body)["pid"])
            if pids <= seen and len(seen) >= len(pids or range(WORKERS)):
                return seen
        pytest.fail(f"requests never reached {pids or WORKERS} workers: {seen}")

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """A scrape once every worker's gauges have settled (they refresh twice a second)."""
        time.sleep(1.2)
        status, body = _get(self.port, "/metrics")
        assert status == 200
        self.last_scrape = body
        return parse_exposition(body)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(params=["gunicorn", "uvicorn"])
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    server = Server(tmp_path, request.param)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:  # fmt: skip
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_one_scrape_sums_every_worker_and_drops_a_dead_workers_gauges(
    server: Server, promtool: str
) -> None:
    pids = server.hit_until(set())
    assert len(pids) == WORKERS
    samples = server.scrape()
    http_count = "http_server_request_duration_seconds_count"
    hits = {"method": "GET", "route": "/hit", "status": "200"}
    assert _value(samples, http_count, **hits) == server.requests
    select = {"pool": "main", "operation": "SELECT", "route": "/hit"}
    ops = "db_client_operation_duration_seconds_count"
    assert _value(samples, ops, **select) == server.requests
    assert _value(samples, "db_client_connection_max", pool="main") == POOL_MAX * WORKERS
    assert _value(samples, "db_client_connection_count", pool="main", state="used") == 0
    assert _value(samples, "db_client_connection_count", pool="main", state="idle") == WORKERS

    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    # The server replaces the worker; once the newcomer has served (and so written its own
    # gauges), the dead worker's gauges must be gone from the sums: through gunicorn's
    # child_exit hook, or (uvicorn has no hook) poolwatch's own check at scrape time.
    deadline = time.monotonic() + 30
    newcomer: set[int] = set()
    while not newcomer and time.monotonic() < deadline:
        seen = server.hit_until(set(), timeout=10)
        newcomer = seen - pids
    assert newcomer, "the server did not replace the killed worker"
    server.hit_until(pids - {victim} | newcomer)
    samples = server.scrape()
    assert _value(samples, "db_client_connection_max", pool="main") == POOL_MAX * WORKERS
    assert _value(samples, "db_client_connection_count", pool="main", state="idle") == WORKERS
    lint = subprocess.run(
        [promtool, "check", "metrics"],
        input=server.last_scrape,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")
    # Counters keep what the dead worker counted.
    assert _value(samples, http_count, **hits) == server.requests
    assert _value(samples, ops, **select) == server.requests


def test_multiprocess_misconfiguration_fails_fast(tmp_path: Path) -> None:
    script = (
        "import os, prometheus_client\n"
        "os.environ['PROMETHEUS_MULTIPROC_DIR'] = {path!r}\n"
        "from poolwatch import PoolWatch\n"
        "PoolWatch()\n"
    )
    for path, message in (
        (str(tmp_path), "was set after prometheus_client was imported"),
        (str(tmp_path / "missing"), "must be an existing directory"),
    ):
        run = subprocess.run(
            [sys.executable, "-c", script.format(path=path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert run.returncode == 1
        assert f"PROMETHEUS_MULTIPROC_DIR={path!r}: {message}" in run.stderr


def _listener_pid(port: int) -> int | None:
    """The process holding the listening socket of ``port`` on 127.0.0.1 (Linux /proc)."""
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def test_workers_share_a_metrics_port_and_one_takes_over(tmp_path: Path) -> None:
    # POOLWATCH_METRICS_PORT under `uvicorn --workers 3`: one worker serves every worker's
    # metrics there, the others stand by; none crash-loops on the port.
    metrics_port = _free_port()
    server = Server(tmp_path, "uvicorn", {"POOLWATCH_METRICS_PORT": str(metrics_port)})
    try:
        server.wait_ready(metrics_port)
        pids = server.hit_until(set())
        assert len(pids) == WORKERS  # each worker came up and serves the app
        time.sleep(1.2)  # the gauges refresh twice a second
        status, body = _get(metrics_port, "/metrics")
        assert status == 200
        hits = {"method": "GET", "route": "/hit", "status": "200"}
        samples = parse_exposition(body)
        count = "http_server_request_duration_seconds_count"
        assert _value(samples, count, **hits) == server.requests
        assert _get(server.port, "/metrics")[0] == 404  # the app's port serves none of it

        serving = _listener_pid(metrics_port)
        assert serving in pids
        os.kill(serving, signal.SIGKILL)
        deadline = time.monotonic() + 20
        taken_over = None
        while time.monotonic() < deadline and taken_over is None:
            time.sleep(0.2)
            try:
                if _get(metrics_port, "/metrics")[0] == 200:
                    taken_over = _listener_pid(metrics_port)
            except OSError:
                continue
        assert taken_over is not None
        assert taken_over != serving
        log = Path(server.log.name).read_text()
        assert "Errno 98" not in log, log
        assert "ConfigError" not in log, log
    finally:
        server.stop()
