"""The detection rules, fed with events: no database, no clock, no stack."""

from __future__ import annotations

import sys
import threading

import pytest

from poolwatch import Finding, QueryEvent
from poolwatch.queries.detect import Evidence, Policy, detect, late_finding
from poolwatch.queries.groups import MAX_GROUPS, ScopeQueries


def suggest(evidence: Evidence) -> str:
    return f"fix {evidence.kind}"


def event(
    fingerprint: str = "select * from book where author_id = ?",
    *,
    site: str = "app.py:10 in view",
    operation: str = "SELECT",
    seconds: float = 0.001,
    in_list: int = 0,
    identity: int | None = None,
    path: str = "",
    pool: str = "main",
    by_relation: bool = False,
) -> QueryEvent:
    return QueryEvent(
        fingerprint, operation, site, seconds, False, pool, "/r", in_list, identity,
        path or site, by_relation,
    )  # fmt: skip


def judge(events: list[QueryEvent], policy: Policy | None = None) -> list[Finding]:
    queries = ScopeQueries()
    for e in events:
        queries.add(e)
    return detect(queries, policy or Policy(), "/r", suggest)


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


def test_loop_reaching_the_threshold_is_one_nplusone_finding() -> None:
    findings = judge([event(identity=i) for i in range(5)])
    assert kinds(findings) == ["nplusone"]
    (finding,) = findings
    assert (finding.count, finding.call_site, finding.route) == (5, "app.py:10 in view", "/r")
    assert finding.duration == pytest.approx(0.005)
    assert finding.suggestion == "fix nplusone"
    assert judge([event(identity=i) for i in range(4)]) == []


def test_same_sql_from_different_call_sites_under_threshold_is_not_a_loop() -> None:
    events = [event(site=f"app.py:{line} in view", identity=line) for line in (1, 2, 3, 4, 5)]
    assert judge(events) == []


def test_min_duration_lets_fast_loops_through_only_when_asked() -> None:
    fast = [event(seconds=0.0001, identity=i) for i in range(10)]
    assert kinds(judge(fast)) == ["nplusone"]  # default 0: fast loops are loops
    assert judge(fast, Policy(min_duration=0.01)) == []


def test_chunked_in_batches_are_not_a_loop_but_one_in_per_row_is() -> None:
    chunks = [event("select * from a where id in (...)", in_list=500, identity=i) for i in range(5)]
    last_chunk_of_one = [*chunks, event("select * from a where id in (...)", in_list=1)]
    assert judge(last_chunk_of_one) == []
    per_row = [event("select * from a where id in (...)", in_list=1, identity=i) for i in range(5)]
    assert kinds(judge(per_row)) == ["nplusone"]


def test_writes_in_a_loop_are_a_bulk_write_hint_never_an_nplusone() -> None:
    inserts = [event("insert into book (title) values (?)", operation="INSERT") for _ in range(6)]
    assert kinds(judge(inserts)) == ["bulk_write"]


def test_bookkeeping_statements_are_ignored() -> None:
    assert judge([event("begin", operation="OTHER") for _ in range(10)]) == []


def test_duplicates_are_exact_repeats_reported_once_per_fingerprint_and_site() -> None:
    twice = [event(site="a.py:1 in f", identity=7), event(site="a.py:2 in g", identity=7)]
    (finding,) = judge(twice)
    assert (finding.kind, finding.count, finding.call_site) == ("duplicate", 2, "a.py:1 in f")
    different_values = [event(identity=1), event(identity=2)]
    assert judge(different_values) == []
    two_pairs = [event(identity=1), event(identity=1), event(identity=2), event(identity=2)]
    (finding,) = judge(two_pairs)
    assert (finding.kind, finding.count) == ("duplicate", 4)


def test_repeats_inside_an_nplusone_loop_belong_to_the_loop() -> None:
    # 6 posts by 2 authors: the author query repeats, but the fix is the loop's.
    events = [event("select * from author where id = ?", identity=i % 2) for i in range(6)]
    assert kinds(judge(events)) == ["nplusone"]


