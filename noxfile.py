"""The test command: ``python3 -m nox`` runs every job, one nox session each.

* ``lint``: ruff check and ruff format --check;
* ``types``: mypy, strict;
* ``tests``: the whole suite on the newest supported versions (pinned in pyproject's
  ``dev`` extra), against a throwaway PostgreSQL and MariaDB;
* ``oldest``: the tests of everything that touches an ORM, FastAPI/Starlette, pytest or
  prometheus_client, on the oldest supported versions: ``oldest(stack='bounds')`` on the
  lower bounds themselves (``scripts/oldest.txt``), ``oldest(stack='tortoise')`` on the
  oldest Tortoise and what installs beside it (``scripts/oldest-tortoise.txt``);
* ``docs``: the documentation site, ``mkdocs build --strict``.

``python3 -m nox -s tests -- -k tortoise -x`` runs one job, with arguments for pytest.
Every job runs even if one before it failed; the exit status says whether all passed.
The servers come from :mod:`tests.servers`: Debian's packages are installed when missing
(as root, or with sudo); under ``CI=true`` a server that cannot be had fails the job,
locally its tests are skipped with a message.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # tests.servers: standard library only

from tests import servers  # noqa: E402

nox.options.sessions = ["lint", "types", "tests", "oldest", "docs"]
nox.options.reuse_venv = "yes"  # locally; CI starts from a clean clone anyway

SOURCES = ("poolwatch", "tests", "benchmarks", "alerts", "dashboards", "loadtests", "docs")
DEV = ".[dev]"
# What the oldest versions must pass: every test that touches an ORM, FastAPI/Starlette,
# pytest or prometheus_client; the load tests, the fault campaign, the stack matrix and
# the generated files run once, on the newest.
OLDEST_TESTS = (
    "tests/adapters",
    "tests/exposition",
    "tests/launch",
    "tests/queries/test_findings.py",
    "tests/test_public_api.py",
    "tests/test_config.py",
    "tests/test_demo.py",
    "tests/test_testing.py",
    "tests/test_pytest_plugin.py",
    "tests/test_pytest_plugin_listed.py",
    "tests/test_realapp.py",
    "tests/pools/test_checkout_gaps.py",
    "tests/pools/test_wait_reader.py",
    "tests/pools/test_held_idle_waits.py",
)
# The lower bounds do not all install together: Tortoise 0.21 needs Pydantic 2, FastAPI 0.92
# Pydantic 1. scripts/oldest.txt (SQLAlchemy 2.0.0, FastAPI 0.92, prometheus-client 0.14.1)
# runs what needs no Tortoise, SQLModel (SQLAlchemy 2.0.14) or AsyncAttrs (2.0.13);
# scripts/oldest-tortoise.txt (Tortoise 0.21.0, FastAPI 0.100, SQLAlchemy 2.0.25) runs all.
OLDEST_BOUNDS_TESTS = (
    "tests/adapters/sqlalchemy",
    "tests/adapters/test_completion.py",
    "tests/exposition/test_routes.py",
    "tests/exposition/test_app_endpoints.py",
    "tests/exposition/test_endpoints.py",
    "tests/exposition/test_histogram.py",
    "tests/exposition/test_multiprocess.py",
    "tests/exposition/test_server.py",
    "tests/exposition/test_tracing.py",
    "tests/queries/test_findings.py",
    "tests/test_public_api.py",
    "tests/test_testing.py",
    "tests/test_pytest_plugin_listed.py",
    "tests/pools/test_checkout_gaps.py",
    "tests/pools/test_wait_reader.py",
    "tests/pools/test_held_idle_waits.py",
)
OLDEST = {
    "bounds": ("scripts/oldest.txt", OLDEST_BOUNDS_TESTS),
    "tortoise": ("scripts/oldest-tortoise.txt", OLDEST_TESTS),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def test_servers(session: nox.Session) -> Iterator[dict[str, str]]:
    """PostgreSQL and MariaDB for one session, and their URLs for the tests."""
    missing = servers.install_missing()
    if missing:
        message = f"missing Debian packages: {', '.join(missing)}"
        if in_ci():
            session.error(f"{message} (CI is set: the tests that need them would not run)")
        session.warn(f"{message}; the tests that need them are skipped")
    environment: dict[str, str] = {}
    with servers.workdir() as work, contextlib.ExitStack() as running:
        if servers.pg_bin() is not None:
            postgres = running.enter_context(servers.Postgres(work, max_connections=200))
            environment["POOLWATCH_TEST_PG_DSN"] = postgres.dsn
            session.log(f"PostgreSQL at {postgres.dsn}")
        if servers.mariadbd() is not None:
            mariadb = running.enter_context(servers.MariaDB(work))
            environment["POOLWATCH_TEST_MYSQL_URL"] = mariadb.url
            session.log(f"MariaDB at {mariadb.url}")
        yield environment


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


def dev(session: nox.Session) -> Path:
    """The one environment of the newest versions (pyproject's ``dev`` extra) that the
    types, tests and docs sessions share, made (or brought up to date with
    pyproject.toml) on first use; its ``bin`` directory. One install instead of three
    saves CI minutes."""
    environment = ROOT / ".nox" / "dev"
    python = environment / "bin" / "python"
    stamp = environment / "pyproject.sha256"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(environment), external=True)
    if not stamp.exists() or stamp.read_text() != wanted:
        session.run(str(python), "-m", "pip", "install", "-q", "-e", DEV, external=True)
        stamp.write_text(wanted)
    return environment / "bin"


@nox.session(venv_backend="none")
def types(session: nox.Session) -> None:
    """mypy, strict (pyproject's [tool.mypy])."""
    session.run(str(dev(session) / "mypy"), external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The whole suite on the newest supported versions."""
    python = dev(session) / "python"
    with test_servers(session) as environment:
        session.run(str(python), "-m", "pytest", *session.posargs, env=environment, external=True)


@nox.session
@nox.parametrize("stack", list(OLDEST))
def oldest(session: nox.Session, stack: str) -> None:
    """The ORM, web framework, pytest and Prometheus client tests on the oldest
    supported versions (poolwatch from this checkout, without its own pins)."""
    requirements, selection = OLDEST[stack]
    session.install("-r", requirements)
    session.install("--no-deps", "-e", ".")
    with test_servers(session) as environment:
        session.run(
            "python", "-m", "pytest", "-q", *(session.posargs or selection), env=environment
        )
    if session.posargs:
        return
    # The pytest plugin on the oldest pytest and pluggy it supports. pytest-asyncio (which
    # needs a newer pytest) goes; the ini's asyncio options are then unknown, not wrong.
    session.run("python", "-m", "pip", "uninstall", "-q", "-y", "pytest-asyncio")
    session.install("-r", "scripts/oldest-pytest.txt")
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-W",
        "ignore::pytest.PytestConfigWarning",
        "tests/test_pytest_plugin.py",
        "tests/test_pytest_plugin_listed.py",
    )


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """The documentation site, built strictly: a broken link or a reference entry the
    code no longer has fails it."""
    session.run(
        str(dev(session) / "mkdocs"),
        "build",
        "--strict",
        "--site-dir",
        str(ROOT / ".nox" / "site"),
        env={"NO_MKDOCS_2_WARNING": "1"},  # Material's notice about MkDocs 2, not a warning
        external=True,
    )
