"""The database budget arithmetic: what is left, and a pool's share of it."""

from __future__ import annotations

import pytest

from poolwatch.budget import ServerLimits, pool_ceiling


def test_reserved_slots_and_open_connections_are_taken_off() -> None:
    limits = ServerLimits(max_connections=100, superuser_reserved=3, reserved=2, open_total=40)
    assert limits.free() == 55


def test_a_superuser_may_use_the_reserved_slots_and_ignores_its_role_limit() -> None:
    limits = ServerLimits(
        max_connections=100, superuser_reserved=3, open_total=40, role_limit=5, superuser=True
    )
    assert limits.free() == 60


def test_role_and_database_limits_bind_when_tighter() -> None:
    base = {"max_connections": 100, "open_total": 10}
    assert ServerLimits(**base, role_limit=12, open_role=9).free() == 3
    assert ServerLimits(**base, db_limit=20, open_db=18).free() == 2
    assert ServerLimits(**base, role_limit=-1, db_limit=-1).free() == 90


def test_never_negative() -> None:
    assert ServerLimits(max_connections=10, superuser_reserved=3, open_total=12).free() == 0


def test_a_pool_keeps_what_it_holds_and_takes_a_share_of_the_rest() -> None:
    assert pool_ceiling(free=40, held=10, share=0.5) == 30
    assert pool_ceiling(free=0, held=10, share=0.5) == 10
    assert pool_ceiling(free=3, held=0, share=0.25) == 0


def test_two_instances_growing_at_once_stay_within_what_was_free() -> None:
    free = 50
    a_held, b_held = 10, 20
    a = pool_ceiling(free, a_held, 0.5)
    b = pool_ceiling(free, b_held, 0.5)
    assert (a - a_held) + (b - b_held) <= free


def test_from_row_maps_nulls_to_no_limit() -> None:
    limits = ServerLimits.from_row((100, 3, None, -1, None, 7, 2, 5, 0))
    assert limits == ServerLimits(100, 3, -1, -1, -1, 7, 2, 5, superuser=False)
    with pytest.raises(ValueError, match="9 columns"):
        ServerLimits.from_row((1, 2))
