"""The rule file and its promtool unit tests, as data, and their YAML."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from alerts.model import Alert, Case, annotation
from alerts.settings import Config, seconds

__all__ = ["RULES", "TESTS", "dump", "rules", "unit_tests"]

RULES = "poolwatch.rules.yml"
TESTS = "poolwatch.rules.test.yml"


def _minutes(config: Config, alert: str, extra: int = 0) -> int:
    # Long enough for the rate window, the `for:` and a margin, in 1m steps.
    return (seconds(config.rate) + seconds(config.for_(alert))) // 60 + 4 + extra


def _anchor(name: str) -> str:
    return name.lower()


def rules(
    config: Config, recording: Sequence[Mapping[str, str]], alerts: Sequence[Alert]
) -> dict[str, Any]:
    """The rule file, as data: the recording rules, then the alerts."""
    alerting = []
    for alert in alerts:
        alerting.append(
            {
                "alert": alert.name,
                "expr": alert.expr(config),
                "for": config.for_(alert.name),
                "labels": {"severity": alert.severity},
                "annotations": {
                    "summary": alert.summary,
                    "description": annotation(alert.description, config),
                    "runbook_url": f"{config.runbook}#{_anchor(alert.name)}",
                },
            }
        )
    return {
        "groups": [
            {"name": "poolwatch.recording", "rules": list(recording)},
            {"name": "poolwatch.alerts", "rules": alerting},
        ]
    }


def _render(template: str, labels: Mapping[str, str], case: Case, value_format: str) -> str:
    rendered = template
    for piece, shown in case.texts.items():  # first: a query's piece names labels too
        rendered = rendered.replace(piece, shown)
    rendered = rendered.replace(value_format, case.value)
    for key, label in labels.items():
        rendered = rendered.replace(f"{{{{ $labels.{key} }}}}", label)
    return rendered


def unit_tests(config: Config, alerts: Sequence[Alert]) -> dict[str, Any]:
    """promtool unit tests: per alert, a firing case and one just under its threshold."""
    tests = []
    for alert in alerts:
        span = _minutes(config, alert.name)  # minutes of input series
        minutes = span  # when the rule is evaluated
        if alert.lead is not None:
            minutes += alert.lead(config)
        cases = [("fires", alert.case(config, span, True))]
        cases.append(("stays quiet", alert.case(config, span, False)))
        if alert.quiet is not None:
            cases += [(f"stays quiet {why}", c) for why, c in alert.quiet(config, span).items()]
        for kind, case in cases:
            expected = []
            if case.labels is not None:
                labels = {**case.labels, "severity": alert.severity}
                expected.append(
                    {
                        "exp_labels": labels,
                        "exp_annotations": {
                            "summary": _render(alert.summary, labels, case, alert.value_format),
                            "description": _render(
                                annotation(alert.description, config),
                                labels,
                                case,
                                alert.value_format,
                            ),
                            "runbook_url": f"{config.runbook}#{_anchor(alert.name)}",
                        },
                    }
                )
            tests.append(
                {
                    "name": f"{alert.name} {kind}",
                    "interval": "1m",
                    "input_series": case.series,
                    "alert_rule_test": [
                        {
                            "alertname": alert.name,
                            "eval_time": f"{minutes}m",
                            "exp_alerts": expected,
                        }
                    ],
                }
            )
    return {"rule_files": [RULES], "evaluation_interval": "1m", "tests": tests}


def dump(data: Mapping[str, Any], header: str) -> str:
    """YAML as committed: keys in their order, multi-line strings (the PromQL) as blocks."""

    class Literal(yaml.SafeDumper):
        pass

    def strings(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
        style = "|" if "\n" in text else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Literal.add_representer(str, strings)
    body: str = yaml.dump(
        dict(data), Dumper=Literal, sort_keys=False, width=200, allow_unicode=True
    )
    return header + body
