"""The Prometheus rules: generated from settings.toml, checked and unit-tested by promtool."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

from alerts import build
from tests.metrics_helpers import exported_names
from tests.promql_helpers import BUILTIN_SERIES, series_names

ROOT = Path(__file__).resolve().parent.parent
ALERTS_DIR = ROOT / "alerts"


def rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ALERTS_DIR / build.RULES).read_text())
    return data


def alerting_rules() -> list[dict[str, Any]]:
    return [r for g in rules()["groups"] for r in g["rules"] if "alert" in r]


def promtool_run(promtool: str, *args: str, cwd: Path) -> None:
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_committed_rules_are_what_the_settings_generate() -> None:
    assert build.main(["--check"]) == 0


def test_promtool_checks_and_unit_tests_pass(promtool: str) -> None:
    promtool_run(promtool, "check", "rules", build.RULES, cwd=ALERTS_DIR)
    promtool_run(promtool, "test", "rules", build.TESTS, cwd=ALERTS_DIR)


def test_the_required_alerts_exist() -> None:
    names = {r["alert"] for r in alerting_rules()}
    assert {
        "PoolwatchPoolSaturated",
        "PoolwatchRequestsWaiting",
        "PoolwatchAcquireWaitHigh",
        "PoolwatchAcquireTimeouts",
        "PoolwatchConnectionChurn",
        "PoolwatchQueryLatencyHigh",
        "PoolwatchQueryErrors",
        "PoolwatchNPlusOne",
        "PoolwatchQueriesPerRequestJump",
        "PoolwatchAutosizeAtCeiling",
        "PoolwatchAutosizeStalled",
        "PoolwatchAutosizeBudgetUnread",
        "PoolwatchAutosizePermitsOrphaned",
        "PoolwatchInternalErrors",
        "PoolwatchTargetDown",
    } <= names


def test_alert_conventions() -> None:
    runbook = (ALERTS_DIR / "RUNBOOK.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^## (\S+)$", runbook, re.M)}
    for rule in alerting_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Poolwatch[A-Z][A-Za-z0-9]+", name), name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        notes = rule["annotations"]
        assert notes["summary"], name
        assert "{{ $labels." in notes["description"], name
        assert "{{ $value" in notes["description"], name
        path, anchor = notes["runbook_url"].split("#")
        assert path == "alerts/RUNBOOK.md", name
        assert anchor in anchors, f"{name}: no section #{anchor} in RUNBOOK.md"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load((ALERTS_DIR / build.TESTS).read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests:
        for case in group["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
            for alert in case["exp_alerts"]:
                assert alert["exp_labels"]["severity"]
                assert alert["exp_annotations"]["description"]
    names = {r["alert"] for r in alerting_rules()}
    assert firing == names
    assert quiet == names


# A name of poolwatch's anywhere, bare ones too: ``max by (pool) (poolwatch_x)`` has no
# "{" or "[" after the name for series_names to see.
_OURS = re.compile(r"\b(?:poolwatch|db_client|http_server)_[a-z0-9_]+")


def test_only_metrics_poolwatch_exports() -> None:
    known = exported_names() | BUILTIN_SERIES
    used: set[str] = set()
    queried: set[str] = set()
    for group in rules()["groups"]:
        for rule in group["rules"]:
            used |= series_names(rule["expr"]) | set(_OURS.findall(rule["expr"]))
            # Queries an annotation runs when it is rendered ({{ printf "..." | query }}).
            for text in rule.get("annotations", {}).values():
                for query in re.findall(r'printf "([^"]*)"[^}]*\| query', text):
                    queried |= set(_OURS.findall(query))
    assert "poolwatch_autosize_last_decision_timestamp_seconds" in used  # bare, in timestamp()
    assert "poolwatch_autosize_budget_read_errors_total" in queried
    assert used | queried <= known, sorted((used | queried) - known)


def test_thresholds_are_edited_in_settings_and_the_tests_follow(
    promtool: str, tmp_path: Path
) -> None:
    settings = tomllib.loads((ALERTS_DIR / "settings.toml").read_text())
    text = (ALERTS_DIR / "settings.toml").read_text()
    text = text.replace("threshold = 0.95 ", "threshold = 0.8 ").replace(
        "threshold = 0.25 ", "threshold = 0.05 "
    )
    assert settings["alerts"]["PoolwatchPoolSaturated"]["threshold"] == 0.95
    edited = tmp_path / "settings.toml"
    edited.write_text(text)
    config = build.load(edited)
    assert config.threshold("PoolwatchPoolSaturated") == 0.8
    for name, content in build.outputs(config, with_tests=True).items():
        (tmp_path / name).write_text(content)
    assert ">= 0.8" in (tmp_path / build.RULES).read_text()
    promtool_run(promtool, "test", "rules", build.TESTS, cwd=tmp_path)


def test_the_fast_profile_is_the_same_rules_with_short_windows(
    promtool: str, tmp_path: Path
) -> None:
    assert build.main(["--profile", "fast", "--out", str(tmp_path)]) == 0
    fast = yaml.safe_load((tmp_path / build.RULES).read_text())
    production = rules()
    assert [r.get("alert") or r.get("record") for g in fast["groups"] for r in g["rules"]] == [
        r.get("alert") or r.get("record") for g in production["groups"] for r in g["rules"]
    ]
    text = (tmp_path / build.RULES).read_text()
    assert "[30s]" in text
    assert "[5m]" not in text
    promtool_run(promtool, "check", "rules", build.RULES, cwd=tmp_path)
