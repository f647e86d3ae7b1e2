"""How many connections a database has left, and this pool's share of them.

On PostgreSQL the limits live in the server: ``max_connections`` less the slots reserved
for superusers (and, from PostgreSQL 16, ``reserved_connections``), the role's and the
database's ``CONNECTION LIMIT``, and the connections already open
(``pg_stat_activity``).

Several app instances share one database. Each autosized pool tags its connections
(``application_name`` ends with ``pw-`` and 8 hex digits, see :mod:`poolwatch.sizing.appname`),
so one read of ``pg_stat_activity`` tells every pool how many tagged pools share the
database and what each holds: :func:`peer_ceiling` gives a lone pool all that is free
(less a headroom), and N pools fair shares, without any two of them counting on the same
free slots. Where the tags cannot be seen (PgBouncer, a role that sees no other session,
connections opened before poolwatch), :func:`pool_ceiling` takes a share of what is free.

:func:`budget_for` decides between them; all three are pure. :data:`POSTGRES_LIMITS_SQL`
is the one statement that reads the inputs, cheap enough to run every few seconds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

__all__ = [
    "POSTGRES_LIMITS_SQL",
    "Budget",
    "ServerLimits",
    "budget_for",
    "default_headroom",
    "peer_ceiling",
    "pool_ceiling",
]

# A session of another role shows no backend_type to a role without pg_read_all_stats,
# only its database: counted as a client (background workers have no database, and the
# few that do, autovacuum and parallel workers, only make the count cautious).
_CLIENT = "(backend_type = 'client backend' OR (backend_type IS NULL AND datid IS NOT NULL))"

# One round trip; every column is an integer (or NULL where the server has no such
# setting) but the last two. current_setting(..., true) returns NULL instead of failing on
# older servers. ``tagged`` is "tag=count,..." for the tagged sessions of this database.
POSTGRES_LIMITS_SQL = f"""
SELECT
    current_setting('max_connections')::int AS max_connections,
    current_setting('superuser_reserved_connections')::int AS superuser_reserved,
    coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,
    (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user) AS role_limit,
    (SELECT datconnlimit FROM pg_database WHERE datname = current_database()) AS db_limit,
    (SELECT count(*) FROM pg_stat_activity WHERE {_CLIENT})::int AS open_total,
    (SELECT count(*) FROM pg_stat_activity
      WHERE {_CLIENT} AND usename = current_user)::int AS open_role,
    (SELECT count(*) FROM pg_stat_activity
      WHERE {_CLIENT} AND datname = current_database())::int AS open_db,
    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)::int AS superuser,
    current_setting('application_name') AS application_name,
    (SELECT string_agg(tag || '=' || n, ',') FROM (
        SELECT substring(application_name FROM '(pw-[0-9a-f]{{8}})$') AS tag, count(*) AS n
        FROM pg_stat_activity WHERE datname = current_database() GROUP BY 1
    ) AS sessions WHERE tag IS NOT NULL) AS tagged
