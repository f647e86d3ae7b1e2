"""A small HTTP server of its own for poolwatch's paths, so the app's port never has them.

One daemon thread runs an asyncio loop of its own: scrapes are served outside the app's
event loop, so a slow scrape (or a slow network) never holds up the app's requests. It
answers through the same :class:`Exposition` as the middleware, so authentication,
formats and gzip are identical.

A connection waiting for its request or for its response to be read holds no thread, only
a socket, so clients that stall cannot keep a scrape from being answered. A client has
``READ_TIMEOUT`` seconds to send its request line and headers (``MAX_HEADER_BYTES`` at
most) and ``WRITE_TIMEOUT`` seconds to read its response; at most ``MAX_CONNECTIONS`` are
open at once, and clients beyond that get ``503 Service Unavailable`` with
``Retry-After: 1`` at once. One request per connection (``Connection: close``): scrapers
reconnect cheaply.

With several workers sharing one port (multiprocess mode: any worker can render every
worker's metrics), one binds and serves; the others stand by and retry, so one of them
takes over when the serving worker goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from email.utils import formatdate
from http import HTTPStatus
from typing import NamedTuple

from poolwatch.exposition.endpoints import Exposition, Response, text_response

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "READ_TIMEOUT",
    "WRITE_TIMEOUT",
    "MetricsServer",
]

# Prometheus (like curl) sends its whole request in one write as soon as it connects, so
# it arrives within a round trip; 2 s leaves room for a lost segment to be sent again (TCP's
# retransmission timeout starts at 1 s, RFC 6298) while a stalled client holds its slot
# only briefly.
READ_TIMEOUT = 2.0  # seconds a client has to send its request line and headers
# A response is sent in milliseconds to a client that reads it; one that does not must not
# hold its socket and buffered body for long. Half Prometheus's default scrape_timeout.
WRITE_TIMEOUT = 5.0  # seconds a client has to read its whole response
MAX_CONNECTIONS = 256  # open at once (reading, rendering or writing); more get a 503
MAX_HEADER_BYTES = 16 * 1024  # request line and headers; more get a 431
STANDBY_RETRY = 2.0  # seconds between a standing-by worker's attempts to bind
_BACKLOG = 128  # the listen backlog: a burst waits in it for an accept, not in SYN retries

# Fixed, and sent without reading the request: a full server spends nothing more on it.
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"server: poolwatch\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 5\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"busy\n"
)


class MetricsServer:
    """Serves ``exposition`` on ``host:port`` until :meth:`stop` (port 0: any free port).

    Binds at construction (raising ``OSError``), unless ``standby``: then :meth:`start`
    keeps trying to bind in the background until it can, or until :meth:`stop`. ``host``
    may be a name or an IPv4 or IPv6 address (``"::1"``).
    """

    def __init__(
        self, exposition: Exposition, host: str, port: int, *, standby: bool = False
    ) -> None:
        self._exposition = exposition
        self._requested = (host, port)
        self._address = self._requested
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halted = asyncio.Event()
        if not standby:
            self._bind()
        self._thread = threading.Thread(target=self._run, name="poolwatch-metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the requested ones while standing by)."""
        return self._address

    @property
    def serving(self) -> bool:
        """Whether this process holds the port (False while standing by)."""
        return self._sock is not None

    def start(self) -> None:
        """Serve (or stand by) in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (or standing by), close every socket and wait for the thread."""
        with self._lock:
            self._stopping.set()
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._halted.set)
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()  # bound but never started: nothing else closes it

    def _bind(self) -> None:
        self._sock = _listen(*self._requested)
        host, port = self._sock.getsockname()[:2]
        self._address = (str(host), int(port))

    def _run(self) -> None:
        while True:
            # Binding and creating the loop happen under the lock that stop() takes, so
            # stop() either finds the loop to halt or keeps this thread from serving.
            with self._lock:
                if self._stopping.is_set():
                    return
                if self._sock is None:
                    with contextlib.suppress(OSError):  # still taken: another worker serves
                        self._bind()
                if self._sock is not None:
                    sock = self._sock
                    loop = self._loop = asyncio.new_event_loop()
                    break
            if self._stopping.wait(STANDBY_RETRY):
                return
        try:
            loop.run_until_complete(_Connections(self._exposition).serve(sock, self._halted))
        finally:
            with self._lock:
                loop.close()


