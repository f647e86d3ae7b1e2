"""The unused-eager-load rule, fed with loads: no ORM, no database."""

from __future__ import annotations

from poolwatch.events import UNUSED_EAGER_LOAD
from poolwatch.queries.detect import Policy
from poolwatch.queries.eager import (
    MAX_LOADS,
    SQLALCHEMY,
    TORTOISE,
    EagerLoad,
    ScopeEagerLoads,
    advice,
    unused_findings,
)

PATH = "app/routes.py:12 in list_articles -> app/repo.py:30 in articles"


def _load(relation: str = "Article.tags", **fields: object) -> EagerLoad:
    values: dict[str, object] = {
        "option": f"selectinload({relation})",
        "loader": "selectinload",
        "orm": SQLALCHEMY,
        "call_site": "app/repo.py:30 in articles",
        "call_path": PATH,
        "pool": "main",
        "loaded": 3,
    }
    values.update(fields)
    return EagerLoad(relation=relation, **values)  # type: ignore[arg-type]


def _scope(*loads: EagerLoad) -> ScopeEagerLoads:
    scope = ScopeEagerLoads()
    for load in loads:
        scope.add(load)
    return scope


def test_a_load_that_loaded_rows_and_was_never_read_is_a_finding() -> None:
    [finding] = unused_findings(
        _scope(_load()),
        "/articles",
        method="GET",
        fingerprint=lambda load: "select ... from article",
    )
    assert finding.kind == UNUSED_EAGER_LOAD
    assert finding.relations == ("Article.tags",)
    assert (finding.route, finding.method, finding.pool) == ("/articles", "GET", "main")
    assert finding.call_path == PATH
    assert finding.call_site == "app/repo.py:30 in articles"
    assert finding.fingerprint == "select ... from article"
    assert finding.count == 1
    assert "`selectinload(Article.tags)`" in finding.suggestion
    assert "remove the option" in finding.suggestion


def test_a_read_load_and_a_load_of_no_rows_are_no_finding() -> None:
    assert unused_findings(_scope(_load(read=True)), "/a") == []
    assert unused_findings(_scope(_load(loaded=0)), "/a") == []


def test_one_read_execution_of_a_call_path_makes_its_option_used() -> None:
    scope = _scope(_load(), _load(read=True), _load())
    assert unused_findings(scope, "/a") == []


def test_executions_are_counted_per_call_path_and_relation() -> None:
    other = "app/routes.py:40 in feed -> app/repo.py:30 in articles"
    scope = _scope(_load(), _load(), _load(call_path=other), _load("Article.author"))
    findings = unused_findings(scope, "/a")
    counts = {(f.call_path, f.relations): f.count for f in findings}
    assert counts == {
        (PATH, ("Article.tags",)): 2,
        (other, ("Article.tags",)): 1,
        (PATH, ("Article.author",)): 1,
    }


def test_a_chained_part_is_judged_on_its_own_and_named_as_that_part() -> None:
    option = "selectinload(Article.author).selectinload(Author.profile)"
    used = _load("Article.author", option=option, read=True)
    unused = _load(
        "Author.profile",
        option=option,
        part=".selectinload(Author.profile)",
        keep="selectinload(Article.author)",
    )
    [finding] = unused_findings(_scope(used, unused), "/a")
    assert finding.relations == ("Author.profile",)
    assert f"the `.selectinload(Author.profile)` part of `{option}`" in finding.suggestion
    assert "`selectinload(Article.author)`" in finding.suggestion
    assert "`selectinload(Article.author).raiseload(Author.profile)`" in finding.suggestion


def test_an_option_nothing_read_is_one_finding_not_one_per_part() -> None:
    option = "selectinload(City.squads).selectinload(Squad.members)"
    outer = _load("City.squads", option=option)
    inner = _load(
        "Squad.members",
        option=option,
        part=".selectinload(Squad.members)",
        keep="selectinload(City.squads)",
    )
    [finding] = unused_findings(_scope(outer, inner), "/a")
    assert finding.relations == ("City.squads",)
    assert "remove the option" in finding.suggestion


def test_allow_lists_apply() -> None:
    scope = _scope(_load())
    assert (
        unused_findings(scope, "/admin/x", allows=Policy(allow_routes=("/admin/*",)).allows) == []
    )
    policy = Policy(allow_call_sites=("app/repo.py:*",))
    assert unused_findings(scope, "/a", allows=policy.allows) == []
    policy = Policy(allow_fingerprints=("select ... from article*",))
    found = unused_findings(
        scope, "/a", fingerprint=lambda load: "select ... from article", allows=policy.allows
    )
    assert found == []


def test_the_advice_is_worded_per_orm_and_loader() -> None:
    joined = advice(
        _load("Article.author", loader="joinedload", option="joinedload(Article.author)")
    )
    assert "a wider join" in joined
    assert "raiseload(Article.author)" in joined
    prefetch = advice(
        _load(
            "Author.posts",
            orm=TORTOISE,
            loader="prefetch_related",
            option='prefetch_related("posts")',
        )
    )
    assert prefetch.startswith('Nothing read Author.posts, which `prefetch_related("posts")`')
    assert 'remove "posts" from `prefetch_related(...)`' in prefetch
    assert "raiseload" not in prefetch
    related = advice(
        _load(
            "Post.author", orm=TORTOISE, loader="select_related", option='select_related("author")'
        )
    )
    assert 'remove "author" from `select_related(...)`' in related
    nested = advice(
        _load(
            "Post.comments",
            orm=TORTOISE,
            loader="prefetch_related",
            option='prefetch_related("posts__comments")',
            part="__comments",
            keep='prefetch_related("posts")',
        )
    )
    assert 'the `__comments` part of `prefetch_related("posts__comments")`' in nested
    assert '`prefetch_related("posts")`' in nested


def test_a_scope_tracks_a_bounded_number_of_loads_and_releases_once() -> None:
    scope = ScopeEagerLoads()
    for _ in range(MAX_LOADS + 10):
        scope.add(_load())
    assert len(scope.loads) == MAX_LOADS
    assert scope.dropped == 10
    undone: list[str] = []

    def broken() -> None:
        raise RuntimeError("an adapter's undo failed")

    scope.releases += [broken, lambda: undone.append("x")]
    scope.bind(1, [scope.loads[0]], hold=object())
    scope.release()
    scope.release()
    assert undone == ["x"]
    assert scope.by_token == {}
    assert scope.holds == []
