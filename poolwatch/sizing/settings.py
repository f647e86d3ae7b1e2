"""What a user sets for autosize: :class:`Autosize`, validated when it is made.

``instrument_tortoise(autosize=True)`` takes the defaults; ``Autosize(min=4, max=60)``
or a dict of its fields sets them. A bad value raises :class:`~poolwatch.ConfigError`
naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType

from poolwatch.errors import ConfigError
from poolwatch.sizing.controller import Tuning

__all__ = ["ALLOWED", "SAMPLE_EVERY", "Autosize"]

SAMPLE_EVERY = 0.1  # seconds between two samples of in-use and waiting (the fastest tick)

# What each field accepts, as Autosize.__post_init__ and bounds() enforce it, in words: the
# reference of the documentation shows it beside the field (a test keeps one per field).
ALLOWED: Mapping[str, str] = MappingProxyType(
    {
        "min": "a whole number, at least 1",
        "max": "a whole number, at least `min` and at most the pool's own maximum size, or `None`",
        "initial": "a whole number from `min` to `max`, or `None`",
        "interval": f"seconds: a finite number, at least {SAMPLE_EVERY}",
        "budget": "a whole number, at least `min`, or `None`",
        "peers": "`True` or `False`",
        "budget_headroom": "a whole number, at least 0, or `None`",
        "budget_share": "a number more than 0 and at most 1",
        "budget_interval": "seconds: a finite number, at least 0.5",
        "tuning": "a `poolwatch.sizing.Tuning`",
    }
)


@dataclasses.dataclass(frozen=True, slots=True)
class Autosize:
    """Settings for adaptive sizing of a pool.

    ``instrument_tortoise(autosize=True)`` takes the defaults;
    ``autosize=Autosize(min=4, max=60)`` or ``autosize={"min": 4, "max": 60}`` sets them.

    Attributes:
        min: the limit never goes below this.
        max: the limit never goes above this (``None``: the pool's own maximum size,
            its hard ceiling).
            The driver pool must be created at least this large.
        initial: the limit at start (``None``: ``min``). Starting small lets the
            controller learn each statement's unloaded speed.
        interval: seconds between two decisions.
        budget: connections this pool may hold at most, set by hand (MySQL, PgBouncer,
            a database shared in ways poolwatch cannot see). ``None`` on PostgreSQL:
            read from the server.
        peers: on PostgreSQL, tag this pool's connections (``application_name`` ends
            with ``pw-`` and 8 hex digits) and share the database with the other tagged
            pools it sees there: a lone pool takes all that is free but the headroom, N
            pools converge to fair shares. ``False``: take ``budget_share`` of what is
            free, and leave ``application_name`` alone.
        budget_headroom: connections left free for everyone else (``None``: 5% of
            ``max_connections``, at least 2).
        budget_share: where peers cannot be seen (PgBouncer, a role that sees no other
            session, ``peers=False``), the share of the connections still free that
            this pool may take on top of its own (with N app instances, 1/N or less).
        budget_interval: seconds between two reads of the server's limits.
        tuning: the controller's constants (:class:`~poolwatch.sizing.controller.Tuning`).
    """

    min: int = 2
    max: int | None = None
    initial: int | None = None
    interval: float = 0.25
    budget: int | None = None
    peers: bool = True
    budget_headroom: int | None = None
    budget_share: float = 0.5
    budget_interval: float = 5.0
    tuning: Tuning = dataclasses.field(default_factory=Tuning)

    def __post_init__(self) -> None:
        _positive_int("autosize.min", self.min)
        if self.max is not None:
            _positive_int("autosize.max", self.max)
            if self.max < self.min:
                raise ConfigError("autosize.max", self.max, f"must be >= autosize.min ({self.min})")
        if self.initial is not None:
            _positive_int("autosize.initial", self.initial)
            if self.initial < self.min or (self.max is not None and self.initial > self.max):
                raise ConfigError(
                    "autosize.initial", self.initial, "must be between autosize.min and .max"
                )
        if self.budget is not None:
            _positive_int("autosize.budget", self.budget)
            if self.budget < self.min:
                raise ConfigError(
                    "autosize.budget", self.budget, f"must be >= autosize.min ({self.min})"
                )
        if not isinstance(self.peers, bool):
            raise ConfigError("autosize.peers", self.peers, "must be True or False")
        headroom = self.budget_headroom
        if headroom is not None and (
            isinstance(headroom, bool) or not isinstance(headroom, int) or headroom < 0
        ):
            raise ConfigError("autosize.budget_headroom", headroom, "must be an integer >= 0")
        _positive_float("autosize.interval", self.interval, minimum=SAMPLE_EVERY)
        _positive_float("autosize.budget_interval", self.budget_interval, minimum=0.5)
        share = self.budget_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ConfigError("autosize.budget_share", share, "must be a number in (0, 1]")
        if not isinstance(self.tuning, Tuning):
            raise ConfigError("autosize.tuning", self.tuning, "must be a poolwatch.sizing.Tuning")

    @property
    def tags_connections(self) -> bool:
        """Whether the pool's connections carry a peers tag: with ``peers`` on, unless a
        hand-set ``budget`` makes the server's limits unread."""
        return self.peers and self.budget is None

    @classmethod
    def coerce(cls, value: object) -> Autosize | None:
        """``None``/``False`` -> off; ``True`` -> defaults; a mapping -> its fields."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Autosize):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError("autosize", unknown, f"unknown keys; known: {sorted(known)}")
            return cls(**value)
        raise ConfigError("autosize", value, "must be True, False, a dict or an Autosize")

    def bounds(self, pool_max: int | None) -> tuple[int, int]:
        """``(lower, upper)`` for a pool whose driver allows ``pool_max`` connections."""
        upper = self.max if self.max is not None else pool_max
        if upper is None:
            raise ConfigError("autosize.max", None, "must be given: the pool's size is unknown")
        if pool_max is not None and upper > pool_max:
            raise ConfigError(
                "autosize.max",
                upper,
                f"must not exceed the pool's own maximum size ({pool_max}): create the "
                "pool at least that large (SQLAlchemy: pool_size + max_overflow; Tortoise: "
                "maxsize), or lower autosize.max",
            )
        return min(self.min, upper), upper


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, value, "must be an integer >= 1")


def _positive_float(name: str, value: object, *, minimum: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not minimum <= value < math.inf
    ):
        raise ConfigError(name, value, f"must be a finite number of seconds >= {minimum}")
