"""The kinds of finding: what each means, what one looks like, where its advice comes from.

One :class:`Kind` per ``Finding.kind`` of :mod:`poolwatch.events`, in :data:`KINDS`. The
documentation's reference of findings is generated from them, with the log line and the
findings-list entry rendered by :mod:`poolwatch.queries.findings` from each example, so
neither can drift from what poolwatch prints. Pure: the standard library and
:mod:`poolwatch.events` only.

The advice is not copied here: :attr:`Kind.advice` names the code that words it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from poolwatch.events import (
    BULK_WRITE,
    DUPLICATE,
    HELD_IDLE,
    NPLUSONE,
    SLOW_QUERY,
    UNUSED_EAGER_LOAD,
    Finding,
)

__all__ = ["HINTS", "KINDS", "Kind"]

# The function that words the advice of the statement findings per ORM, from the models.
HINTS = "poolwatch.queries.hints.example_advice"


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    """One kind of finding, as the documentation presents it.

    Attributes:
        name: the finding's ``kind``, a constant of :mod:`poolwatch.events`.
        title: a few words for a heading.
        meaning: what it says about the code, in a sentence or two.
        example: a finding of this kind from a real run of a small app on the demo's
            models (``poolwatch/demo/models.py``); its ``suggestion`` is left empty, as
            the advice is the code's own (see ``advice``).
        advice: the dotted name of the code that words the advice: a string constant,
            :data:`HINTS`, which words it per ORM and names the relation to load when
            the model metadata proves one, or a function called as :data:`HINTS` is that
            words the example's (the relation it loaded, the wait it names).
        setting: the setting that decides what is reported.
        metric: the metric that counts it (bulk writes: the one they show in; held
            connections: each checkout's idle time).
        raises: whether ``nplusone_mode="raise"`` (and the pytest plugin's ``raise``)
            fails the request or test on it; the others are logged and listed only (the
            pytest plugin fails the tests that show a kind ``poolwatch_fail_on`` names).
    """

    name: str
    title: str
    meaning: str
    example: Finding
    advice: str
    setting: str
    metric: str
    raises: bool


KINDS: Mapping[str, Kind] = MappingProxyType(
    {
        NPLUSONE: Kind(
            name=NPLUSONE,
            title="N+1 query",
            meaning=(
                "One statement shape from one call path on one pool, reads, run "
                "`nplusone_threshold` times or more in one request (or scope) with "
                "different parameters: a query per row of an earlier result."
            ),
            example=Finding(
                kind=NPLUSONE,
                route="/posts/nplusone",
                fingerprint="select ... from demo_author where id = ? limit ?",
                count=20,
                duration=0.0016746940009397804,
                call_site="poolwatch/demo/app.py:80 in _add_routes.<locals>.posts_nplusone",
                suggestion="",
                pool="default",
                method="GET",
                call_path="poolwatch/demo/app.py:80 in _add_routes.<locals>.posts_nplusone",
            ),
            advice=HINTS,
            setting="nplusone_threshold",
            metric="poolwatch_nplusone_total",
            raises=True,
        ),
        DUPLICATE: Kind(
            name=DUPLICATE,
            title="Duplicate query",
            meaning=(
                "The same statement with the same parameters on the same pool, "
                "`duplicate_threshold` times within the work of one function, with no "
                "write, COMMIT or ROLLBACK on that pool between them."
            ),
            example=Finding(
                kind=DUPLICATE,
                route="/authors/{author_id}/card",
                fingerprint="select ... from demo_author where id = ? limit ?",
                count=2,
                duration=0.0012207680010760669,
                call_site="blog/routes.py:13 in add_routes.<locals>.author_card",
                suggestion="",
                pool="default",
                method="GET",
                call_path="blog/routes.py:13 in add_routes.<locals>.author_card",
            ),
            advice=HINTS,
            setting="duplicate_threshold",
            metric="poolwatch_duplicate_queries_total",
            raises=True,
        ),
        SLOW_QUERY: Kind(
            name=SLOW_QUERY,
            title="Slow query",
            meaning="One statement that ran longer than `slow_query_threshold`.",
            example=Finding(
                kind=SLOW_QUERY,
                route="/reports/comments",
                fingerprint=(
                    "select ... from demo_post p join demo_comment c on c.post_id = p.id "
                    "where lower (c.text) like ? or c.text glob ? group by p.title "
                    "order by n desc"
                ),
                count=1,
                duration=7.1151923870002065,
                call_site="blog/routes.py:28 in add_routes.<locals>.comment_report",
                suggestion="",
                pool="default",
                method="GET",
                call_path="blog/routes.py:28 in add_routes.<locals>.comment_report",
            ),
            advice=HINTS,
            setting="slow_query_threshold",
            metric="poolwatch_slow_queries_total",
            raises=False,
        ),
        BULK_WRITE: Kind(
            name=BULK_WRITE,
            title="Bulk write",
            meaning=(
                "An INSERT, UPDATE or DELETE per row from one call path, "
                "`nplusone_threshold` times or more: a hint to batch, never an N+1."
            ),
            example=Finding(
                kind=BULK_WRITE,
                route="/posts/{post_id}/comments/import",
                fingerprint="insert into demo_comment (...) values (?, ?)",
                count=10,
                duration=0.0008770240010562702,
                call_site="blog/routes.py:22 in add_routes.<locals>.import_comments",
                suggestion="",
                pool="default",
                method="POST",
                call_path="blog/routes.py:22 in add_routes.<locals>.import_comments",
            ),
            advice=HINTS,
            setting="nplusone_threshold",
            metric="poolwatch_request_queries",
            raises=False,
        ),
        HELD_IDLE: Kind(
            name=HELD_IDLE,
            title="Connection held while idle",
            meaning=(
                "A checkout held across a wait: the application's code between two "
                "statements (or between the line that took the connection and the first, "
                "or the last and the release) sends a function to the thread pool, makes "
                "a network call or sleeps, as its source reads, however short the wait "
                "(`waited_on` names it, `(on some paths only)` when it is in a branch). "
                "Code that runs only on the CPU between its statements is none, however "
                "long a busy machine makes it. Where the code cannot be read (a lambda, an "
                "awaited call on an object of no known type), a gap of at least 100 ms "
                "in which the thread blocked, in a checkout idle for more than half the "
                "time it was held, is one, naming no wait."
            ),
            example=Finding(
                kind=HELD_IDLE,
                route="/posts/{post_id}/reviewed-comments",
                fingerprint="",
                count=1,
                duration=0.30120161900049425,
                call_site="loadtests/app.py:120 in create_app.<locals>.add_reviewed_comment",
                suggestion="",
                pool="default",
                method="POST",
                call_path="loadtests/app.py:120 in create_app.<locals>.add_reviewed_comment",
                held=0.30155328399996506,
                before="loadtests/app.py:118 in create_app.<locals>.add_reviewed_comment",
                transaction=True,
                waited_on="a sleep, asyncio.sleep, in _moderate",
            ),
            advice="poolwatch.pools.held_idle.example_advice",
            setting="nplusone_mode",
            metric="poolwatch_connection_idle_seconds",
            raises=False,
        ),
        UNUSED_EAGER_LOAD: Kind(
            name=UNUSED_EAGER_LOAD,
            title="Unused eager load",
            meaning=(
                "An eager load (SQLAlchemy's `selectinload`, `joinedload`, `subqueryload`, "
                "`immediateload`; Tortoise's `prefetch_related`, `select_related`) that "
                "loaded rows whose relation nothing read before the request (or scope) "
                "ended, FastAPI's serialization of the response included: a query or a "
                "wider join for nothing. One finding per call path and relation; each "
                "part of a chained option is judged on its own."
            ),
            example=Finding(
                kind=UNUSED_EAGER_LOAD,
                route="/posts/with-authors",
                fingerprint="select ... from demo_post",
                count=1,
                duration=0.0,
                call_site="blog/routes.py:5 in add_routes.<locals>.posts_with_authors",
                suggestion="",
                pool="default",
                method="GET",
                call_path="blog/routes.py:5 in add_routes.<locals>.posts_with_authors",
                relations=("Post.comments",),
            ),
            advice="poolwatch.queries.eager.example_advice",
            setting="nplusone_mode",
            metric="poolwatch_unused_eager_loads_total",
            raises=False,
        ),
    }
)
