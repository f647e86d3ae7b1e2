"""Which of Tortoise's context managers take a connection, found in the installed Tortoise.

:func:`resolve` turns a :class:`~.layouts.Layout` into the :class:`Seam` s to wrap: each
class the layout names, imported from its module, with the :class:`~.entry.Entry` that
knows what its ``__aenter__`` takes. A class, method or slot the layout names and this
Tortoise lacks is reported, never guessed at: the instrumentation then wraps none of them.
Only classes are read here (their ``__dict__`` and ``__slots__``), never an instance.
"""

from __future__ import annotations

import dataclasses
import importlib

from poolwatch.adapters.tortoise.entry import (
    Entry,
    PoolCheckout,
    PooledTransaction,
    PoolInit,
)
from poolwatch.adapters.tortoise.layouts import BASE, Layout
from poolwatch.adapters.tortoise.sqlite_entry import SqliteLock, SqliteTransaction

__all__ = ["Seam", "resolve"]


@dataclasses.dataclass(frozen=True)
class Seam:
    """One context manager that takes a connection, found in this Tortoise."""

    cls: type
    entry: Entry
    trims: bool = False
    """Its exit is a bare release, so autosize may close the connection on the way back
    (a transaction's exit commits first)."""


def resolve(layout: Layout) -> tuple[list[Seam], list[str]]:
    """The seams of ``layout`` found in the installed Tortoise, and what is missing
    (``"TransactionContextPooled.token"``). A backend whose driver is not installed is
    neither: its classes are simply not there to wrap."""
    missing: list[str] = []
    base = importlib.import_module(BASE)
    transactional = getattr(base, layout.transactional, None)
    if not isinstance(transactional, type):
        missing.append(f"{BASE}.{layout.transactional}")
        transactional = _Never
    init = PoolInit()  # shared: a plain checkout and a transaction may come first together
    wanted: list[tuple[str, str, Entry, bool]] = [
        (BASE, "PoolConnectionWrapper", PoolCheckout(layout, init), True),
        (BASE, "TransactionContextPooled", PooledTransaction(layout, init), False),
        (BASE, "ConnectionWrapper", SqliteLock(layout, transactional), False),
        (*layout.sqlite_transaction, SqliteTransaction(layout), False),
    ]
    found: list[Seam] = []
    for module_name, name, entry, trims in wanted:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # that backend's driver is not installed
            continue
        cls = getattr(module, name, None)
        if not isinstance(cls, type):
            missing.append(name)
            continue
        methods = ("__aenter__", "__aexit__") + (("ensure_connection",) if entry.ensure else ())
        lacking = [m for m in methods if m not in cls.__dict__]
        slots = _slots(cls)
        if slots is not None:
            lacking += [a for a in entry.attributes if a not in slots]
        if lacking:
            missing.extend(f"{name}.{attribute}" for attribute in lacking)
            continue
        found.append(Seam(cls, entry, trims))
    return found, missing


class _Never:
    """Stands in for a missing base class: no instance is of it."""


def _slots(cls: type) -> set[str] | None:
    """Every attribute an instance of ``cls`` can have, or ``None`` if it is unbounded (a
    class in its MRO has no ``__slots__``, so its instances have a ``__dict__``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        slots = klass.__dict__.get("__slots__")
        if slots is None:
            return None
        names.update((slots,) if isinstance(slots, str) else slots)
    return names
