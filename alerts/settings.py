"""settings.toml: the thresholds, windows and ``for:`` durations the rules are built from.

A profile (``[profiles.fast]``, for the load tests' 1 s scrape) overrides the windows and
the durations; the thresholds stay the same.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["Config", "load", "seconds"]

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Config:
    """settings.toml, with a profile's overrides applied."""

    job: str
    runbook: str
    rate: str
    baseline: str
    baseline_offset: str
    alerts: Mapping[str, Mapping[str, Any]]

    def threshold(self, alert: str) -> float:
        return float(self.alerts[alert]["threshold"])

    def value(self, alert: str, key: str) -> float:
        return float(self.alerts[alert][key])

    def for_(self, alert: str) -> str:
        return str(self.alerts[alert]["for"])


def load(path: Path = HERE / "settings.toml", profile: str | None = None) -> Config:
    """Read the settings; ``profile`` names a ``[profiles.<name>]`` table to apply."""
    data = tomllib.loads(path.read_text())
    windows = dict(data["windows"])
    alerts = {name: dict(values) for name, values in data["alerts"].items()}
    if profile is not None:
        overrides = data.get("profiles", {}).get(profile)
        if overrides is None:
            raise SystemExit(f"settings.toml has no [profiles.{profile}]")
        windows.update(overrides.get("windows", {}))
        durations = dict(overrides.get("for", {}))
        default = durations.pop("default", None)
        for name, values in alerts.items():
            if name in durations:
                values["for"] = durations[name]
            elif default is not None:
                values["for"] = default
    return Config(
        job=data["job"],
        runbook=data["runbook"],
        rate=windows["rate"],
        baseline=windows["baseline"],
        baseline_offset=windows["baseline_offset"],
        alerts=alerts,
    )


def seconds(duration: str) -> int:
    """A Prometheus duration (``90s``, ``5m``, ``1h``) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0
    for number, unit in re.findall(r"(\d+)([smhd])", duration):
        total += int(number) * units[unit]
    return total
