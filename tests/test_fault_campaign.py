"""The fault campaign's short profile (``tests/campaign``), on its own PostgreSQL cluster
(the campaign restarts it mid-round).

The long profile is ``python -m tests.campaign --profile long``; the README has its
last result.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.campaign.run import PROFILES, Restarter, failures, run_campaign, summary
from tests.servers import HOST, Postgres, workdir


@pytest.mark.postgres
@pytest.mark.usefixtures("pg_dsn")  # skipped without PostgreSQL, failed under CI
def test_the_short_campaign_loses_no_connection() -> None:
    profile = PROFILES["short"]
    lines: list[str] = []
    # A directory the postgres user may enter (pytest's own are private to root).
    with workdir() as work, Postgres(work) as postgres:
        dsn = f"postgresql://postgres@{HOST}:{postgres.port}/postgres"
        results = asyncio.run(
            run_campaign(profile, dsn, Restarter(postgres.stop, postgres.start), lines.append)
        )
    report = summary(profile, results) + "\n" + "\n".join(lines)
    assert failures(results) == [], report
    assert {(r.shop, r.setup) for r in results} == {
        (shop, setup) for shop in profile.shops for setup in ("control", "poolwatch", "autosize")
    }
    for result in results:
        if result.setup == "control":
            continue
        assert len(result.rounds) == profile.rounds, report
        assert [r.restarted for r in result.rounds].count(True) == 1, report
        # Every kind of fault was really injected.
        for action in ("rollback", "broken", "guarded"):
            assert sum(r.actions[action] for r in result.rounds) > 50, report
        assert result.total("abandoned") > 50, report
        assert result.total("504") > 20, report  # the app's own wait_for fired
        assert result.rounds[-1].poolwatch["timeouts"] > 100, report  # acquire timeouts
