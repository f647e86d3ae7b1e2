"""The sizing controller, fed synthetic windows from a model of a database.

The model is a closed loop: ``users`` each run one statement after another through a
pool whose limit the controller sets. A *computing* database has ``cores`` cores: with
``k`` statements running, each takes ``base * max(1, k / cores)``. A *waiting* database
(``cores=None``) takes ``base`` whatever ``k`` is. Noise multiplies each time by a
log-normal factor; a seeded ``random.Random`` keeps every run the same.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import pytest

from poolwatch.sizing.controller import SizeController, Tuning, Window

INTERVAL = 1.0


@dataclass
class Database:
    base: float = 0.004
    cores: int | None = 2
    noise: float = 0.15  # sigma of the log-normal factor
    # Beyond its cores, a database may also slow down more than linearly (lock contention,
    # cache thrashing): this much extra per statement over the core count.
    contention: float = 0.0
    name: str = "select"  # the statement's text: another load runs other statements

    def time(self, running: int) -> float:
        if self.cores is None:
            return self.base
        over = max(0, running - self.cores)
        return self.base * max(1.0, running / self.cores) * (1 + self.contention * over)


def window(
    db: Database, limit: int, users: int, rng: random.Random, ceiling: int | None = None
) -> tuple[Window, float]:
    """One interval of the closed loop; returns the window and the statements/s done."""
    running = min(limit, users)
    waiting = users - running
    seconds = db.time(running)
    done = int(running * INTERVAL / seconds) if running else 0
    sample = [
        (hash((db.name, i % 3 == 0)), seconds * math.exp(rng.gauss(0, db.noise)))
        for i in range(min(done, 400))
    ]
    return (
        Window(
            limit=limit,
            in_use_mean=float(running),
            in_use_max=running,
            pending_mean=float(waiting),
            pending_max=waiting,
            acquires=done,
            statements=sample,
            ceiling=ceiling,
        ),
        done / INTERVAL,
    )


def run(
    controller: SizeController,
    db: Database,
    users: list[int],
    *,
    start: int,
    seed: int = 1,
    ceiling: int | None = None,
) -> list[int]:
    """The limit after each window, for a list of per-window user counts."""
    rng = random.Random(seed)
    limit, limits = start, []
    for count in users:
        observed, _ = window(db, limit, count, rng, ceiling)
        limit = controller.decide(observed).limit
        limits.append(limit)
    return limits


def test_a_computing_database_keeps_the_limit_near_its_cores() -> None:
    limits = run(SizeController(1, 100), Database(cores=2), [200] * 60, start=2)
    settled = limits[20:]
    assert max(settled) <= 4, limits
    assert min(settled) >= 2, limits


def test_a_waiting_database_grows_to_the_ceiling_within_a_dozen_windows() -> None:
    limits = run(SizeController(2, 90), Database(cores=None, base=0.05), [200] * 40, start=2)
    assert limits[11] == 90, limits
    assert limits[-1] == 90


def test_growth_stops_at_the_demand() -> None:
    limits = run(SizeController(2, 90), Database(cores=None, base=0.05), [30] * 40, start=2)
    assert 30 <= limits[-1] <= 32, limits


def test_a_change_of_query_mix_is_not_saturation() -> None:
    controller = SizeController(2, 90)
    fast = run(controller, Database(cores=None, base=0.002), [60] * 15, start=2)
    assert fast[-1] >= 60
    # The same pool now runs reports 50x slower, but every statement is new: no inflation.
    slow_db = Database(cores=None, base=0.1)
    rng = random.Random(3)
    limit = fast[-1]
    for _ in range(10):
        observed, _ = window(slow_db, limit, 60, rng)
        reports = [(hash("report"), t) for _, t in observed.statements]
        limit = controller.decide(
            Window(limit, 60.0, 60, 0.0, 0, observed.acquires, statements=reports)
        ).limit
    assert limit >= 60


@pytest.mark.parametrize("seed", range(5))
def test_noise_does_not_make_it_oscillate(seed: int) -> None:
    db = Database(cores=2, noise=0.35)
    limits = run(SizeController(1, 64), db, [150] * 80, start=2, seed=seed)
    settled = limits[20:]
    assert max(settled) <= 5, limits
    changes = sum(1 for a, b in itertools.pairwise(settled) if a != b)
    assert changes <= len(settled) // 3, limits


def test_a_database_that_slows_down_under_load_is_held_small() -> None:
    db = Database(cores=4, contention=0.08)
    limits = run(SizeController(1, 100), db, [200] * 60, start=2)
    assert max(limits[20:]) <= 7, limits


def test_step_changes_up_and_down_settle_each_time() -> None:
    db = Database(cores=None, base=0.02)
    phases = [5] * 30 + [50] * 30 + [200] * 30 + [20] * 30
    limits = run(SizeController(2, 120), db, phases, start=2)
    assert 5 <= limits[29] <= 7
    assert 50 <= limits[59] <= 52
    assert limits[89] == 120
    assert 20 <= limits[119] <= 24, limits


def test_bursts_grow_then_idle_windows_shrink_slowly() -> None:
    db = Database(cores=None, base=0.02)
    bursty = ([100] * 5 + [2] * 10) * 4
    limits = run(SizeController(2, 100), db, bursty, start=2)
    # Each burst grows the limit; between bursts it shrinks one step per idle period,
    # not to the floor at once.
    assert max(limits) >= 40
    drops = [a - b for a, b in itertools.pairwise(limits) if b < a]
    assert all(drop <= max(limits) // 2 + 1 for drop in drops)


def test_never_outside_the_bounds() -> None:
    controller = SizeController(3, 10)
    assert controller.decide(Window(limit=3, statements=[(1, 0.01)] * 20)).limit >= 3
    saturated = run(controller, Database(cores=1, contention=0.5), [100] * 20, start=10)
    assert min(saturated) >= 3
    waiting = run(SizeController(3, 10), Database(cores=None), [100] * 20, start=3)
    assert max(waiting) <= 10


def test_refused_connections_back_off_and_cool_down() -> None:
    controller = SizeController(2, 100)
    decision = controller.decide(Window(limit=40, in_use_mean=40, in_use_max=40, refused=3))
    assert decision.limit == 28
    assert decision.reason == "database refused connections"
    # Still waiting, no inflation known: the cooldown holds it.
    held = controller.decide(Window(limit=28, in_use_mean=28, in_use_max=28, pending_mean=9))
    assert held.limit == 28


def test_the_database_budget_caps_growth_and_forces_a_shrink() -> None:
    limits = run(SizeController(2, 200), Database(cores=None, base=0.05), [300] * 20, start=2,
                 ceiling=37)  # fmt: skip
    assert max(limits) == 37
    controller = SizeController(2, 200)
    over = controller.decide(Window(limit=80, in_use_mean=10, in_use_max=10, ceiling=30))
    assert (over.limit, over.reason) == (30, "over the database budget")


def test_no_statements_means_no_inflation_and_careful_growth() -> None:
    controller = SizeController(1, 10)
    decision = controller.decide(Window(limit=4, in_use_mean=4, in_use_max=4, pending_mean=6))
    assert decision.inflation is None
    assert decision.limit == 5


def test_tuning_is_respected() -> None:
    tuning = Tuning(idle_windows=1)
    controller = SizeController(1, 50, tuning)
    decision = controller.decide(Window(limit=40, in_use_mean=2, in_use_max=2))
    assert decision.limit == 21
    assert decision.reason == "connections idle"


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="lower"):
        SizeController(5, 4)
    with pytest.raises(ValueError, match="lower"):
        SizeController(0, 4)


def test_after_a_computing_phase_a_waiting_load_still_grows_fast() -> None:
    controller = SizeController(1, 90)
    computing = run(controller, Database(cores=2), [200] * 30, start=1)
    assert max(computing[10:]) <= 5
    waiting = run(
        controller, Database(cores=None, base=0.02, name="report"), [60] * 20, start=computing[-1]
    )
    assert waiting[12] >= 55, waiting


def test_a_long_saturation_does_not_become_the_no_load_speed() -> None:
    # Held at the knee for many windows, the knee's own speed must not turn into the
    # "no-load" time, or the limit creeps up window after window.
    limits = run(SizeController(1, 100), Database(cores=2), [200] * 400, start=2)
    assert max(limits[20:]) <= 4, limits


@pytest.mark.parametrize("cores", [2, 3, 4, 6])
def test_a_steady_load_is_probed_rarely(cores: int) -> None:
    limits = run(SizeController(1, 100), Database(cores=cores, noise=0.05), [200] * 400, start=2)
    rises = [i for i, (a, b) in enumerate(itertools.pairwise(limits)) if b > a]
    assert len(rises) <= 3, limits
    # At most one look well past the knee (once the no-load times have drifted a little)
    assert sorted(limits[20:])[-5] <= 2 * cores, limits


def test_a_knee_that_holds_is_tested_less_and_less_often() -> None:
    # Up to 3 statements at once run at full speed, a 4th makes each 2.5x slower: the knee
    # the controller remembers is exactly right, and each test of it finds it again.
    controller = SizeController(1, 100)
    limit, tests = 3, []
    for index in range(1500):
        seconds = 0.004 if limit <= 3 else 0.010
        observed = Window(
            limit, float(limit), limit, 100.0, 150, 100, statements=[(1, seconds)] * 40
        )
        decision = controller.decide(observed)
        if decision.reason == "testing the knee":
            tests.append(index)
        limit = decision.limit
        assert index < 10 or limit <= 4  # after the first look at how far it can go
    gaps = [b - a for a, b in itertools.pairwise(tests)]
    assert len(tests) >= 4, tests
    assert all(b > a for a, b in itertools.pairwise(gaps)), tests


def test_a_database_that_frees_up_is_found_by_a_test_of_the_knee() -> None:
    controller = SizeController(1, 100)
    busy = run(controller, Database(cores=2, noise=0.05), [200] * 30, start=2)
    assert busy[-1] <= 4
    # The same statements, but the database now has 16 cores for them.
    freed = run(controller, Database(cores=16, noise=0.05), [200] * 120, start=busy[-1])
    assert freed[-1] >= 12, freed


def _storm(limit: int, opened: int, inflation: float) -> Window:
    statements = [(1, 0.004 * inflation)] * 50
    return Window(limit, float(limit), limit, 50.0, 60, 100, statements=statements, opened=opened)


def test_a_burst_of_new_connections_is_not_taken_for_saturation() -> None:
    controller = SizeController(2, 90)
    for _ in range(4):  # learn the no-load time at a few connections
        controller.decide(_storm(8, 0, 1.0))
    # 24 connections opened at once stall the client: everything in flight looks 3x slower
    assert controller.decide(_storm(32, 24, 3.0)).limit == 32
    assert controller.decide(_storm(32, 0, 3.0)).reason == "connections opening"
    # Two windows later the slowdown is trusted again.
    assert controller.decide(_storm(32, 0, 3.0)).limit < 32
