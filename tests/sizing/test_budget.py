"""The database budget arithmetic: what is left, and a pool's share of it."""

from __future__ import annotations

import dataclasses

import pytest

from poolwatch.sizing.budget import ServerLimits, budget_for, peer_ceiling, pool_ceiling


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
    limits = ServerLimits.from_row((100, 3, None, -1, None, 7, 2, 5, 0, None, None))
    assert limits == ServerLimits(100, 3, -1, -1, -1, 7, 2, 5, superuser=False)
    with pytest.raises(ValueError, match="11 columns"):
        ServerLimits.from_row((1, 2))


def test_from_row_reads_the_tagged_sessions() -> None:
    row = (100, 3, 0, -1, -1, 7, 7, 7, 1, "api pw-0000beef", "pw-0000beef=4,pw-12345678=2")
    limits = ServerLimits.from_row(row)
    assert limits.application_name == "api pw-0000beef"
    assert limits.tagged == {"pw-0000beef": 4, "pw-12345678": 2}


# -- peers: tagged pools sharing one database -------------------------------------------


def test_a_lone_pool_may_take_all_that_is_free() -> None:
    assert peer_ceiling(free=75, tagged={"a": 10}, mine="a") == 85


def test_n_pools_that_all_want_more_get_fair_shares() -> None:
    tagged = {"a": 2, "b": 2, "c": 2, "d": 2}
    ceilings = [peer_ceiling(free=82, tagged=tagged, mine=t) for t in tagged]
    # room = 82 + 8 = 90: 22 or 23 each, never more than 90 together
    assert all(22 <= c <= 23 for c in ceilings), ceilings
    assert sum(ceilings) <= 90


def test_a_pool_above_its_fair_share_is_told_to_give_back() -> None:
    # a grew alone to 80; b arrives holding 2: a's next ceiling is its fair share
    a = peer_ceiling(free=3, tagged={"a": 80, "b": 2}, mine="a")
    b = peer_ceiling(free=3, tagged={"a": 80, "b": 2}, mine="b")
    assert a == 42  # room 85: b counted at its share, 42.5
    assert b == 5  # only what is free now: never a slot a still holds
    assert a + b <= 85


def test_readers_at_the_same_moment_never_count_on_the_same_slots() -> None:
    # Exhaustive over small cases: whatever each holds, the ceilings of all pools that
    # read the same snapshot fit in what the tagged pools may hold together.
    for free in range(0, 30, 3):
        for holds in [(1,), (5, 1), (12, 0, 3), (1, 1, 1, 9), (20, 2, 2, 2, 2)]:
            tagged = {f"p{i}": h for i, h in enumerate(holds)}
            room = free + sum(holds)
            total = sum(peer_ceiling(free, tagged, tag) for tag in tagged)
            assert total <= room, (free, holds, total, room)
            for tag, held in tagged.items():  # none may grow past what is free now
                assert peer_ceiling(free, tagged, tag) <= held + free


def test_pools_converge_to_fair_shares_and_a_dead_ones_share_is_taken() -> None:
    # Four pools that always want more, each growing to its ceiling (and shrinking to
    # it) between two reads; room = 100 - 5 headroom = 95.
    held = {"a": 2, "b": 2, "c": 2, "d": 2}

    def read_all() -> None:
        for tag in list(held):
            free = 95 - sum(held.values())
            held[tag] = peer_ceiling(free, held, tag)
            assert sum(held.values()) <= 100

    for _ in range(3):
        read_all()
    assert all(abs(h - 95 / 4) <= 95 / 4 * 0.15 for h in held.values()), held
    del held["d"]  # its process dies: its sessions leave pg_stat_activity
    read_all()
    assert all(abs(h - 95 / 3) <= 95 / 3 * 0.15 for h in held.values()), held


def _limits(tagged: dict[str, int], name: str, free: int = 50) -> ServerLimits:
    total = 100 - free
    return ServerLimits(max_connections=100, open_total=total, application_name=name, tagged=tagged)


def test_budget_uses_the_tags_only_when_the_pools_own_sessions_carry_them() -> None:
    seen = budget_for(
        _limits({"pw-0000beef": 10}, "app pw-0000beef"), held=10, tag="pw-0000beef", share=0.5
    )
    assert seen.peers == 1
    assert seen.ceiling == 10 + 50 - 5
    # through a pooler: the session does not carry the tag, or few of the pool's do
    pooled = budget_for(_limits({}, "app"), held=10, tag="pw-0000beef", share=0.5)
    assert pooled.peers is None
    assert "does not carry" in pooled.unseen
    assert pooled.ceiling == 10 + 25
    hidden = budget_for(_limits({}, "app pw-0000beef"), held=10, tag="pw-0000beef", share=0.5)
    assert hidden.peers is None
    assert "none of the pool's" in hidden.unseen
    few = budget_for(
        _limits({"pw-0000beef": 2}, "app pw-0000beef"), held=30, tag="pw-0000beef", share=0.5
    )
    assert few.peers is None
    assert "2 of the pool's 30" in few.unseen
    untagged = budget_for(_limits({"pw-0000beef": 9}, "app"), held=10, tag=None, share=0.5)
    assert untagged.peers is None
    assert untagged.unseen == ""


def test_the_headroom_is_left_below_every_limit_that_binds() -> None:
    server = ServerLimits(max_connections=100, superuser_reserved=3, open_total=20)
    assert server.free(headroom=5) == 72
    assert server.free(headroom=None) == 72  # 5% of 100
    # A role's own CONNECTION LIMIT binds: a lone pool leaves its headroom free too, for
    # the same app's next instance and for backends still exiting.
    role = ServerLimits(max_connections=100, open_total=20, role_limit=12, open_role=4)
    assert role.free() == 8
    assert role.free(headroom=None) == 6  # at least 2 below the role's 12
    assert role.free(headroom=1) == 7
    database = ServerLimits(max_connections=100, open_total=20, db_limit=60, open_db=10)
    assert database.free(headroom=None) == 47  # 3 below the database's 60


def test_a_second_instance_always_finds_a_slot_to_start_with() -> None:
    # The race seen on a busy machine: a lone instance read the role's 12 slots as all
    # its own, a second one opened its first connection, and the first one's growth to
    # 12 was refused. The headroom below the role's limit is what the newcomer takes.
    alone = ServerLimits(
        max_connections=200,
        open_total=3,
        role_limit=12,
        open_role=1,
        application_name="a pw-0000000a",
        tagged={"pw-0000000a": 1},
    )
    first = budget_for(alone, held=1, tag="pw-0000000a", share=0.5)
    assert first.ceiling == 10
    newcomer = 1
    assert first.ceiling + newcomer <= 12
    both = ServerLimits(
        max_connections=200,
        open_total=13,
        role_limit=12,
        open_role=first.ceiling + newcomer,
        application_name="b pw-0000000b",
        tagged={"pw-0000000a": first.ceiling, "pw-0000000b": newcomer},
    )
    second = budget_for(both, held=newcomer, tag="pw-0000000b", share=0.5)
    # Nothing is free for b until a gives back: b keeps what it has, a shrinks to 5.
    assert second.ceiling == newcomer
    again = budget_for(
        dataclasses.replace(both, application_name="a pw-0000000a"),
        held=first.ceiling,
        tag="pw-0000000a",
        share=0.5,
    )
    assert again.ceiling == 5
