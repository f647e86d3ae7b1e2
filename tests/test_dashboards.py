"""The Grafana dashboards: generated from code, valid, linted, and their PromQL real."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards import build
from tests.metrics_helpers import counter_names, exported_names
from tests.promql_helpers import BUILTIN_SERIES, promtool_parse, series_names

ROOT = Path(__file__).resolve().parent.parent
UIDS = ("poolwatch-nplusone", "poolwatch-pools", "poolwatch-queries")


def load(uid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "dashboards" / f"{uid}.json").read_text())
    return data


def panels(uid: str) -> list[dict[str, Any]]:
    return [p for p in load(uid)["panels"] if p.get("type") != "row"]


def exprs(uid: str) -> list[str]:
    return [t["expr"] for p in panels(uid) for t in p["targets"]]


def test_committed_json_is_what_the_code_generates() -> None:
    assert sorted(build.DASHBOARDS) == sorted(UIDS)
    for uid in UIDS:
        assert (ROOT / "dashboards" / f"{uid}.json").read_text() == build.render(uid), (
            f"{uid}.json is stale: run python -m dashboards.build"
        )
    assert build.main(["--check"]) == 0


@pytest.mark.parametrize("uid", UIDS)
def test_valid_for_the_pinned_sdk_schema(uid: str) -> None:
    # The SDK's models are generated from the dashboard schema of its Grafana version:
    # a lossless round trip means every field is one the schema knows, with its name.
    data = load(uid)
    again = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
    assert again == data
    assert data["schemaVersion"] >= 39


@pytest.mark.parametrize("uid", UIDS)
def test_dashboard_conventions(uid: str) -> None:
    data = load(uid)
    assert data["uid"] == uid
    assert data["editable"] is False
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance", "pool", "route"]
    assert variables["datasource"]["type"] == "datasource"
    for name in ("job", "instance", "pool", "route"):
        assert variables[name]["multi"] is True
        assert variables[name]["includeAll"] is True
        assert variables[name]["allValue"] == ".+"
    ids = [p["id"] for p in panels(uid)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("uid", UIDS)
def test_every_panel_has_a_title_a_description_a_unit_and_its_datasource(uid: str) -> None:
    for panel in panels(uid):
        assert panel["title"], panel
        assert len(panel["description"]) > 20, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


@pytest.mark.parametrize("uid", UIDS)
def test_counters_only_inside_rate_or_increase_over_the_rate_interval(uid: str) -> None:
    counters = counter_names()
    for expr in exprs(uid):
        for name in series_names(expr):
            if name not in counters:
                continue
            # The selector must sit inside rate(...) or increase(...) with $__rate_interval.
            pattern = rf"(rate|increase)\({re.escape(name)}\{{[^}}]*\}}\[\$__rate_interval\]\)"
            assert re.search(pattern, expr), f"{name} outside rate/increase in: {expr}"


@pytest.mark.parametrize("uid", UIDS)
def test_only_metrics_poolwatch_exports(uid: str) -> None:
    known = exported_names() | BUILTIN_SERIES
    used = set().union(*(series_names(e) for e in exprs(uid)))
    assert used, uid
    assert used <= known, sorted(used - known)


def test_pool_overview_has_the_panels_an_sre_looks_for() -> None:
    titles = {p["title"] for p in panels("poolwatch-pools")}
    for wanted in (
        "Utilisation (used / max)",
        "Connections: used, idle, max",
        "Requests waiting",
        "Acquire wait p50 / p95 / p99",
        "Hold time p50 / p95 / p99",
        "Creation time p50 / p95 / p99",
        "Timeouts/s",
        "Autosize: resizes",
        "Autosize: age of the last decision and budget read",
        "Autosize: failed budget reads and orphaned permits",
    ):
        assert wanted in titles
    utilisation = next(p for p in panels("poolwatch-pools") if p["title"].startswith("Util"))
    steps = utilisation["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.8, 0.95]


def test_autosize_ages_are_the_oldest_workers(promtool: str, tmp_path: Path) -> None:
    # Three gunicorn workers: one decides all along, one stopped at minute 2, one forked
    # and not started yet (0). The panel shows the stopped one's age, 8 minutes at 10m.
    panel = next(
        p
        for p in panels("poolwatch-pools")
        if p["title"] == "Autosize: age of the last decision and budget read"
    )
    expr = re.sub(r"\$\w+", ".+", panel["targets"][0]["expr"])
    name = "poolwatch_autosize_last_decision_timestamp_seconds"
    labels = 'job="poolwatch", instance="app-1:8000", pool="default"'
    tests = {
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'{name}{{{labels}, pid="11"}}', "values": "0+60x10"},
                    {"series": f'{name}{{{labels}, pid="12"}}', "values": "0+60x2 120+0x7"},
                    {"series": f'{name}{{{labels}, pid="13"}}', "values": "0+0x10"},
                ],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{instance="app-1:8000", pool="default"}', "value": 480}
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "ages.test.yml").write_text(json.dumps(tests))
    done = subprocess.run(
        [promtool, "test", "rules", "ages.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_expression_parses(promtool: str, tmp_path: Path) -> None:
    substituted = []
    for uid in UIDS:
        for expr in exprs(uid):
            text = expr.replace("$__rate_interval", "5m")
            text = re.sub(r"\$\w+", ".+", text)
            substituted.append(text)
    promtool_parse(promtool, substituted, tmp_path)


def test_provisioning_points_grafana_at_the_dashboards() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "dashboards" / "provisioning" / "poolwatch.yaml").read_text())
    provider = config["providers"][0]
    assert config["apiVersion"] == 1
    assert provider["type"] == "file"
    assert provider["options"]["path"]
