"""The reference pages, generated from the code when MkDocs builds the site.

A page under ``docs/reference/`` holds a marker such as ``<!-- poolwatch:metrics -->``;
:func:`on_page_markdown` (an MkDocs hook, ``hooks:`` in ``mkdocs.yml``) replaces it with
Markdown made from what the installed poolwatch defines, so the reference cannot drift
from the code:

* ``metrics``: every metric of :class:`poolwatch.exposition.metrics.Metrics` and of the
  scrape-time :class:`poolwatch.exposition.collectors.PoolStateCollector`;
* ``settings`` and ``autosize``: the fields of :class:`poolwatch.Settings` and
  :class:`poolwatch.Autosize`, their meaning from the class docstring's ``Attributes:``,
  what each accepts from the ``ALLOWED`` mapping beside the class;
* ``pytest``: the options that :mod:`poolwatch.pytest_plugin` adds;
* ``findings``: every kind of :data:`poolwatch.queries.kinds.KINDS`, its example printed
  by the code that prints findings;
* ``alerts``: every alert of ``alerts.build.ALERTS``, its rule as generated in
  ``alerts/poolwatch.rules.yml`` and its section of ``alerts/RUNBOOK.md``.

``tests/test_reference.py`` calls the same functions: an entry missing or without a
meaning fails the suite as well as ``mkdocs build --strict``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from poolwatch.config import ALLOWED as SETTINGS_ALLOWED
from poolwatch.config import Settings
from poolwatch.events import FINDING_KINDS, PoolState
from poolwatch.exposition.collectors import PoolSource, PoolStateCollector
from poolwatch.exposition.metrics import COMPONENTS, Metrics
from poolwatch.pytest_plugin import LISTED_KINDS, pytest_addoption
from poolwatch.queries.findings import FindingsLog, log_line
from poolwatch.queries.hints import SQLALCHEMY, TORTOISE
from poolwatch.queries.kinds import KINDS, Kind
from poolwatch.sizing.settings import ALLOWED as AUTOSIZE_ALLOWED
from poolwatch.sizing.settings import Autosize

__all__ = [
    "MARKER",
    "alert_entries",
    "alerts_markdown",
    "autosize_markdown",
    "field_entries",
    "findings_markdown",
    "kind_advice",
    "metric_entries",
    "metrics_markdown",
    "on_page_markdown",
    "pytest_markdown",
    "pytest_option_entries",
    "render",
    "settings_markdown",
]

MARKER = re.compile(r"<!-- poolwatch:([a-z]+) -->")
ENV_PREFIX = "POOLWATCH_"


# -- metrics ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MetricEntry:
    name: str  # as queried: counters with their _total
    type: str
    labels: tuple[str, ...]
    meaning: str
    scraped: bool  # read from the pool at scrape time


def _label_names(collector: object) -> tuple[str, ...]:
    # The one private read of the generator: prometheus_client keeps the label names of a
    # Counter or Gauge that has no child yet in `_labelnames`, and exposes them nowhere
    # else (a family's samples carry them only once a child exists). poolwatch's own
    # histograms have them as `labelnames`.
    names = getattr(collector, "labelnames", None)
    if names is None:
        names = collector._labelnames  # type: ignore[attr-defined]
    return tuple(names)


def metric_entries() -> list[MetricEntry]:
    """Every metric poolwatch registers: the pool gauges read at scrape time, then the
    definitions of :class:`Metrics`, in their order."""
    pool = PoolSource("main", lambda: PoolState(1, 1, 5), lambda: 0, lambda: 1)
    collector = PoolStateCollector(lambda: [pool], lambda component: None)
    entries = []
    for family in collector.collect():
        labels = tuple(family.samples[0].labels)
        kind = "untyped" if family.type == "unknown" else family.type
        entries.append(MetricEntry(family.name, kind, labels, family.documentation, True))
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    labels_of = {}
    for value in vars(metrics).values():
        describe = getattr(value, "describe", None)
        if describe is not None:
            for family in describe():
                labels_of[family.name] = _label_names(value)
    for family in registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = labels_of.get(family.name, ())
        entries.append(MetricEntry(name, family.type, labels, family.documentation, False))
    return entries


def metrics_markdown() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for entry in metric_entries():
        labels = ", ".join(f"`{label}`" for label in entry.labels)
        meaning = entry.meaning + (" Read from the pool at scrape time." if entry.scraped else "")
        rows.append(f"| `{entry.name}` | {entry.type} | {labels} | {_cell(meaning)} |")
    components = ", ".join(f"`{c}`" for c in COMPONENTS)
    return "\n".join(
        [
            *rows,
            "",
            "Histograms are exposed as `<name>_bucket`, `<name>_count` and `<name>_sum`. "
            f"The values of `component`: {components}.",
            "",
            "Beside these, a PoolWatch's registry serves what prometheus_client's default "
            "registry does: `process_*` (`process_resident_memory_bytes` among them), "
            "`python_gc_*` and `python_info`.",
        ]
    )


# -- settings -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FieldEntry:
    name: str
    environment: str  # "" where no environment variable sets it
    default: str
    allowed: str
    meaning: str


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of ``cls``'s docstring: field name -> text.

    An entry may name several fields (``allow_routes, allow_fingerprints: ...``).
    """
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    if "Attributes:" not in lines:
        return {}
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines[lines.index("Attributes:") + 1 :]:
        if line and not line.startswith(" "):
            break  # the next section
        entry = re.match(r"^ {4}(\w+(?:, \w+)*): (.*)$", line)
        if entry is not None:
            current = [entry.group(2)]
            for name in entry.group(1).split(", "):
                entries[name] = current
        elif line.strip():
            current.append(line.strip())
    return {name: _markdown(" ".join(text)) for name, text in entries.items()}


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default_factory is not dataclasses.MISSING:
        return f"`{type(field.default_factory()).__name__}()`"
    value = field.default
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{value!r}`"


def field_entries(cls: type, allowed: Mapping[str, str], environment: bool) -> list[FieldEntry]:
    """One entry per field of the dataclass ``cls``."""
    meanings = attribute_docs(cls)
    return [
        FieldEntry(
            field.name,
            ENV_PREFIX + field.name.upper() if environment else "",
            _default(field),
            allowed.get(field.name, ""),
            meanings.get(field.name, ""),
        )
        for field in dataclasses.fields(cls)
    ]


def settings_markdown() -> str:
    rows = [
        "| setting | environment variable | default | allowed | meaning |",
        "|---|---|---|---|---|",
    ]
    for entry in field_entries(Settings, SETTINGS_ALLOWED, environment=True):
        rows.append(
            f"| `{entry.name}` | `{entry.environment}` | {entry.default} | "
            f"{_cell(entry.allowed)} | {_cell(entry.meaning)} |"
        )
    return "\n".join(rows)


def autosize_markdown() -> str:
    rows = ["| field | default | allowed | meaning |", "|---|---|---|---|"]
    for entry in field_entries(Autosize, AUTOSIZE_ALLOWED, environment=False):
        rows.append(
            f"| `{entry.name}` | {entry.default} | {_cell(entry.allowed)} | "
            f"{_cell(entry.meaning)} |"
        )
    return "\n".join(rows)


# -- the pytest plugin's options ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptionEntry:
    name: str
    kind: str  # "command line" or "ini"
    values: str
    default: str
    meaning: str


class _Parser:
    """Records what ``pytest_addoption`` adds: the two calls it makes on pytest's parser.

    pytest's own ``Parser`` is not meant to be made outside pytest (it warns), and the
    plugin's hook needs nothing else.
    """

    def __init__(self) -> None:
        self.entries: list[OptionEntry] = []

    def getgroup(self, name: str, description: str = "") -> _Parser:
        return self

    def addoption(self, *names: str, **attrs: Any) -> None:
        choices = attrs.get("choices")
        kind = attrs.get("type")
        values = (
            ", ".join(f"`{c}`" for c in choices)
            if choices
            else ("a whole number" if kind is int else "")
        )
        default = attrs.get("default")
        for name in names:
            # Unset, an option falls back on the ini option of the same name.
            ini = name.lstrip("-").replace("-", "_")
            shown = f"the ini option `{ini}`" if default is None else f"`{default}`"
            self.entries.append(
                OptionEntry(name, "command line", values, shown, _markdown(attrs.get("help", "")))
            )

    def addini(self, name: str, help: str, type: str | None = None, default: object = None) -> None:
        values = "`true` or `false`" if type == "bool" else ""
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        self.entries.append(OptionEntry(name, "ini", values, f"`{shown}`", _markdown(help)))


def pytest_option_entries() -> list[OptionEntry]:
    """What the plugin's ``pytest_addoption`` adds, command-line options first."""
    parser = _Parser()
    pytest_addoption(parser)  # type: ignore[arg-type]
    return parser.entries


def pytest_markdown() -> str:
    rows = ["| option | where | values | default | meaning |", "|---|---|---|---|---|"]
    for entry in pytest_option_entries():
        rows.append(
            f"| `{entry.name}` | {entry.kind} | {entry.values} | {entry.default} | "
            f"{_cell(entry.meaning)} |"
        )
    return "\n".join(rows)


# -- findings -----------------------------------------------------------------------------


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def kind_advice(kind: Kind) -> dict[str, str]:
    """The advice the code gives for ``kind``, by ORM (``""``: whatever the ORM)."""
    advice = _resolve(kind.advice)
    if isinstance(advice, str):
        return {"": advice}
    fingerprint = kind.example.fingerprint
    texts = {orm: advice(kind.name, fingerprint, [], orm) for orm in (TORTOISE, SQLALCHEMY)}
    if len(set(texts.values())) == 1:
        return {"": texts[TORTOISE]}
    return texts


def _listed(finding: Any) -> dict[str, Any]:
    # The entry GET /poolwatch/findings shows, with a fixed clock: the shape is the code's.
    listed = FindingsLog(clock=lambda: 1796601600.0)
    listed.add(finding)
    return listed.recent()[0]


def findings_markdown() -> str:
    parts = []
    for name in FINDING_KINDS:
        kind = KINDS[name]
        advice = kind_advice(kind)
        example = dataclasses.replace(kind.example, suggestion=next(iter(advice.values())))
        if kind.raises:
            raised = "fails the request or test in `raise` mode"
        elif kind.name in LISTED_KINDS:
            raised = (
                "logged and listed, never raised; listed in the pytest summary, and fails "
                "the tests that show it where `poolwatch_fail_on` names it"
            )
        else:
            raised = "logged and listed, never raised"
        lines = [
            f"## `{kind.name}`: {kind.title}",
            "",
            _markdown(kind.meaning),
            "",
            f"- Decided by: `{kind.setting}`",
            f"- Metric: `{kind.metric}`",
            f"- Raised: {raised}",
            "",
            "Advice:",
            "",
        ]
        for orm, text in advice.items():
            lines.append(f"- {_ORM_NAMES[orm]}{text}" if orm else f"- {text}")
        lines += [
            "",
            "The log line (logger `poolwatch.findings`):",
            "",
            "```text",
            f"poolwatch {log_line(example)}",
            "```",
            "",
            "Its entry in `GET /poolwatch/findings`:",
            "",
            "```json",
            json.dumps(_listed(example), indent=2),
            "```",
            "",
        ]
        parts.append("\n".join(lines))
    return "\n".join(parts)


