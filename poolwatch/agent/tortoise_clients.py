"""Wiring Tortoise-ORM: every connection, on every backend, picked up on first use and
named by its connection name; autosize's gate for each pooled one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from poolwatch.agent.core import AgentCore
from poolwatch.queries.suggestions import register_pool
from poolwatch.sizing.appname import new_tag
from poolwatch.sizing.gate import Gate
from poolwatch.sizing.settings import Autosize

__all__ = ["TortoiseWiring"]


class TortoiseWiring(AgentCore):
    """``instrument_tortoise``."""

    def instrument_tortoise(
        self,
        *,
        autosize: Autosize | bool | Mapping[str, Any] | None = None,
        automatic: bool = False,
    ) -> None:
        """Instrument every Tortoise-ORM connection, on every backend.

        Call it before or after ``Tortoise.init``; connections are picked up on first use
        and labelled with their connection name (``pool="default"``).

        ``autosize=True`` (or an :class:`Autosize`, or a dict of its fields) lets poolwatch
        set each pooled connection's effective size at run time, between ``min`` and the
        ``maxsize`` the connection was configured with (create it at the most you would
        ever allow). SQLite has no pool to size and is left as it is.

        ``automatic=True`` is how ``poolwatch run`` calls it: nothing happens if any
        PoolWatch instruments Tortoise already, and an explicit call later (of this
        PoolWatch or another) takes over.
        """
        sizing = Autosize.coerce(autosize)  # bad settings fail here, before any request
        if not self.settings.enabled:
            return
        from poolwatch.adapters.tortoise import (
            TortoiseInstrumentation,
            open_connections,
            postgres_limits_reader,
            read_pool_state,
        )

        if automatic and TortoiseInstrumentation.installed() is not None:
            return  # instrumented already, explicitly or automatically: that one stays
        clients: dict[str, Any] = {}

        from poolwatch.adapters.tortoise.relations import tortoise_relations

        def on_client(name: str, client: Any) -> None:
            first = name not in clients
            clients[name] = client
            if first:
                self.set_pool_probe(name, lambda: read_pool_state(clients[name]))
                register_pool(name, "tortoise", tortoise_relations)

        def gate_for(name: str, client: Any) -> Gate | None:
            pool_max = getattr(client, "pool_maxsize", None)
            pooled = isinstance(pool_max, int) and not isinstance(pool_max, bool)
            reader = postgres_limits_reader(client, lambda: clients[name])
            return self.guards.gate_for(
                self._observers[name],
                autosize=sizing if pooled else None,
                pool_max=pool_max if pooled else None,
                # The latest client of that name: Tortoise may be initialised again.
                open_connections=lambda: open_connections(clients[name]),
                read_limits=reader,
                # A pool opened before poolwatch has no tag: the first read says so.
                tag=tag_for(name) if reader is not None else None,
                keep=int(getattr(client, "pool_minsize", 0) or 0),
            )

        # One tag per connection name, kept when Tortoise is initialised again.
        tags: dict[str, str] = {}

        def tag_for(name: str) -> str | None:
            if sizing is None or not sizing.tags_connections:
                return None
            return tags.setdefault(name, new_tag())

        instrumentation = TortoiseInstrumentation(
            self.pool_events,
            on_client,
            gate_for,
            tag_for=tag_for,
            automatic=automatic,
            eager=self._eager,
        )

        def on_yield() -> None:  # an explicit instrumentation took over: stop reading
            for name in clients:
                self._forget_probe(name)

        instrumentation.on_yield = on_yield
        instrumentation.install()
        self._activate()
        self._undo.append(instrumentation.uninstall)
