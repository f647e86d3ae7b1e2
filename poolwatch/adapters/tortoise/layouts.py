"""Where each Tortoise version keeps what poolwatch reads and wraps: data, no mechanism.

One :class:`Layout` per ``(major, minor)`` in :data:`LAYOUTS`, read from the source of
0.21.0, 0.21.7, 0.22.2, 0.23.0, 0.24.2, 0.25.4, 1.0.0 and 1.1.9: the names of the private
classes and attributes each version has, and the order or guard its code has where that
decides what a cancelled entry leaves behind. :mod:`.entry` reads a layout's fields once,
when it builds the entries of the installed version; :func:`.seams.resolve` checks that
the installed Tortoise has every class and attribute they name; the version tests
(``tests/test_tortoise_versions.py``) check each field against the installed source.

A version not in the table is one nobody read: :func:`layout_for` says ``None`` and the
adapter observes statements only. Supporting a new version is a new row here, once its
source was read, and a run of that test under it. Nothing here touches Tortoise.
"""

from __future__ import annotations

import dataclasses

from poolwatch.adapters import major_minor

__all__ = [
    "BASE",
    "LAYOUTS",
    "SQLITE",
    "SUPPORTED",
    "Layout",
    "layout_for",
    "tortoise_version",
]

BASE = "tortoise.backends.base.client"
SQLITE = "tortoise.backends.sqlite.client"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one Tortoise minor version keeps what poolwatch reads and wraps."""

    checkout_pool: str
    """``PoolConnectionWrapper``'s pool: its own ``pool`` (to 0.23), the one it took its
    connection from even if the client has another by now, else ``client``'s ``_pool``."""
    transaction_wrapper: str
    """``TransactionContextPooled``'s TransactionWrapper: ``connection`` (to 0.23) or
    ``client`` (from 0.24)."""
    token_before_acquire: bool
    """The pooled transaction sets the task's connection override before it waits for a
    connection (to 0.25) or after it has one (1.x). A failed entry's override is undone
    whichever it got to; this records the order, which tests check against the source."""
    exit_has_finally: bool
    """Transaction exits release in a ``finally`` (0.22 on); 0.21's do not."""
    pool_init_lock: bool
    """Checkouts create the client's pool under a lock (0.24 on); before, each one that
    finds no pool creates one."""
    sqlite_transaction: tuple[str, str]
    """SQLite's transaction context, ``(module, class)``: the base ``TransactionContext``
    to 0.22, ``SqliteTransactionContext`` from 0.23."""
    sqlite_transaction_lock: str
    """Its reference to the client's lock: ``lock`` (to 0.22) or ``_trxlock``."""
    connection_lock: str
    """``ConnectionWrapper``'s lock: ``lock`` (to 0.23) or ``_lock``. It takes the lock
    before opening SQLite's connection, except on 0.21.0 (after): the tracked lock below
    is right either way."""
    transactional: str
    """The base class of transaction wrappers: ``BaseTransactionWrapper`` (to 0.23) or
    ``TransactionalDBClient``."""
    context_connections: bool
    """The connection override lives in ``get_connections()``, one handler per Tortoise
    context (1.x), not in the module-level ``connections`` (0.2x)."""


_V0_21 = Layout(
    checkout_pool="pool",
    transaction_wrapper="connection",
    token_before_acquire=True,
    exit_has_finally=False,
    pool_init_lock=False,
    sqlite_transaction=(BASE, "TransactionContext"),
    sqlite_transaction_lock="lock",
    connection_lock="lock",
    transactional="BaseTransactionWrapper",
    context_connections=False,
)
_V0_22 = dataclasses.replace(_V0_21, exit_has_finally=True)
_V0_23 = dataclasses.replace(
    _V0_22,
    sqlite_transaction=(SQLITE, "SqliteTransactionContext"),
    sqlite_transaction_lock="_trxlock",
)
_V0_24 = dataclasses.replace(
    _V0_23,
    checkout_pool="client._pool",
    transaction_wrapper="client",
    pool_init_lock=True,
    connection_lock="_lock",
    transactional="TransactionalDBClient",
)
_V1_0 = dataclasses.replace(_V0_24, token_before_acquire=False, context_connections=True)

LAYOUTS: dict[tuple[int, int], Layout] = {
    (0, 21): _V0_21,
    (0, 22): _V0_22,
    (0, 23): _V0_23,
    (0, 24): _V0_24,
    (0, 25): _V0_24,
    (1, 0): _V1_0,
    (1, 1): _V1_0,
}
"""Every Tortoise ``(major, minor)`` whose source these entries were written from."""


def layout_for(version: tuple[int, int]) -> Layout | None:
    """The layout of Tortoise ``version``, or ``None`` if it was never read."""
    return LAYOUTS.get(version)


# The Tortoise (major, minor) versions whose internals this was read and tested on.
SUPPORTED: tuple[tuple[int, int], ...] = tuple(sorted(LAYOUTS))


def tortoise_version() -> tuple[int, int]:
    """Tortoise-ORM's ``(major, minor)``."""
    import tortoise

    return major_minor(tortoise.__version__)
