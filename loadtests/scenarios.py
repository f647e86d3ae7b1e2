"""The load-test scenarios: traffic, app settings, and the alerts that must (not) fire.

Each scenario runs the load-test app (``loadtests.app``) with its own pool settings,
drives it with one Locust user class, and declares which of poolwatch's alerts must fire
during the run and which must stay quiet. The healthy scenario must fire nothing. The
durations are short in CI mode (the alert rules' "fast" profile has 30 s windows and
10 s ``for:``) and longer for humans.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from alerts.build import ALERTS as _RULES

__all__ = ["ALL_ALERTS", "SCENARIOS", "FindingCheck", "Scenario"]

# Every alert of the rules, in their order: the one list, in alerts/build.py.
ALL_ALERTS = tuple(alert.name for alert in _RULES)

# What says autosize itself stopped working: quiet wherever it runs.
_AUTOSIZE_HEALTH = (
    "PoolwatchAutosizeStalled",
    "PoolwatchAutosizeBudgetUnread",
    "PoolwatchAutosizePermitsOrphaned",
)

# Panels whose queries have no series unless the thing they show happened.
_LEAKS = "Connection leaks"
_RESIZES = "Autosize: resizes"
_LIMITS = "Autosize: limit and ceiling"
# ...and of autosize's own health, for the scenarios that run without autosize.
_HEALTH = (
    "Autosize: age of the last decision and budget read",
    "Autosize: failed budget reads and orphaned permits",
)
# ...and those of transactions, for scenarios whose traffic runs none.
_TRANSACTIONS = (
    "Transactions/s by outcome",
    "Rollback ratio by route",
    "Transaction duration p50 / p95 / p99",
)


@dataclasses.dataclass(frozen=True)
class FindingCheck:
    """A finding the app must list at ``/poolwatch/findings`` after the run, or must not.

    ``route`` is the route template as poolwatch names it. ``function``: the finding's
    call paths (for ``held_idle``, the statement before the wait and the one after it)
    must both name a line of this function of ``loadtests/app.py``, the later one after
    the earlier. For ``held_idle`` the route's idle time per checkout
    (``poolwatch_connection_idle_seconds``) must agree: at least the finding's threshold
    where the finding is expected, under it where it is not.
    """

    kind: str
    route: str
    listed: bool
    function: str = ""


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One load test.

    Attributes:
        name: what ``python -m loadtests NAME`` runs.
        user: the Locust user class (``loadtests/locustfile.py``).
        users, spawn_rate: Locust's ``-u`` and ``-r``.
        seconds: run length in CI mode and in full mode.
        env: the app's environment (pool size, poolwatch settings).
        must_fire, must_not_fire: alert names.
        may_be_empty: dashboard panels that may have no data after this scenario.
        outage: seconds after the start to stop the database, and to start it again.
        shape: load the step shape (users stepping up and down) instead of -u/-r.
        needs_postgres: the scenario only makes sense on PostgreSQL.
        findings: what the app's findings list must (not) hold after the run.
    """

    name: str
    user: str
    users: int
    spawn_rate: float
    seconds: tuple[int, int]
    env: Mapping[str, str]
    must_fire: tuple[str, ...]
    must_not_fire: tuple[str, ...]
    may_be_empty: tuple[str, ...] = (_LEAKS, _RESIZES, _LIMITS, *_HEALTH)
    outage: tuple[float, float] | None = None
    shape: bool = False
    needs_postgres: bool = True
    description: str = ""
    findings: tuple[FindingCheck, ...] = ()

    def duration(self, ci: bool) -> int:
        return self.seconds[0] if ci else self.seconds[1]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="healthy",
            user="HealthyUser",
            users=10,
            spawn_rate=5,
            seconds=(40, 300),
            env={"DATABASE_URL_PARAMS": "minsize=2&maxsize=10", "POOLWATCH_LEAK_THRESHOLD": "5"},
            must_fire=(),
            must_not_fire=ALL_ALERTS,
            findings=(FindingCheck("held_idle", "/posts/{post_id}/comments", listed=False),),
            description="moderate load, good queries: nothing may fire",
        ),
        Scenario(
            name="pool_exhaustion",
            user="ExhaustionUser",
            users=24,
            spawn_rate=24,
            seconds=(45, 180),
            env={
                "DATABASE_URL_PARAMS": "minsize=1&maxsize=4",
                "POOLWATCH_ACQUIRE_TIMEOUT": "2",
                "POOLWATCH_LEAK_THRESHOLD": "2",
            },
            must_fire=(
                "PoolwatchPoolSaturated",
                "PoolwatchRequestsWaiting",
                "PoolwatchAcquireWaitHigh",
                "PoolwatchAcquireTimeouts",
                "PoolwatchConnectionLeaks",
            ),
            must_not_fire=(
                "PoolwatchNPlusOne",
                "PoolwatchTargetDown",
                "PoolwatchInternalErrors",
                "PoolwatchAutosizeAtCeiling",
                "PoolwatchDatabaseSaturated",
            ),
            may_be_empty=(_RESIZES, _LIMITS, *_HEALTH),
            # Held for 2.5 s, but by a statement: a long hold, never an idle one.
            findings=(FindingCheck("held_idle", "/load/hold", listed=False),),
            description="24 users holding connections 2.5 s on a pool of 4",
        ),
        Scenario(
            name="held_idle",
            user="HeldIdleUser",
            users=16,
            spawn_rate=16,
            seconds=(45, 180),
            env={"DATABASE_URL_PARAMS": "minsize=1&maxsize=4", "POOLWATCH_LEAK_THRESHOLD": "5"},
            must_fire=(
                "PoolwatchConnectionsHeldIdle",
                "PoolwatchPoolSaturated",
                "PoolwatchRequestsWaiting",
            ),
            must_not_fire=(
                "PoolwatchDatabaseSaturated",
                "PoolwatchAcquireTimeouts",
                "PoolwatchQueryLatencyHigh",
                "PoolwatchQueryErrors",
                "PoolwatchNPlusOne",
                "PoolwatchConnectionLeaks",
                "PoolwatchTargetDown",
                "PoolwatchInternalErrors",
            ),
            findings=(
                FindingCheck(
                    "held_idle",
                    "/posts/{post_id}/reviewed-comments",
                    listed=True,
                    function="add_reviewed_comment",
                ),
                FindingCheck("held_idle", "/posts/{post_id}/checked-comments", listed=False),
            ),
            description="16 users adding comments through a 0.3 s moderation call on a pool "
            "of 4, three in four with the transaction open across the call",
        ),
        Scenario(
            name="slow_queries",
            user="SlowUser",
            users=6,
            spawn_rate=6,
            seconds=(45, 180),
            env={"DATABASE_URL_PARAMS": "minsize=2&maxsize=20"},
            must_fire=("PoolwatchQueryLatencyHigh",),
            must_not_fire=(
                "PoolwatchPoolSaturated",
                "PoolwatchAcquireTimeouts",
                "PoolwatchQueryErrors",
                "PoolwatchNPlusOne",
                "PoolwatchTargetDown",
                "PoolwatchInternalErrors",
            ),
            may_be_empty=(_LEAKS, _RESIZES, _LIMITS, *_HEALTH, *_TRANSACTIONS),
            description="1.2 s statements on a pool with room to spare",
        ),
        Scenario(
            name="nplusone_storm",
            user="NPlusOneUser",
            users=8,
            spawn_rate=8,
            seconds=(40, 180),
            env={"DATABASE_URL_PARAMS": "minsize=2&maxsize=10"},
            must_fire=("PoolwatchNPlusOne",),
            must_not_fire=(
                "PoolwatchPoolSaturated",
                "PoolwatchAcquireTimeouts",
                "PoolwatchQueryErrors",
                "PoolwatchQueryLatencyHigh",
                "PoolwatchTargetDown",
                "PoolwatchInternalErrors",
            ),
            may_be_empty=(_LEAKS, _RESIZES, _LIMITS, *_HEALTH, *_TRANSACTIONS),
            description="the N+1 endpoint under load",
        ),
        Scenario(
            name="error_burst",
            user="ErrorUser",
            users=8,
            spawn_rate=8,
            seconds=(40, 180),
            env={"DATABASE_URL_PARAMS": "minsize=2&maxsize=10"},
            must_fire=("PoolwatchQueryErrors",),
            must_not_fire=(
                "PoolwatchPoolSaturated",
                "PoolwatchAcquireTimeouts",
                "PoolwatchNPlusOne",
                "PoolwatchTargetDown",
                "PoolwatchInternalErrors",
            ),
            needs_postgres=False,
            may_be_empty=(_LEAKS, _RESIZES, _LIMITS, *_HEALTH, *_TRANSACTIONS),
            description="statements the database rejects",
        ),
        Scenario(
            name="database_outage",
            user="OutageUser",
            users=8,
            spawn_rate=8,
            seconds=(50, 180),
            env={"DATABASE_URL_PARAMS": "minsize=2&maxsize=10", "POOLWATCH_ACQUIRE_TIMEOUT": "2"},
            must_fire=("PoolwatchQueryErrors",),
            must_not_fire=("PoolwatchTargetDown", "PoolwatchNPlusOne", "PoolwatchInternalErrors"),
            outage=(12.0, 30.0),
            description="PostgreSQL stopped at 12 s and started again at 30 s",
        ),
        Scenario(
            name="autosize_step",
            user="IOUser",
            users=5,
            spawn_rate=20,
            seconds=(60, 180),
            env={
                "DATABASE_URL_PARAMS": "minsize=1&maxsize=8",
                "POOLWATCH_ACQUIRE_TIMEOUT": "10",
                "POOLWATCH_LOADTEST_AUTOSIZE": '{"min": 2, "max": 8, "interval": 0.5}',
            },
            must_fire=("PoolwatchAutosizeAtCeiling",),
            must_not_fire=(
                "PoolwatchDatabaseSaturated",  # waiting at the ceiling: the pool is too small
                *_AUTOSIZE_HEALTH,
                "PoolwatchAcquireTimeouts",
                "PoolwatchQueryErrors",
                "PoolwatchNPlusOne",
                "PoolwatchTargetDown",
                "PoolwatchInternalErrors",
            ),
            may_be_empty=(_LEAKS, *_TRANSACTIONS),
            shape=True,
            description="I/O-bound load stepping 5 -> 60 -> 5 users, autosize up to 8",
        ),
        Scenario(
            name="autosize_database_bound",
            user="CPUUser",
            users=40,
            spawn_rate=40,
            seconds=(60, 180),
            env={
                "DATABASE_URL_PARAMS": "minsize=1&maxsize=30",
                "POOLWATCH_ACQUIRE_TIMEOUT": "20",
                "POOLWATCH_LOADTEST_AUTOSIZE": '{"min": 2, "max": 30, "interval": 0.5}',
            },
            must_fire=("PoolwatchDatabaseSaturated",),
            must_not_fire=(
                "PoolwatchPoolSaturated",
                "PoolwatchRequestsWaiting",
                "PoolwatchAutosizeAtCeiling",
                *_AUTOSIZE_HEALTH,
                "PoolwatchAcquireTimeouts",
                "PoolwatchQueryErrors",
                "PoolwatchNPlusOne",
                "PoolwatchTargetDown",
                "PoolwatchInternalErrors",
            ),
            may_be_empty=(_LEAKS, *_TRANSACTIONS),
            description="CPU-bound statements from 40 users, autosize up to 30: the database "
            "is the bottleneck, not the pool",
        ),
    )
}
