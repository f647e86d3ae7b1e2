"""A realistic app (tests/realapp: routers with prefixes, a repository layer, a current-user
dependency, two engines, SQLModel): its honest suite passes in raise mode, and the one real
per-row loop it has is found, with the loop line in its call path and SQLAlchemy's fix."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from poolwatch import PoolWatch
from tests.findings_helpers import without_slow
from tests.realapp import db
from tests.realapp.main import create_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    # The app as a user's project holds it: its package, and its suite as a test file.
    shutil.copytree(ROOT / "tests" / "realapp", pytester.path / "tests" / "realapp")
    (pytester.path / "tests" / "__init__.py").write_text("")
    shutil.copy(ROOT / "tests" / "realapp" / "suite.py", pytester.path / "test_app.py")
    pytester.makeini("[pytest]\n")
    return pytester


def test_the_honest_suite_passes_in_raise_mode(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--poolwatch-nplusone=raise", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=9)
    assert "N+1 or duplicate" not in result.stdout.str()


def test_the_real_loop_is_found_with_its_loop_line(tmp_path: Path) -> None:
    engines = db.make_engines(str(tmp_path / "realapp.db"))
    watch = PoolWatch(nplusone_threshold=5)
    watch.instrument_sqlalchemy(engines["primary"], pool="primary")
    watch.instrument_sqlalchemy(engines["replica"], pool="replica")
    db.seed()
    app = create_app()
    watch.instrument_app(app)

    async def requests() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for path in ("/api/v1/users/me", "/api/v1/users/3", "/api/v1/articles",
                         "/api/v1/articles/compare"):  # fmt: skip
                assert (await client.get(path)).status_code == 200
            assert (await client.put("/api/v1/articles/2", params={"title": "x"})).is_success
            assert (await client.get("/api/v1/articles/one-by-one", params={"limit": 6})).is_success

    try:
        asyncio.run(requests())
        (finding,) = without_slow(watch.findings())
    finally:
        watch.uninstrument()
        for engine in engines.values():
            engine.dispose()
    assert finding["kind"] == "nplusone"
    assert finding["route"] == "/api/v1/articles/one-by-one"
    assert finding["pool"] == "replica"
    assert finding["count"] == 6
    assert finding["fingerprint"] == (
        "select ... from realapp_favorite where realapp_favorite.article_id = ?"
    )
    frames = finding["call_path"].split(" -> ")
    lines = (ROOT / "tests" / "realapp" / "services.py").read_text().splitlines()

    def line_of(marker: str) -> int:
        return next(i for i, text in enumerate(lines, 1) if text.rstrip().endswith(marker))

    assert frames[-3:] == [
        f"tests/realapp/services.py:{line_of('# loop: per article')} in feed_one_by_one",
        f"tests/realapp/services.py:{line_of('# helper: per article')} in _article_info",
        frames[-1],
    ]
    assert frames[-1].startswith("tests/realapp/repositories.py:")
    assert frames[-1].endswith(" in FavoriteRepository.count")
    assert frames[0].startswith("tests/realapp/routers/articles.py:")
    # Favorite.article_id is a foreign key with no relationship() over it: the fix is one
    # query for every article's favorites (the app's own batched method), not a loader.
    assert "`select(<Model>).where(<Model>.article_id.in_(values))`" in finding["suggestion"]
    assert "selectinload" not in finding["suggestion"]
    assert "prefetch_related" not in finding["suggestion"]
