"""Requests per second through uvicorn, per middleware setup, and the load generator for it.

    python benchmarks/load.py bench [--rounds 10] [--seconds 1.5] [--connections 8]

One uvicorn server per setup of :mod:`apps` (``loop="uvloop"``, ``http="httptools"``,
one worker, access log off, 127.0.0.1, a free port), all started at once and left
running; each is a process of its own, so every setup builds its metrics in a fresh
process. The load generator is another process (``load.py hit``): ``--connections``
keep-alive HTTP/1.1 connections on raw asyncio protocols over uvloop, each sending the
next request as soon as the previous response is complete (no pipelining; a response is
framed by its Content-Length and must be a 200). It warms up, then counts the responses
completed in a fixed window. It reports requests/s, its own CPU use (near 100% would
mean the generator, not the server, is the bottleneck) and the server's CPU time per
request (from ``/proc/<pid>/stat``), which a busy neighbour on the machine disturbs less
than it disturbs wall-clock throughput.

Rounds are interleaved: each round measures every setup in turn, per endpoint; figures
are medians over rounds, ratios against bare FastAPI. The servers' log goes to a
temporary file, shown if one fails; every server is stopped (SIGTERM, then SIGKILL after
10 s) when the benchmark ends, and every load run has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

from _timing import Table, Target, column, order, ratio, spread
from apps import ENDPOINTS, SETUP_NAMES, SETUPS, build_app, paths

__all__ = ["bench_uvicorn"]

HOST = "127.0.0.1"
SCRIPT = Path(__file__).resolve()
READY_TIMEOUT = 30.0


# -- the server ----------------------------------------------------------------------------


def serve(setup: str, port: int) -> None:
    """Run uvicorn on ``HOST:port`` with ``setup``'s app until terminated."""
    import uvicorn

    app, _ = build_app(setup)
    uvicorn.run(
        app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


# -- the load generator --------------------------------------------------------------------


class _Tally:
    __slots__ = ("done", "failed", "stopping")

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self.stopping = False


class _Client(asyncio.Protocol):
    """One keep-alive connection: a request, its whole response, the next request."""

    def __init__(self, requests: list[bytes], tally: _Tally, offset: int) -> None:
        self._requests = requests
        self._tally = tally
        self._next_index = offset
        self._buffer = b""
        self._expected = 0  # bytes of the current response, once its head is read
        self._ok = False
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast("asyncio.Transport", transport)
        self._send()

    def _send(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._tally.stopping:
            transport.close()
            return
        requests = self._requests
        transport.write(requests[self._next_index % len(requests)])
        self._next_index += 1

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while True:
            if not self._expected:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                self._expected = end + 4 + _content_length(buffer, end)
                self._ok = buffer.startswith(b"HTTP/1.1 200 ")
            if len(buffer) < self._expected:
                break
            buffer = buffer[self._expected :]
            self._expected = 0
            if self._ok:
                self._tally.done += 1
            else:
                self._tally.failed += 1
            self._send()
        self._buffer = buffer

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)


def _content_length(buffer: bytes, end: int) -> int:
    start = buffer.find(b"content-length:", 0, end)
    if start < 0:
        start = buffer[:end].lower().find(b"content-length:")
        if start < 0:
            raise RuntimeError(f"response without Content-Length: {buffer[:end]!r}")
    start += len(b"content-length:")
    return int(buffer[start : buffer.find(b"\r\n", start)])


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) process ``pid`` has used so far; 0 where unknown."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _generate(
    port: int, endpoint: str, *, seconds: float, warmup: float, connections: int, server: int | None
) -> dict[str, Any]:
    host = f"{HOST}:{port}".encode()
    requests = [
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\nAccept: */*\r\n\r\n"
        for path in paths(endpoint)
    ]
    loop = asyncio.get_running_loop()
    tally = _Tally()
    clients: list[_Client] = []
    for i in range(connections):
        # Each connection starts at another item id.
        _, client = await loop.create_connection(
            partial(_Client, requests, tally, i * 7), HOST, port
        )
        clients.append(client)
    await asyncio.sleep(warmup)
    done, cpu, served = tally.done, time.process_time(), _cpu_seconds(server)
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    done, cpu = tally.done - done, time.process_time() - cpu
    served = _cpu_seconds(server) - served
    tally.stopping = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), timeout=5)
    return {
        "requests": done,
        "seconds": elapsed,
        "rps": done / elapsed,
        "failed": tally.failed,
        "client_cpu": cpu / elapsed,
        "server_cpu_per_request": served / done if done else 0.0,
    }


def generate(
    port: int,
    endpoint: str,
    *,
    seconds: float,
    warmup: float,
    connections: int,
    server: int | None = None,
) -> dict[str, Any]:
    """Load ``HOST:port`` (in this process) and report what was completed.

    With ``server`` (the server's pid), also the server's CPU time per request.
    """
    import uvloop

    return uvloop.run(
        _generate(
            port,
            endpoint,
            seconds=seconds,
            warmup=warmup,
            connections=connections,
            server=server,
        )
    )


# -- the orchestration ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class _Server:
    """A ``load.py serve`` process."""

    def __init__(self, setup: str) -> None:
        self.setup = setup
        self.port = _free_port()
        # The server's output, read if it fails; closed by stop().
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        command = [sys.executable, str(SCRIPT), "serve", setup, "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server {self.setup} exited: {self.output()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server {self.setup} not listening after {READY_TIMEOUT} s")

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def _hit(
    server: _Server, endpoint: str, seconds: float, warmup: float, connections: int
) -> dict[str, Any]:
    command = [
        sys.executable, str(SCRIPT), "hit", "--port", str(server.port), "--endpoint", endpoint,
        "--seconds", str(seconds), "--warmup", str(warmup), "--connections", str(connections),
        "--server-pid", str(server.process.pid),
    ]  # fmt: skip
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + warmup + 60, check=False
    )
    if finished.returncode != 0:
        raise RuntimeError(f"load generator failed: {finished.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(finished.stdout)
    if result["failed"] or not result["requests"]:
        raise RuntimeError(f"{server.setup} {endpoint}: {result}; server: {server.output()}")
    return result


def _start_all() -> dict[str, _Server]:
    """One fresh server per setup, started together, warmed up on every endpoint."""
    servers: dict[str, _Server] = {}
    try:
        for setup in SETUPS:
            servers[setup] = _Server(setup)
        deadline = time.monotonic() + READY_TIMEOUT
        for server in servers.values():
            server.wait_ready(deadline)
        for endpoint in ENDPOINTS:
            for server in servers.values():  # first requests: imports, caches, routes
                _hit(server, endpoint, 0.3, 0.2, 8)
    except BaseException:
        _stop_all(servers)
        raise
    return servers


def _stop_all(servers: dict[str, _Server]) -> None:
    for server in servers.values():
        server.stop()


def bench_uvicorn(rounds: int, seconds: float, connections: int = 8) -> Table:
    """Section 1b: requests/s through uvicorn per setup and endpoint, ratio vs bare."""
    warmup = min(0.25, seconds / 2)
    table = Table(
        "1b. Per request through uvicorn (uvloop + httptools, 1 worker, 127.0.0.1)",
        ["endpoint", "setup", "requests/s", "ratio vs bare", "spread",
         "server CPU µs/request", "CPU ratio vs bare", "target"],
    )  # fmt: skip
    client_load: list[float] = []
    measured: dict[str, dict[str, list[tuple[float, float]]]] = {
        endpoint: {setup: [] for setup in SETUPS} for endpoint in ENDPOINTS
    }
    for index in range(rounds):
        # Fresh processes every round: one process can run a few percent faster or slower
        # than another with the same code (hash seeds, memory layout, which core), and a
        # server kept for every round would carry its luck into the median.
        servers = _start_all()
        try:
            for endpoint in ENDPOINTS:
                for setup in order(SETUPS, index):
                    result = _hit(servers[setup], endpoint, seconds, warmup, connections)
                    client_load.append(result["client_cpu"])
                    measured[endpoint][setup].append(
                        (result["rps"], result["server_cpu_per_request"])
                    )
        finally:
            _stop_all(servers)
    for endpoint, label in ENDPOINTS.items():
        samples, cpu = column(measured[endpoint], 0), column(measured[endpoint], 1)
        for setup in SETUPS:
            share = ratio(samples, setup, "bare")
            target = Target("≥ 0.90x bare", share >= 0.9) if "poolwatch" in setup else None
            table.add(
                label,
                SETUP_NAMES[setup],
                f"{statistics.median(samples[setup]):,.0f}",
                f"{share:.3f}x",
                spread(samples, setup, "bare"),
                f"{statistics.median(cpu[setup]) * 1e6:.0f}",
                f"{ratio(cpu, setup, 'bare'):.3f}x",
                target=target,
            )
    table.notes.append(
        f"Median of {rounds} interleaved rounds of {seconds:g} s (after {warmup:g} s warm-up) "
        f"per setup, {connections} keep-alive connections, fresh server processes every "
        f"round. Load generator CPU use: median {statistics.median(client_load):.0%}, "
        f"max {max(client_load):.0%} of one CPU."
    )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run the uvicorn benchmark, print the table")
    bench.add_argument("--rounds", type=int, default=10)
    bench.add_argument("--seconds", type=float, default=1.5)
    bench.add_argument("--connections", type=int, default=8)
    server = commands.add_parser("serve", help="(internal) one uvicorn server")
    server.add_argument("setup", choices=SETUPS)
    server.add_argument("--port", type=int, required=True)
    hit = commands.add_parser("hit", help="(internal) one load run; prints JSON")
    hit.add_argument("--port", type=int, required=True)
    hit.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="json")
    hit.add_argument("--seconds", type=float, default=3.0)
    hit.add_argument("--warmup", type=float, default=1.0)
    hit.add_argument("--connections", type=int, default=8)
    hit.add_argument("--server-pid", type=int)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.setup, args.port)
    elif args.command == "hit":
        result = generate(
            args.port,
            args.endpoint,
            seconds=args.seconds,
            warmup=args.warmup,
            connections=args.connections,
            server=args.server_pid,
        )
        print(json.dumps(result))
    else:
        print(bench_uvicorn(args.rounds, args.seconds, args.connections).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
