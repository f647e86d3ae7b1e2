"""The generated reference: every metric, setting, pytest option, finding kind and alert
has an entry with a meaning, and the documentation site builds with ``--strict``.

The entries come from the same functions the MkDocs hook (``docs/hooks/reference.py``)
calls, so what passes here is what the site shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import CollectorRegistry

from poolwatch import ConfigError, events
from poolwatch.config import ALLOWED as SETTINGS_ALLOWED
from poolwatch.config import Settings
from poolwatch.exposition.metrics import Metrics
from poolwatch.queries.kinds import KINDS
from poolwatch.sizing.settings import ALLOWED as AUTOSIZE_ALLOWED
from poolwatch.sizing.settings import Autosize
from tests.conftest import _unavailable

ROOT = Path(__file__).resolve().parent.parent


def _load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "poolwatch_docs_reference", ROOT / "docs" / "hooks" / "reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as MkDocs loads a hook: its dataclasses need it
    spec.loader.exec_module(module)
    return module


reference = _load_hook()


def test_every_metric_has_a_type_labels_and_a_meaning() -> None:
    entries = {entry.name: entry for entry in reference.metric_entries()}
    registry = CollectorRegistry()
    Metrics(registry)
    defined = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in registry.collect()
    }
    scraped = {
        "db_client_connection_count",
        "db_client_connection_max",
        "db_client_connection_pending_requests",
        "poolwatch_pool_drift",
    }
    assert set(entries) == defined | scraped
    for entry in entries.values():
        assert entry.meaning.strip(), entry.name
        assert entry.labels, entry.name
        assert entry.type in ("counter", "gauge", "histogram", "untyped"), entry.name
    assert entries["db_client_operation_duration_seconds"].labels == (
        "pool",
        "operation",
        "route",
    )
    assert entries["db_client_connection_count"].labels == ("pool", "state")
    page = reference.metrics_markdown()
    for name in entries:
        assert f"`{name}`" in page


@pytest.mark.parametrize(
    ("cls", "allowed", "environment"),
    [(Settings, SETTINGS_ALLOWED, True), (Autosize, AUTOSIZE_ALLOWED, False)],
)
def test_every_setting_has_a_meaning_and_what_it_accepts(
    cls: type, allowed: dict[str, str], environment: bool
) -> None:
    fields = [field.name for field in dataclasses.fields(cls)]
    assert sorted(allowed) == sorted(fields), "one ALLOWED entry per field"
    entries = reference.field_entries(cls, allowed, environment)
    assert [entry.name for entry in entries] == fields
    for entry in entries:
        assert entry.meaning.strip(), f"{cls.__name__}.{entry.name}: no Attributes: entry"
        assert entry.allowed.strip(), entry.name
        assert entry.default.strip(), entry.name
    page = reference.settings_markdown() if environment else reference.autosize_markdown()
    for name in fields:
        assert f"`{name}`" in page
        if environment:
            assert f"`POOLWATCH_{name.upper()}`" in page


def test_the_environment_variables_shown_are_the_ones_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="poolwatch")
    for entry in reference.field_entries(Settings, SETTINGS_ALLOWED, True):
        with contextlib.suppress(ConfigError):  # a bad value: read, and refused
            Settings.from_env({entry.environment: "x"})
    assert "is not a poolwatch setting" not in caplog.text


def test_every_pytest_option_has_a_meaning() -> None:
    entries = reference.pytest_option_entries()
    names = [entry.name for entry in entries]
    assert names == [
        "--poolwatch-nplusone",
        "--poolwatch-threshold",
        "--poolwatch-fail-on",
        "poolwatch_nplusone",
        "poolwatch_threshold",
        "poolwatch_judge_test_code",
        "poolwatch_fail_on",
    ]
    page = reference.pytest_markdown()
    for entry in entries:
        assert entry.meaning.strip(), entry.name
        assert f"`{entry.name}`" in page


def test_every_finding_kind_has_an_entry_with_an_example_and_advice() -> None:
    assert set(KINDS) == set(events.FINDING_KINDS)
    constants = {
        value
        for name, value in vars(events).items()
        if name.isupper() and isinstance(value, str) and name not in _OUTCOMES
    }
    assert constants == set(events.FINDING_KINDS), "a kind constant missing in FINDING_KINDS"
    metrics = {entry.name for entry in reference.metric_entries()}
    settings = {field.name for field in dataclasses.fields(Settings)}
    page = reference.findings_markdown()
    for name, kind in KINDS.items():
        assert kind.name == name
        assert kind.example.kind == name
        assert kind.title.strip(), name
        assert kind.meaning.strip(), name
        assert kind.metric in metrics, name
        assert kind.setting in settings, name
        advice = reference.kind_advice(kind)
        assert advice, name
        assert all(text.strip() for text in advice.values()), name
        assert f"## `{name}`" in page
        assert f"poolwatch {name} on " in page  # the example's log line


_OUTCOMES = {"COMMIT", "ROLLBACK", "ROLLED_BACK_BY_ERROR", "CLOSED"}


def test_every_alert_has_its_rule_and_runbook_section() -> None:
    entries = reference.alert_entries(ROOT)
    from alerts.build import ALERTS

    assert [entry.name for entry in entries] == [alert.name for alert in ALERTS]
    page = reference.alerts_markdown(ROOT)
    for entry in entries:
        assert entry.expression.strip(), f"{entry.name}: not in alerts/poolwatch.rules.yml"
        assert entry.for_.strip(), entry.name
        assert entry.runbook.strip(), f"{entry.name}: no section in alerts/RUNBOOK.md"
        assert entry.summary.strip(), entry.name
        assert entry.description.strip(), entry.name
        assert f"## {entry.name}\n" in page


def test_an_unknown_marker_fails_the_build() -> None:
    with pytest.raises(ValueError, match="no such reference"):
        reference.render("<!-- poolwatch:nothing -->", ROOT)


def test_every_reference_marker_is_on_a_page() -> None:
    pages = "".join(path.read_text() for path in (ROOT / "docs" / "reference").glob("*.md"))
    for marker in ("metrics", "settings", "autosize", "pytest", "findings", "alerts"):
        assert f"<!-- poolwatch:{marker} -->" in pages


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    missing = [name for name in ("mkdocs", "material") if importlib.util.find_spec(name) is None]
    if missing:
        _unavailable(f"{' and '.join(missing)} not installed (pyproject's dev extra)")
    # The hook imports poolwatch as installed in this environment, like the test does.
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    built = (tmp_path / "site" / "reference" / "metrics" / "index.html").read_text()
    assert "poolwatch:metrics" not in built
    assert "db_client_connection_wait_time_seconds" in built
