"""How many connections a database has left, and this pool's share of them.

On PostgreSQL the limits live in the server: ``max_connections`` less the slots reserved
for superusers (and, from PostgreSQL 16, ``reserved_connections``), the role's and the
database's ``CONNECTION LIMIT``, and the connections already open
(``pg_stat_activity``). Several app instances share one database, so each takes only a
share of what is left (``share``: with N instances, 1/N or less keeps their sum under
the limit even if all grow at once), and keeps what it already holds.

:func:`pool_ceiling` is the arithmetic (pure); :data:`POSTGRES_LIMITS_SQL` is the one
statement that reads the inputs, cheap enough to run every few seconds.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["POSTGRES_LIMITS_SQL", "ServerLimits", "pool_ceiling"]

# One round trip; every column is an integer (or NULL where the server has no such
# setting). current_setting(..., true) returns NULL instead of failing on older servers.
POSTGRES_LIMITS_SQL = """
SELECT
    current_setting('max_connections')::int AS max_connections,
    current_setting('superuser_reserved_connections')::int AS superuser_reserved,
    coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,
    (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user) AS role_limit,
    (SELECT datconnlimit FROM pg_database WHERE datname = current_database()) AS db_limit,
    (SELECT count(*) FROM pg_stat_activity
      WHERE backend_type = 'client backend')::int AS open_total,
    (SELECT count(*) FROM pg_stat_activity
      WHERE backend_type = 'client backend' AND usename = current_user)::int AS open_role,
    (SELECT count(*) FROM pg_stat_activity
      WHERE backend_type = 'client backend' AND datname = current_database())::int AS open_db,
    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)::int AS superuser
""".strip()


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

    @classmethod
    def from_row(cls, row: tuple[object, ...]) -> ServerLimits:
        """From one row of :data:`POSTGRES_LIMITS_SQL` (NULLs mean "no limit")."""
        values = [-1 if value is None else int(str(value)) for value in row]
        if len(values) != 9:
            raise ValueError(f"expected 9 columns, got {len(values)}")
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
        )

    def free(self) -> int:
        """Connections the current role could still open in the current database."""
        usable = self.max_connections
        if not self.superuser:  # reserved slots are not for ordinary roles
            usable -= max(0, self.superuser_reserved) + max(0, self.reserved)
        room = usable - self.open_total
        if self.role_limit >= 0 and not self.superuser:
            room = min(room, self.role_limit - self.open_role)
        if self.db_limit >= 0:
            room = min(room, self.db_limit - self.open_db)
        return max(0, room)


def pool_ceiling(free: int, held: int, share: float) -> int:
    """The most connections a pool holding ``held`` may grow to: its own plus a share.

    ``free`` counts what the database has left (not what this pool holds, which is
    already open). ``share`` is in (0, 1].
    """
    return held + max(0, math.floor(free * share))
