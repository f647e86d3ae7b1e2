"""What an alert is: its rule and the promtool test cases built from the same thresholds.

Every alert is one :class:`Alert`: its expression, severity, annotations and two test
cases built from the same thresholds, one where it fires (with the labels and
annotations it must carry) and one just under the threshold where it must not. Editing a
threshold in settings.toml therefore moves the rule and its tests together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from alerts.series import series
from alerts.settings import Config, seconds

__all__ = ["Alert", "Case", "Text", "annotation", "counter_alert", "gauge_case"]


@dataclasses.dataclass(frozen=True)
class Case:
    """Input series and, if it fires, the labels and value it fires with."""

    series: list[dict[str, str]]
    labels: Mapping[str, str] | None = None  # None: must not fire
    value: str = ""  # what {{ $value }} renders as in the annotations
    # Other template pieces of the annotations (a query's) and what they render as.
    texts: Mapping[str, str] = dataclasses.field(default_factory=dict)


# An annotation: fixed, or made from the settings (a query over the rate window, say).
Text = str | Callable[[Config], str]


def annotation(template: Text, config: Config) -> str:
    """The annotation's text with these settings."""
    return template if isinstance(template, str) else template(config)


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alerting rule, and the promtool cases that test it."""

    name: str
    severity: str
    expr: Callable[[Config], str]
    summary: str
    description: Text
    # The promtool test data for ``m`` minutes: a firing case, or one just under.
    case: Callable[[Config, int, bool], Case]
    value_format: str = "{{ $value }}"
    # More cases in which it must stay quiet, by name (a limit autosize holds, say).
    quiet: Callable[[Config, int], Mapping[str, Case]] | None = None
    # Minutes of series before the cases' span, so the evaluation comes that much later
    # (a jump is measured against a baseline long before it).
    lead: Callable[[Config], int] | None = None


def gauge_case(
    name: str, labels: Mapping[str, str], level: float, minutes: int, *, value: str, fires: bool
) -> Case:
    """A gauge at ``level`` all along; if it ``fires``, with ``labels`` and ``value``."""
    data = [series(name, labels, f"{level:g}+0x{minutes}")]
    return Case(data, labels if fires else None, value)


def _counter_case(name: str, labels: Mapping[str, str], per_minute: int, minutes: int) -> Case:
    return Case([series(name, labels, f"0+{per_minute}x{minutes}")])


def counter_alert(
    name: str,
    severity: str,
    *,
    metric: str,
    by: str,
    labels: Mapping[str, str],
    summary: str,
    description: str,
) -> Alert:
    """An alert on a counter's increase over the rate window above the threshold,
    tested with one event a minute (firing) or none."""

    def case(c: Config, m: int, fires: bool) -> Case:
        # One event a minute: increase() over the window is the window in minutes.
        per_minute = 1 if fires else 0
        value = f"{seconds(c.rate) / 60:.0f}" if fires else "0"
        case = _counter_case(metric, labels, per_minute, m)
        return Case(case.series, labels if fires else None, value)

    return Alert(
        name,
        severity,
        lambda c: f"sum by ({by}) (increase({metric}[{c.rate}])) > {c.threshold(name):g}",
        summary,
        description,
        case,
        '{{ $value | printf "%.0f" }}',
    )