@pytest.mark.parametrize("threshold", [2, 5])
def test_the_same_statement_and_parameters_again_is_a_duplicate_never_an_nplusone(
    threshold: int,
) -> None:
    # The test threshold (2) and production's (5): one identical lookup, repeated in a
    # loop or not, is reused or hoisted, not prefetched.
    repeated = [event("select * from config where id = ?", identity=7) for _ in range(6)]
    findings = judge(repeated, Policy(threshold=threshold))
    assert kinds(findings) == ["duplicate"]
    assert findings[0].count == 6


def test_the_same_read_around_a_write_is_no_duplicate() -> None:
    # exists -> INSERT -> exists; get -> UPDATE -> refresh: the second read may see other
    # rows, and reusing the first result would be a bug.
    check = event("select 1 from slot where day = ?", identity=1)
    insert = event("insert into slot (day) values (?)", operation="INSERT", site="app.py:11")
    assert judge([check, insert, check]) == []
    other_pool = QueryEvent(*insert[:5], "replica", *insert[6:])
    assert kinds(judge([check, other_pool, check])) == ["duplicate"]  # another database
    assert kinds(judge([check, check, insert, check])) == ["duplicate"]  # before it: still


def test_allow_lists_by_route_fingerprint_and_call_site() -> None:
    loop = [event(identity=i) for i in range(5)]
    assert judge(loop, Policy(allow_routes=("/r",))) == []
    assert judge(loop, Policy(allow_fingerprints=("select * from book *",))) == []
    assert judge(loop, Policy(allow_call_sites=("app.py:*",))) == []
    assert kinds(judge(loop, Policy(allow_routes=("/other/*",)))) == ["nplusone"]


def test_findings_are_ordered_biggest_first() -> None:
    small = [event("select * from a where x = ?", identity=i) for i in range(5)]
    big = [event("select * from b where x = ?", identity=i + 100) for i in range(9)]
    assert [f.count for f in judge(small + big)] == [9, 5]


def test_a_late_query_reports_its_loop_once_when_it_reaches_the_threshold() -> None:
    queries = ScopeQueries()
    policy = Policy(threshold=3)
    found = []
    for i in range(5):
        added = queries.add(event(identity=i))
        assert added is not None
        late = late_finding(queries, added, policy, "/r", suggest)
        if late is not None:
            found.append(late)
    assert [(f.kind, f.count) for f in found] == [("nplusone", 3)]


def test_groups_are_bounded() -> None:
    queries = ScopeQueries()
    for i in range(MAX_GROUPS + 10):
        queries.add(event(f"select {i}", identity=i))
    assert len(queries.groups) == MAX_GROUPS


def test_finding_text_carries_what_to_fix() -> None:
    (finding,) = judge([event(identity=i) for i in range(5)])
    assert str(finding) == (
        "nplusone on /r: 5 x 'select * from book where author_id = ?' (5.0 ms) "
        "at app.py:10 in view. fix nplusone"
    )
    assert finding.to_dict()["call_site"] == "app.py:10 in view"


# -- call paths, pools, transactions ------------------------------------------------------

HELPER = "repositories/user.py:12 in UserRepository.get"


def test_two_callers_of_one_helper_are_two_groups_not_a_loop() -> None:
    # A current-user dependency and the route load two different users with one helper.
    dependency = event(site=HELPER, path=f"deps.py:20 in current_user -> {HELPER}", identity=1)
    route = event(site=HELPER, path=f"routes/users.py:31 in profile -> {HELPER}", identity=2)
    queries = ScopeQueries()
    for e in (dependency, route):
        queries.add(e)
    assert detect(queries, Policy(threshold=2), "/r", suggest) == []


def test_a_loop_over_a_helper_is_found_with_the_loop_in_its_path() -> None:
    path = (
        "services/article.py:136 in list_articles -> services/article.py:258 in _info -> "
        "repositories/favorite.py:27 in count"
    )
    site = "repositories/favorite.py:27 in count"
    findings = judge([event(site=site, path=path, identity=i) for i in range(5)])
    (finding,) = findings
    assert (finding.kind, finding.call_site, finding.call_path) == ("nplusone", site, path)


def test_statements_on_two_pools_are_two_groups() -> None:
    events = [event(pool="primary", identity=i) for i in range(3)]
    events += [event(pool="replica", identity=10 + i) for i in range(3)]
    assert judge(events) == []  # 3 and 3, under 5
    assert {f.pool for f in judge(events, Policy(threshold=3))} == {"primary", "replica"}


