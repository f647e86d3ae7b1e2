"""Pool names of the engines poolwatch run finds, and --pool-name."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from poolwatch.launch.names import PoolNames, base_name, candidates, engine_name


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("postgresql+psycopg://app:secret@db:5432/shop", "shop"),
        ("postgresql+asyncpg://app@db/shop?ssl=require", "shop"),
        ("mysql+asyncmy://app@db:3306/billing?charset=utf8mb4", "billing"),
        ("postgresql+psycopg://app@db", "postgresql"),  # the server's default database
        ("sqlite:////srv/data/shop.db", "shop"),
        ("sqlite:///./var/orders.sqlite3", "orders"),
        ("sqlite+aiosqlite:///relative/cache.db", "cache"),
        ("sqlite://", "sqlite"),
        ("sqlite:///:memory:", "sqlite"),
        ("sqlite:///file:shop.db?mode=ro&uri=true", "shop"),
        ("sqlite:///file::memory:?cache=shared&uri=true", "sqlite"),
    ],
)
def test_a_pool_is_named_after_the_database_in_its_url(url: str, name: str) -> None:
    engine = create_engine(url) if "async" not in url else create_async_engine(url)
    try:
        assert engine_name(engine) == name
    finally:
        getattr(engine, "sync_engine", engine).dispose()


def test_an_engines_logging_name_wins(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}", logging_name="orders")
    assert engine_name(engine) == "orders"
    assert base_name("mssql", None) == "mssql"


def test_names_taken_get_a_number() -> None:
    assert list(itertools.islice(candidates("shop"), 3)) == ["shop", "shop-2", "shop-3"]


def test_pool_name_option() -> None:
    names = PoolNames.parse("main, audit=log")
    assert (names.rename("shop"), names.rename("audit")) == ("main", "log")
    assert str(names) == "main,audit=log"
    assert PoolNames.parse(str(names)) == names
    assert PoolNames.parse("").rename("shop") == "shop"
    with pytest.raises(ValueError, match="'=x': expected NAME or FOUND=NAME"):
        PoolNames.parse("=x")
    with pytest.raises(ValueError, match="one pool name for every engine at most"):
        PoolNames.parse("main,other")