""".strip()

_INTEGERS = 9  # the leading columns; then application_name and tagged
_COLUMNS = _INTEGERS + 2


@dataclasses.dataclass(frozen=True, slots=True)
class ServerLimits:
    """The inputs of :data:`POSTGRES_LIMITS_SQL`, in its column order."""

    max_connections: int
    superuser_reserved: int = 0
    reserved: int = 0
    role_limit: int = -1  # -1: no limit (PostgreSQL's spelling)
    db_limit: int = -1
    open_total: int = 0
    open_role: int = 0
    open_db: int = 0
    superuser: bool = False
    application_name: str = ""  # of the session that read these
    tagged: Mapping[str, int] = dataclasses.field(default_factory=dict)  # tag -> sessions

    @classmethod
    def from_row(cls, row: tuple[object, ...]) -> ServerLimits:
        """From one row of :data:`POSTGRES_LIMITS_SQL` (NULLs mean "no limit")."""
        if len(row) not in (_INTEGERS, _INTEGERS + 2):
            raise ValueError(f"expected {_INTEGERS + 2} columns, got {len(row)}")
        values = [-1 if value is None else int(str(value)) for value in row[:_INTEGERS]]
        name, tagged = row[_INTEGERS:] if len(row) > _INTEGERS else ("", None)
        return cls(
            max_connections=values[0],
            superuser_reserved=values[1],
            reserved=values[2],
            role_limit=values[3],
            db_limit=values[4],
            open_total=values[5],
            open_role=values[6],
            open_db=values[7],
            superuser=values[8] > 0,
            application_name=str(name or ""),
            tagged=_parse_tagged(tagged),
        )

    def free(self, headroom: int | None = 0) -> int:
        """Connections the current role could still open in the current database,
        leaving ``headroom`` slots free below each limit that binds it (``None``:
        :func:`default_headroom` of each limit).

        Below the server's ``max_connections`` the headroom is for admins, a migration,
        a cron job; below a role's or a database's ``CONNECTION LIMIT`` it is for the
        same app's other clients: a new instance's first connections, and backends
        still exiting after their client closed them, which PostgreSQL counts against
        the limit until they are gone. A lone pool that took a role's every slot would
        leave a second instance nothing to start with.
        """

        def spare(limit: int) -> int:
            return default_headroom(limit) if headroom is None else headroom

        usable = self.max_connections - spare(self.max_connections)
        if not self.superuser:  # reserved slots are not for ordinary roles
            usable -= max(0, self.superuser_reserved) + max(0, self.reserved)
        room = usable - self.open_total
        if self.role_limit >= 0 and not self.superuser:
            room = min(room, self.role_limit - spare(self.role_limit) - self.open_role)
        if self.db_limit >= 0:
            room = min(room, self.db_limit - spare(self.db_limit) - self.open_db)
        return max(0, room)


def _parse_tagged(text: object) -> dict[str, int]:
    tagged: dict[str, int] = {}
    for item in str(text or "").split(","):
        tag, _, count = item.partition("=")
        if tag and count.isdigit():
            tagged[tag] = int(count)
    return tagged


def default_headroom(max_connections: int) -> int:
    """Slots left free for everyone else (admin sessions, a migration, a cron job):
    5% of ``max_connections``, at least 2."""
    return max(2, max_connections // 20)


def pool_ceiling(free: int, held: int, share: float) -> int:
    """The most connections a pool holding ``held`` may grow to: its own plus a share.

    ``free`` counts what the database has left (not what this pool holds, which is
    already open). ``share`` is in (0, 1]. The rule when peers cannot be seen.
    """
    return held + max(0, math.floor(free * share))


def peer_ceiling(free: int, tagged: Mapping[str, int], mine: str) -> int:
    """The most connections pool ``mine`` may hold, sharing with the other tagged pools.

    The tagged pools may hold, together, what they hold now plus what is ``free`` (the
    headroom already taken off): ``room``. Each other pool is counted at what it holds or
    at its fair share (``room`` over the number of pools), whichever is more, and this
    pool may have the rest. So a lone pool may have all of ``room``; N pools that all
    want more converge to fair shares (one above its share gets less than it holds, and
    shrinks); and since every pool counts each other at least at its fair share, the
    ceilings of pools that read at the same moment add up to ``room`` at most: two
    readers never both count on the same free slots.
    """
    others = [count for tag, count in tagged.items() if tag != mine]
    room = max(0, free + tagged.get(mine, 0) + sum(others))
    pools = len(others) + 1
    # room - sum(max(count, room / pools)), rounded down, in integers: exact.
    return max(0, (pools * room - sum(max(pools * count, room) for count in others)) // pools)


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """One read's verdict: this pool's ceiling, and how it was reached."""

    ceiling: int
    peers: int | None  # tagged pools sharing the database, this one included (None: unseen)
    unseen: str = ""  # why the tags could not be used, when they could not


def budget_for(
    limits: ServerLimits,
    *,
    held: int,
    tag: str | None,
    share: float,
    headroom: int | None = None,
) -> Budget:
    """The ceiling of a pool holding ``held`` connections, tagged ``tag`` (or not).

    The tags are used only if this pool's own connections are seen with its tag: nearly
    all of them (connections open and close between the two counts). Otherwise (a pooler
    in between, sessions hidden from this role, connections opened before poolwatch)
    the verdict says why, and the ceiling is ``held`` plus ``share`` of what is free.
    """
    free = limits.free()
    if tag is not None:
        seen = limits.tagged.get(tag, 0)
        if seen >= 1 and seen >= held - max(2, held // 4):
            ceiling = peer_ceiling(limits.free(headroom), limits.tagged, tag)
            return Budget(ceiling, peers=len(limits.tagged.keys() | {tag}))
        if not limits.application_name.endswith(tag):
            unseen = "the session that read it does not carry the pool's application_name tag"
        elif seen == 0:
            unseen = "pg_stat_activity shows none of the pool's tagged sessions"
        else:
            unseen = f"pg_stat_activity shows {seen} of the pool's {held} connections"
        return Budget(pool_ceiling(free, held, share), peers=None, unseen=unseen)
    return Budget(pool_ceiling(free, held, share), peers=None)
