"""The stack matrix's verdicts (``tests/stacks/verdicts.py``), fed cell results by hand:
which runs are asked for again, and what fails a cell after them."""

from __future__ import annotations

from typing import Any

from tests.stacks.verdicts import ask_the_cells_again, ask_the_control_again, failures

STALL = "TimeoutError: QueuePool limit of size 8 overflow 0 reached"
LOCKED = "OperationalError: (sqlite3.OperationalError) database is locked"
OTHER = "OperationalError: (sqlite3.OperationalError) disk I/O error"


def cell(setup: str, errors: dict[str, int]) -> dict[str, Any]:
    """One cell's result as ``tests.stacks.cell`` prints it: all well, but ``errors``."""
    result: dict[str, Any] = {
        "stack": "sqlalchemy-async-aiosqlite",
        "wiring": "import" if setup == "control" else "loop",
        "setup": setup,
        "statuses": {"200": 5000, "abandoned": 600},
        "errors": {kind: n for kind, n in errors.items() if n},
        "driver": {"used": 0, "idle": 8},
        "peak_sessions": 0,
        "unretrieved": 0,
    }
    if setup != "control":
        result["gauges"] = {"used": 0, "idle": 8, "pending": 0, "drift": 0}
        result["internal_errors"] = 0
    return result


def kinds(stall: int = 0, locked: int = 0, other: int = 0) -> dict[str, int]:
    counts = {STALL: stall, LOCKED: locked, OTHER: other}
    return {kind: n for kind, n in counts.items() if n}


def errors(stall: int = 0, locked: int = 0, other: int = 0) -> dict[str, Any]:
    """A run of the cell loop/poolwatch."""
    return cell("poolwatch", kinds(stall, locked, other))


def control(stall: int = 0, locked: int = 0) -> dict[str, Any]:
    """A run of the stack's control."""
    return cell("control", kinds(stall, locked))


class Reruns:
    """Hands out the next prepared result for each (wiring, setup) asked again."""

    def __init__(self, **prepared: list[dict[str, Any]]) -> None:
        self.prepared = prepared
        self.asked: list[tuple[str, str]] = []

    def __call__(self, wiring: str, setup: str) -> dict[str, Any]:
        self.asked.append((wiring, setup))
        return self.prepared[f"{wiring}_{setup}"].pop(0)


def judge(results: list[dict[str, Any]], reruns: Reruns) -> list[str]:
    """What run.py does once every cell of a stack ran: ask again, then judge."""
    ask_the_control_again(results, lambda: reruns("import", "control"), lambda _: None)
    ask_the_cells_again(results, reruns, lambda _: None)
    return failures(results)


def test_the_apps_own_errors_in_every_run_of_both_pass() -> None:
    reruns = Reruns()
    assert judge([control(stall=20, locked=7), errors(stall=40, locked=7)], reruns) == []
    assert reruns.asked == []


def test_a_stall_of_the_apps_own_that_does_not_come_back_passes() -> None:
    # The control met one stall of the database (20 requests timed out behind it), the
    # cell met a longer one (174): the app's own error, many more of it, once.
    reruns = Reruns(
        import_control=[control(), control(stall=12, locked=3)],
        loop_poolwatch=[errors()],
    )
    results = [control(stall=20, locked=7), errors(stall=174, locked=9)]
    assert judge(results, reruns) == []
    assert reruns.asked == [("import", "control")] * 2 + [("loop", "poolwatch")]
    assert results[0]["errors"] == kinds(stall=20, locked=7)  # the most of each kind
    assert len(results[1]["again"]) == 1  # the first clean run ends the asking


def test_many_more_of_the_apps_errors_in_every_run_fails() -> None:
    reruns = Reruns(
        import_control=[control(stall=20, locked=7), control()],
        loop_poolwatch=[errors(stall=90), errors(stall=60, locked=1)],
    )
    problems = judge([control(stall=20, locked=7), errors(stall=174, locked=9)], reruns)
    assert len(problems) == 1
    assert "more app errors than the control" in problems[0]
    assert reruns.asked.count(("loop", "poolwatch")) == 2


def test_a_kind_no_control_run_showed_that_comes_back_in_every_run_fails() -> None:
    reruns = Reruns(
        import_control=[control(stall=20), control(stall=30)],
        loop_poolwatch=[errors(other=2), errors(stall=3, other=1)],
    )
    problems = judge([control(stall=20), errors(stall=20, other=1)], reruns)
    assert len(problems) == 1
    assert "app errors the control never had" in problems[0]
    assert OTHER in problems[0]
    assert reruns.asked.count(("loop", "poolwatch")) == 2


def test_a_rare_stall_no_control_run_met_that_does_not_come_back_passes() -> None:
    # SQLite's lock held by a connection closed under a cancelled statement: the app's
    # own, met by the cell once, by none of the control's three runs.
    reruns = Reruns(
        import_control=[control(), control()],
        loop_poolwatch=[errors()],
    )
    results = [control(), errors(locked=5)]
    assert judge(results, reruns) == []
    assert reruns.asked == [("import", "control")] * 2 + [("loop", "poolwatch")]


def test_a_rerun_failing_another_check_does_not_clear_a_new_kind() -> None:
    lost = errors()
    lost["driver"] = {"used": 1, "idle": 7}
    lost["gauges"] = {"used": 1, "idle": 7, "pending": 0, "drift": 0}
    reruns = Reruns(
        import_control=[control(), control()],
        loop_poolwatch=[lost, errors()],
    )
    assert judge([control(), errors(locked=5)], reruns) == []  # the second rerun passed
    reruns = Reruns(
        import_control=[control(), control()],
        loop_poolwatch=[lost, errors(locked=1)],
    )
    problems = judge([control(), errors(locked=5)], reruns)
    assert len(problems) == 1
    assert "app errors the control never had" in problems[0]


def test_a_run_asked_again_clears_the_excess_only_if_every_check_passes() -> None:
    lost = errors()
    lost["driver"] = lost["gauges"] = {"used": 1, "idle": 7, "pending": 0, "drift": 0}
    reruns = Reruns(
        import_control=[control(), control()],
        loop_poolwatch=[lost, errors(stall=100)],
    )
    problems = judge([control(stall=20), errors(stall=174)], reruns)
    assert len(problems) == 1
    assert "more app errors than the control" in problems[0]


def test_a_cell_failing_another_check_is_not_asked_again() -> None:
    first = errors(stall=174)
    first["gauges"]["drift"] = 1
    reruns = Reruns(import_control=[control(), control()])
    problems = judge([control(stall=20), first], reruns)
    assert len(problems) == 2
    assert "more app errors than the control" in problems[0]
    assert problems[1].endswith("poolwatch's drift is 1, the driver's 0")
    assert ("loop", "poolwatch") not in reruns.asked
