"""A small HTTP server of its own for poolwatch's paths, so the app's port never has them.

A thread-per-request ``http.server`` in one daemon thread: scrapes are a few per minute,
and serving them outside the event loop keeps a slow scrape (or a slow network) from
ever holding up the app's requests. It answers through the same :class:`Exposition` as
the middleware, so authentication, formats and gzip are identical.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from poolwatch.exposition import Exposition, text_response

__all__ = ["MetricsServer"]


class MetricsServer:
    """Serves ``exposition`` on ``host:port`` until :meth:`stop` (port 0: any free port)."""

    def __init__(self, exposition: Exposition, host: str, port: int) -> None:
        handler = _handler(exposition)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="poolwatch-metrics", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Start serving in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def _handler(exposition: Exposition) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "poolwatch"

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

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not the app's access log

    return Handler