class _Request(NamedTuple):
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value


class _Connections:
    """The serving loop's side: accepts, reads, answers and closes connections."""

    def __init__(self, exposition: Exposition) -> None:
        self._exposition = exposition
        # One per connection held, with the writer that closes it.
        self._open: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def serve(self, sock: socket.socket, halted: asyncio.Event) -> None:
        server = await asyncio.start_server(
            self._accepted, sock=sock, limit=MAX_HEADER_BYTES, backlog=_BACKLOG
        )
        await halted.wait()
        server.close()  # the listening socket: a connect from now on is refused
        # Closing a connection's socket ends its task (its read or write fails), even one
        # not started yet, which cancelling would not. Accepts already under way finish
        # and add their connections first, so no socket outlives the loop.
        while pending := asyncio.all_tasks() - {asyncio.current_task()}:
            for writer in self._open.values():
                writer.transport.abort()
            await asyncio.wait(pending)
        await asyncio.sleep(0)  # the transports' close callbacks, before the loop closes

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= MAX_CONNECTIONS:
            writer.write(_BUSY)  # a fresh socket's buffer takes it whole: this never waits
            writer.close()
            return
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer))
        self._open[task] = writer
        task.add_done_callback(self._open.pop)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._exchange(reader, writer)
        except OSError:
            pass  # too slow (TimeoutError is an OSError), reset or gone: just drop it
        finally:
            writer.transport.abort()  # after a clean close() this does nothing

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The timeout is on the whole request, not each read: a byte a second cannot keep
        # a connection open.
        async with asyncio.timeout(READ_TIMEOUT):
            request = await _read_request(reader)
        if request is None:
            return
        if isinstance(request, Response):
            response, method = request, "GET"
        else:
            response, method = self._answer(request), request.method
        # A high-water mark of 0 makes drain() wait until the kernel has taken every byte,
        # so the timeout covers the whole response, not just its last 64 KiB.
        writer.transport.set_write_buffer_limits(high=0)
        writer.write(_encode(response, method))
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()
        writer.close()

    def _answer(self, request: _Request) -> Response:
        # Rendering runs on this loop: it takes milliseconds (tens under multiprocess
        # mode), it is not the app's loop, and no other client waits on a thread for it.
        path = request.target.split("?", 1)[0]
        if path in self._exposition.paths:
            return self._exposition.respond(path, request.method, request.headers)
        return text_response(404, "Not Found")


async def _read_request(reader: asyncio.StreamReader) -> _Request | Response | None:
    """The request line and headers; a response to refuse them with; None if the client left."""
    lines: list[str] = []
    size = 0
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # one line longer than the reader's limit
            return _too_large()
        size += len(line)
        if size > MAX_HEADER_BYTES:
            return _too_large()
        if not line.endswith(b"\n"):
            return None  # the end of the stream before the end of the headers
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            break
        lines.append(text)
    if not lines:
        return text_response(400, "Bad Request")
    words = lines[0].split()
    if len(words) != 3 or not words[2].startswith("HTTP/1."):
        return text_response(400, "Bad Request")
    headers: dict[str, str] = {}
    for header in lines[1:]:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            return text_response(400, "Bad Request")
        headers[name.strip().lower()] = value.strip()
    return _Request(words[0], words[1], headers)


def _too_large() -> Response:
    return text_response(431, "Request Header Fields Too Large")


def _encode(response: Response, method: str) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        "server: poolwatch",
        f"date: {formatdate(usegmt=True)}",
        *(f"{name}: {value}" for name, value in response.headers),
        "connection: close",
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    # HEAD answers carry the length GET's body would have, and never the body.
    return head if method == "HEAD" else head + response.body


def _listen(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    # IPv4 first when a name has both ("localhost", ""), as when only IPv4 was bound: a
    # scraper of 127.0.0.1 keeps working. An IPv6-only host ("::1") gets an IPv6 socket.
    family, kind, proto, _, address = min(infos, key=lambda info: info[0] != socket.AF_INET)
    sock = socket.socket(family, kind, proto)
    try:
        # Rebinding beside the previous server's TIME_WAIT connections, as http.server
        # does; never on Windows, where it would let two servers bind the same port.
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock
