"""poolwatch's count of checkouts against the driver's, and leaks nobody was seen taking."""

from __future__ import annotations

import pytest

from poolwatch.pools.reconcile import Unaccounted, drift


@pytest.mark.parametrize(
    ("used", "checked_out", "pending", "returning", "expected"),
    [
        (0, 0, 0, 0, 0),
        (5, 5, 0, 0, 0),  # agree
        (6, 5, 1, 0, 0),  # an acquire in flight may already hold one
        (6, 5, 0, 1, 0),  # a release in flight may still be counted by the driver
        (5, 5, 3, 2, 0),  # ...or not yet / no longer
        (7, 5, 1, 0, 1),  # one nobody accounts for
        (10, 0, 0, 0, 10),  # the reported bug: the driver has them all, poolwatch none
        (3, 5, 0, 0, -2),  # poolwatch holds two the driver has back
    ],
)
def test_drift(used: int, checked_out: int, pending: int, returning: int, expected: int) -> None:
    assert drift(used, checked_out, pending, returning) == expected


def test_a_connection_out_all_along_the_threshold_is_one_leak_reported_once() -> None:
    tracker = Unaccounted()
    # One second apart, threshold 3 s: not a leak until 3 s of history say so.
    assert [tracker.sample(t, 1, 3.0) for t in range(3)] == [0, 0, 0]
    assert tracker.sample(3, 1, 3.0) == 1
    assert [tracker.sample(t, 1, 3.0) for t in range(4, 10)] == [0] * 6


def test_connections_in_flight_now_and_then_are_never_a_leak() -> None:
    tracker = Unaccounted()
    pattern = [1, 0, 2, 0, 1, 1, 0, 3, 0, 1] * 5
    assert sum(tracker.sample(t, d, 3.0) for t, d in enumerate(pattern)) == 0


def test_the_floor_counts_and_a_later_leak_is_reported_too() -> None:
    tracker = Unaccounted()
    found = [tracker.sample(t, d, 2.0) for t, d in enumerate([2, 3, 2, 2, 2, 1, 1, 1, 2, 2, 2])]
    # Two out from t=0 (reported at t=2); one came back (t=5), another leaked at t=8
    # and was still out at t=10.
    assert found == [0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert tracker.reported == 2


def test_negative_drift_is_not_a_leak() -> None:
    tracker = Unaccounted()
    assert sum(tracker.sample(t, -3, 1.0) for t in range(10)) == 0