def test_a_read_repeated_after_a_commit_or_rollback_is_no_duplicate() -> None:
    queries = ScopeQueries()
    queries.add(event(identity=7))
    queries.transaction_ended("main")  # get -> COMMIT -> refresh
    queries.add(event(identity=7))
    assert detect(queries, Policy(), "/r", suggest) == []
    queries.add(event(identity=7))  # and again, with nothing in between: a duplicate
    assert kinds(detect(queries, Policy(), "/r", suggest)) == ["duplicate"]


def test_a_commit_on_another_pool_ends_nothing_here() -> None:
    queries = ScopeQueries()
    queries.add(event(identity=7))
    queries.transaction_ended("other")
    queries.add(event(identity=7))
    assert kinds(detect(queries, Policy(), "/r", suggest)) == ["duplicate"]


def test_allow_call_sites_match_any_line_of_the_path() -> None:
    path = "services/report.py:9 in build -> repositories/favorite.py:27 in count"
    events = [event(site="repositories/favorite.py:27 in count", path=path, identity=i)
              for i in range(5)]  # fmt: skip
    assert judge(events, Policy(allow_call_sites=("services/report.py:*",))) == []
    assert kinds(judge(events, Policy(allow_call_sites=("services/other.py:*",)))) == ["nplusone"]


def test_a_relation_loader_is_passed_to_the_suggestion() -> None:
    seen: list[bool] = []

    def record(evidence: Evidence) -> str:
        seen.append(evidence.by_relation)
        return ""

    queries = ScopeQueries()
    for i in range(5):
        queries.add(event(identity=i, by_relation=True))
    detect(queries, Policy(), "/r", record)
    assert seen == [True]


def _loads(relation: str, table: str, count: int, first_id: int) -> list[QueryEvent]:
    """``count`` lazy loads of ``relation`` from one endpoint's serialization."""
    return [
        event(f"select * from {table} where id = ?", identity=first_id + i)._replace(
            by_relation=True, relation=relation
        )
        for i in range(count)
    ]


TARGETS = {"Hero.team": "Team", "Team.heroes": "Hero", "City.squads": "Squad"}


def _chained(events: list[QueryEvent]) -> list[Finding]:
    queries = ScopeQueries()
    for e in events:
        queries.add(e)
    return detect(queries, Policy(), "/r", suggest, targets=lambda pool, r: TARGETS.get(r))


def test_relations_that_lead_back_where_they_started_are_still_reported() -> None:
    # hero.team, then the team's heroes (a back_populates pair read by nested response
    # models): each loop's model is where the other starts; neither may be lost.
    events = [*_loads("Hero.team", "team", 6, 0), *_loads("Team.heroes", "hero", 6, 100)]
    (finding,) = _chained(events)
    assert finding.relations == ("Hero.team", "Team.heroes")  # from the one that ran first
    assert finding.count == 12


def test_a_chain_and_an_unrelated_loop_at_one_place_are_two_findings() -> None:
    events = [*_loads("City.squads", "squad", 5, 0), *_loads("Hero.team", "team", 5, 100)]
    findings = _chained(events)
    assert sorted(f.relations for f in findings) == [("City.squads",), ("Hero.team",)]


def test_noted_statements_are_grouped_in_order_around_a_transactions_end() -> None:
    # Noted for a later flush, as the recorder does: the read after the COMMIT repeats
    # nothing, the one before it does.
    queries = ScopeQueries()
    read = event(identity=7)
    queries.pending += [read, read]
    queries.transaction_ended("main")
    queries.pending.append(read)
    findings = detect(queries, Policy(duplicate_threshold=2), "/r", suggest)
    assert [(f.kind, f.count) for f in findings] == [("duplicate", 2)]
    assert not queries.pending


def test_statements_noted_by_threads_while_others_flush_are_grouped_once_each() -> None:
    queries = ScopeQueries()
    per_thread, threads = 2000, 4
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:

        def note() -> None:
            for number in range(per_thread):
                queries.pending.append(event(identity=number))

        def flush() -> None:
            for _ in range(per_thread):
                queries.flush()

        workers = [threading.Thread(target=note) for _ in range(threads)]
        workers += [threading.Thread(target=flush) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    queries.flush()
    assert sum(group.count for group in queries.groups.values()) == per_thread * threads
