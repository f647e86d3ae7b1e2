"""A small HTTP server of its own for poolwatch's paths, so the app's port never has them.

A thread-per-request ``http.server`` in one daemon thread: scrapes are a few per minute,
and serving them outside the event loop keeps a slow scrape (or a slow network) from
ever holding up the app's requests. It answers through the same :class:`Exposition` as
the middleware, so authentication, formats and gzip are identical.

Scrapers are few, so the server is small on purpose: a client has ``READ_TIMEOUT``
seconds to send its request, and at most ``MAX_CONNECTIONS`` are served at once; more are
closed at once rather than queued, so a flood of half-sent requests cannot hold a thread
each.

With several workers sharing one port (multiprocess mode: any worker can render every
worker's metrics), one binds and serves; the others stand by and retry, so one of them
takes over when the serving worker goes away.
"""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from poolwatch.exposition import Exposition, text_response

__all__ = ["MAX_CONNECTIONS", "READ_TIMEOUT", "MetricsServer"]

READ_TIMEOUT = 5.0  # seconds a client may take to send its request
MAX_CONNECTIONS = 16  # served at once
STANDBY_RETRY = 2.0  # seconds between a standing-by worker's attempts to bind


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: turned away fast, not left in SYN retries

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: close it rather than queue it
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """Serves ``exposition`` on ``host:port`` until :meth:`stop` (port 0: any free port).

    Binds at construction (raising ``OSError``), unless ``standby``: then :meth:`start`
    keeps trying to bind in the background until it can, or until :meth:`stop`.
    """

    def __init__(
        self, exposition: Exposition, host: str, port: int, *, standby: bool = False
    ) -> None:
        self._handler = _handler(exposition)
        self._requested = (host, port)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._serving = False
        self._server: _BoundedServer | None = None
        if not standby:
            self._server = _BoundedServer(self._requested, self._handler)
        self._thread = threading.Thread(target=self._run, name="poolwatch-metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the requested ones while standing by)."""
        if self._server is None:
            return self._requested
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def serving(self) -> bool:
        """Whether this process holds the port (False while standing by)."""
        return self._server is not None

    def start(self) -> None:
        """Serve (or stand by) in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (or standing by) and close the socket."""
        with self._lock:
            self._stopping.set()
            serving = self._serving
        if serving and self._server is not None:
            self._server.shutdown()  # serve_forever runs, or is about to: it returns
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        if self._server is not None:
            self._server.server_close()

    def _run(self) -> None:
        while True:
            # Binding and deciding to serve happen under the lock that stop() takes, so
            # stop() shuts down exactly a server that serves.
            with self._lock:
                if self._stopping.is_set():
                    return
                if self._server is None:
                    with contextlib.suppress(OSError):  # still taken: another worker serves
                        self._server = _BoundedServer(self._requested, self._handler)
                if self._server is not None:
                    self._serving = True
                    server = self._server
                    break
            if self._stopping.wait(STANDBY_RETRY):
                return
        server.serve_forever()


def _handler(exposition: Exposition) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "poolwatch"
        timeout = READ_TIMEOUT  # on the socket: a request sent too slowly is dropped

        def _answer(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in exposition.paths:
                headers = {name.lower(): value for name, value in self.headers.items()}
                response = exposition.respond(path, self.command, headers)
            else:
                response = text_response(404, "Not Found")
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (TimeoutError, ConnectionError):
                self.close_connection = True  # a slow or vanished client: just drop it

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not the app's access log

    return Handler
