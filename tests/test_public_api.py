"""The public surface: the names exported, and that importing does nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import poolwatch


def test_public_names_are_pinned() -> None:
    assert sorted(poolwatch.__all__) == [
        "Autosize",
        "ConfigError",
        "Finding",
        "NPlusOneError",
        "NPlusOneWarning",
        "PoolEvents",
        "PoolProbe",
        "PoolState",
        "PoolTimeoutError",
        "PoolWatch",
        "PoolWatchError",
        "QueryEvent",
        "Settings",
        "__version__",
        "allow_nplusone",
        "current_route",
        "scope",
    ]


def test_import_does_nothing() -> None:
    script = textwrap.dedent(
        """
        import os, sys
        os.environ["POOLWATCH_METRICS_PATH"] = "not-a-path"   # would fail if read
        from prometheus_client import REGISTRY
        before = set(REGISTRY._names_to_collectors)
        import poolwatch
        assert set(REGISTRY._names_to_collectors) == before, "registered metrics at import"
        heavy = {"tortoise", "sqlalchemy", "fastapi", "starlette", "asyncpg"}
        assert not heavy & set(sys.modules), heavy & set(sys.modules)
        from poolwatch.context import _scope_listeners
        assert _scope_listeners == []
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_scope_needs_a_name() -> None:
    import pytest

    with pytest.raises(ValueError, match="scope name=''"), poolwatch.scope(""):
        pass
