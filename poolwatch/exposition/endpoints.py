"""poolwatch's own endpoints, whatever serves them: authentication, format and gzip.

The ASGI middleware (on the app's port) and :mod:`poolwatch.exposition.server` (on a port of its
own) both hand a request's path, method and headers to :meth:`Exposition.respond` and
send back what it returns, so the two behave the same byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from poolwatch.safety import FaultReporter

__all__ = ["Exposition", "Response", "text_response"]

# Scrapes are small and frequent: fast compression beats a few more percent of size.
_GZIP_LEVEL = 1


class Response(NamedTuple):
    """What to send back: status, headers (lower-case names) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Exposition:
    """Serves ``metrics_path`` and ``findings_path``, behind optional authentication.

    ``registry`` is called per scrape: it is the PoolWatch's registry, or under
    multiprocess mode a fresh one that reads every worker's files.
    """

    def __init__(
        self,
        *,
        registry: Callable[[], CollectorRegistry],
        findings: Callable[[], list[dict[str, Any]]],
        faults: FaultReporter,
        metrics_path: str | None,
        findings_path: str | None,
        bearer_token: str | None = None,
        basic_auth: str | None = None,
    ) -> None:
        self._registry = registry
        self._findings = findings
        self._faults = faults
        self.metrics_path = metrics_path
        self.findings_path = findings_path
        self.paths = frozenset(p for p in (metrics_path, findings_path) if p)
        self._bearer = bearer_token.encode() if bearer_token else None
        self._basic = basic_auth.encode() if basic_auth else None

    def respond(self, path: str, method: str, headers: Mapping[str, str]) -> Response:
        """The response to ``method path``; ``headers`` have lower-case names."""
        if method not in ("GET", "HEAD"):
            return text_response(405, "Method Not Allowed", [("allow", "GET, HEAD")])
        if not self._authorised(headers.get("authorization", "")):
            scheme = "Bearer" if self._bearer is not None else "Basic"
            return text_response(
                401, "Unauthorized", [("www-authenticate", f'{scheme} realm="poolwatch"')]
            )
        try:
            if path == self.metrics_path:
                encoder, content_type = choose_encoder(headers.get("accept", ""))
                body = encoder(self._registry())
            else:
                content_type = "application/json"
                body = json.dumps({"findings": self._findings()}, indent=1).encode()
        except Exception as exc:
            self._faults.report("exposition", exc)
            return text_response(500, "unavailable")
        extra = [("vary", "Accept-Encoding")]
        if "gzip" in headers.get("accept-encoding", ""):
            body = gzip.compress(body, compresslevel=_GZIP_LEVEL)
            extra.append(("content-encoding", "gzip"))
        response_headers = [("content-type", content_type), *extra]
        response_headers.append(("content-length", str(len(body))))
        return Response(200, response_headers, b"" if method == "HEAD" else body)

    def _authorised(self, header: str) -> bool:
        if self._bearer is None and self._basic is None:
            return True
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        given = credentials.strip().encode()
        if self._bearer is not None and scheme == "bearer":
            return hmac.compare_digest(given, self._bearer)
        if self._basic is not None and scheme == "basic":
            try:
                decoded = base64.b64decode(given, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded, self._basic)
        return False


def text_response(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """A short plain-text answer (errors, refusals)."""
    body = (text + "\n").encode()
    return Response(
        status,
        [("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(body)))]
        + (headers or []),
        body,
    )
