"""The stack matrix's short mode (``tests/stacks``): every supported stack, wired every
way apps wire poolwatch, autosize off and on, against the same app without poolwatch.

``python -m tests.stacks`` is the full mode, for humans; it prints the table.
"""

from __future__ import annotations

import pytest

from tests.stacks.run import MODES, Servers, run_matrix
from tests.stacks.stacks import STACKS, WIRINGS
from tests.stacks.verdicts import failures, table


@pytest.mark.postgres
def test_every_stack_in_every_wiring_breaks_nothing_and_counts_right(
    pg_dsn: str, mysql_url: str
) -> None:
    lines: list[str] = []
    results = run_matrix(Servers(pg_dsn, mysql_url), MODES["short"], log=lines.append)
    report = table(results) + "\n" + "\n".join(lines)
    assert failures(results) == [], report
    # Every cell ran: each stack's control, and each wiring with autosize off and on.
    cells = {(r["stack"], r["wiring"], r["setup"]) for r in results}
    for stack in STACKS:
        assert (stack.name, "import", "control") in cells, report
        for wiring in WIRINGS:
            for setup in ("poolwatch", "autosize"):
                assert (stack.name, wiring, setup) in cells, report
    # Autosize met real demand and a real limit: it grew, and stopped at the login's.
    sized = [r for r in results if "peak_limit" in r]
    assert len(sized) == len(WIRINGS) * sum(1 for s in STACKS if s.pooled), report
    assert all(2 < r["peak_limit"] <= 12 for r in sized), report
    # Wherever the database's budget can be read (PostgreSQL), it was, in every wiring.
    by_stack = {s.name: s for s in STACKS}
    assert all(r["budget_read"] for r in sized if by_stack[r["stack"]].budget_read), report
    # Cancellations really happened in every cell.
    assert all(r["statuses"].get("abandoned", 0) > 0 for r in results), report
