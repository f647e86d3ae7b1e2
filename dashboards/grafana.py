"""Panels into Grafana's dashboard model, with Grafana's grafana-foundation-sdk, and JSON.

Every dashboard gets the same variables (data source; job, instance, pool and route,
each multi-valued with "All" meaning ``.+``); uids are fixed and dashboards are not
editable (provisioned copies are replaced on every start anyway).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from grafana_foundation_sdk.builders import common, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.panel import Panel

__all__ = ["dashboard", "to_json"]

# The data source the dashboard's first variable picks, for every panel, query and variable.
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")


def _variables() -> list[db.DatasourceVariable | db.QueryVariable]:
    def labels(name: str, query: str, label: str) -> db.QueryVariable:
        return (
            db.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".+")
        )

    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        labels("job", "label_values(db_client_connection_count, job)", "Job"),
        labels(
            "instance",
            'label_values(db_client_connection_count{job=~"$job"}, instance)',
            "Instance",
        ),
        labels(
            "pool",
            'label_values(db_client_connection_count{job=~"$job", instance=~"$instance"}, pool)',
            "Pool",
        ),
        labels(
            "route",
            'label_values(poolwatch_request_queries_count{job=~"$job", instance=~"$instance"}, '
            "route)",
            "Route",
        ),
    ]


def _panel(panel: Panel, index: int) -> cogbuilder.Builder[model.Panel]:
    builder: timeseries.Panel | stat.Panel | table.Panel
    if panel.kind == "table":
        builder = table.Panel()
    elif panel.kind == "stat":
        builder = stat.Panel()
    else:
        builder = timeseries.Panel().fill_opacity(10).line_width(1)
        if panel.thresholds:  # drawn as lines across the graph
            builder = builder.thresholds_style(
                common.GraphThresholdsStyleConfig().mode(common_model.GraphThresholdsStyleMode.LINE)
            )
    builder = (
        builder.id(index + 1)
        .title(panel.title)
        .description(panel.description)
        .unit(panel.unit)
        .datasource(DATASOURCE)
        .height(panel.height)
        .span(panel.width)
    )
    if panel.max is not None:
        builder = builder.min(0).max(panel.max)
    steps = [model.Threshold(value=None, color="green")]
    steps += [model.Threshold(value=value, color=color) for value, color in panel.thresholds]
    builder = builder.thresholds(
        db.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)
    )
    for number, query in enumerate(panel.queries):
        target = (
            prometheus.Dataquery()
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(chr(ord("A") + number))
            .datasource(DATASOURCE)
        )
        target = target.instant().format(PromQueryFormat.TABLE) if query.instant else target.range()
        builder = builder.with_target(target)
    return builder


def dashboard(uid: str, title: str, panels: Sequence[Panel]) -> model.Dashboard:
    """The dashboard ``uid``, titled ``title``, with ``panels`` in their order."""
    board = (
        db.Dashboard(title)
        .uid(uid)
        .tags(["poolwatch", "database"])
        .readonly()
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .description(
            "poolwatch connection-pool and query metrics; see the poolwatch README and "
            "alerts/RUNBOOK.md."
        )
    )
    for variable in _variables():
        board = board.with_variable(variable)
    for index, panel in enumerate(panels):
        board = board.with_panel(_panel(panel, index))
    return board.build()


def to_json(board: model.Dashboard) -> str:
    """The dashboard's JSON, as committed."""
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
