"""The few Prometheus HTTP API calls a load test needs (standard library only)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["PromAPI"]


class PromAPI:
    """Queries against one Prometheus server."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        result: list[dict[str, Any]] = self._get("/api/v1/query", **params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query's result matrix."""
        data = self._get(
            "/api/v1/query_range",
            query=expr,
            start=f"{start:.3f}",
            end=f"{end:.3f}",
            step=f"{step:g}",
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def firing_now(self) -> set[str]:
        """Names of the alerts firing at this moment."""
        return {s["metric"]["alertname"] for s in self.query('ALERTS{alertstate="firing"}')}

    def fired_between(self, start: float, end: float) -> set[str]:
        """Names of the alerts that fired at any evaluation between ``start`` and ``end``."""
        seconds = max(1, int(end - start) + 1)
        expr = f'max_over_time(ALERTS{{alertstate="firing"}}[{seconds}s])'
        return {s["metric"]["alertname"] for s in self.query(expr, at=end)}

    def rules(self) -> list[dict[str, Any]]:
        """Every rule Prometheus loaded, with its health."""
        groups = self._get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]
