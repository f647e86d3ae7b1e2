"""PromQL in tests: metric names in an expression, and parsing through promtool."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml

# A name directly followed by a label matcher or a range: a series selector.
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{|\[)")
# Function and keyword names that can precede "(" but never "{" or "[".
BUILTIN_SERIES = {"ALERTS", "up"}


def series_names(expr: str) -> set[str]:
    """Metric names an expression selects (recording rules, with a colon, left out)."""
    return {name for name in _SELECTOR.findall(expr) if ":" not in name}


def promtool_parse(promtool: str, exprs: Sequence[str], workdir: Path) -> None:
    """Fail with promtool's message unless every expression parses."""
    rules = [{"record": f"poolwatch_test:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = workdir / "exprs.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