_ORM_NAMES = {TORTOISE: "Tortoise-ORM: ", SQLALCHEMY: "SQLAlchemy: "}


# -- alerts -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AlertEntry:
    name: str
    severity: str
    for_: str
    expression: str
    summary: str
    description: str
    runbook: str


def _runbook_sections(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    for chunk in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        title, _, body = chunk.partition("\n")
        sections[title.strip()] = body.strip()
    return sections


def alert_entries(root: Path) -> list[AlertEntry]:
    """Every alert of ``alerts.build.ALERTS``, with its generated rule and its runbook
    section; ``root`` is the repository (where ``alerts/`` is)."""
    # alerts/ is the repository's, not the installed package's: found from the root,
    # after everything installed so the installed poolwatch is the one imported.
    if str(root) not in sys.path:
        sys.path.append(str(root))
    from alerts.build import ALERTS

    rules_file = yaml.safe_load((root / "alerts" / "poolwatch.rules.yml").read_text())
    rules = {
        rule["alert"]: rule
        for group in rules_file["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    runbook = _runbook_sections((root / "alerts" / "RUNBOOK.md").read_text())
    entries = []
    for alert in ALERTS:
        rule = rules.get(alert.name, {})
        annotations = rule.get("annotations", {})
        entries.append(
            AlertEntry(
                alert.name,
                alert.severity,
                str(rule.get("for", "")),
                str(rule.get("expr", "")),
                alert.summary,
                str(annotations.get("description", "")),
                runbook.get(alert.name, ""),
            )
        )
    return entries


def alerts_markdown(root: Path) -> str:
    parts = []
    for entry in alert_entries(root):
        parts.append(
            "\n".join(
                [
                    f"## {entry.name}",
                    "",
                    f"- Severity: `{entry.severity}`; for: `{entry.for_}`",
                    f"- Summary: {_template(entry.summary)}",
                    f"- Description: {_template(entry.description)}",
                    "",
                    "```promql",
                    entry.expression.strip(),
                    "```",
                    "",
                    entry.runbook,
                    "",
                ]
            )
        )
    return "\n".join(parts)


# -- the hook -----------------------------------------------------------------------------

_RENDERERS: Mapping[str, Callable[[Path], str]] = {
    "metrics": lambda root: metrics_markdown(),
    "settings": lambda root: settings_markdown(),
    "autosize": lambda root: autosize_markdown(),
    "pytest": lambda root: pytest_markdown(),
    "findings": lambda root: findings_markdown(),
    "alerts": alerts_markdown,
}


def render(markdown: str, root: Path) -> str:
    """``markdown`` with every marker replaced; an unknown marker is an error."""

    def replace(match: re.Match[str]) -> str:
        renderer = _RENDERERS.get(match.group(1))
        if renderer is None:
            raise ValueError(f"{match.group(0)}: no such reference; known: {sorted(_RENDERERS)}")
        return renderer(root)

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: the page with its reference markers replaced."""
    if MARKER.search(markdown) is None:
        return markdown
    return render(markdown, Path(config["config_file_path"]).resolve().parent)


# -- text ---------------------------------------------------------------------------------


def _markdown(text: str) -> str:
    """reStructuredText's inline code and roles, as Markdown code spans."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        return f"`{target.rsplit('.', 1)[-1]}`" if target.startswith("~") else f"`{target}`"

    text = re.sub(r":\w+:`([^`]+)`", role, text)
    return text.replace("``", "`")


def _template(text: str) -> str:
    # Alertmanager's templates hold `{{ $labels.pool }}`: code, in the page.
    return re.sub(r"(\{\{.*?\}\})", r"`\1`", text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
