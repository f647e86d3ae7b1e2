"""The Grafana dashboards and Prometheus rules poolwatch ships, and writing them out.

They are generated in the repository (``dashboards/build.py``, ``alerts/build.py``) and
packed into the wheel under ``poolwatch/_assets``, so a user who installed poolwatch from
an index gets them with ``poolwatch export dashboards DIR`` (or ``alerts``). From a
checkout of the repository they are read where they are generated.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

__all__ = ["ASSETS", "export"]

# What each kind holds, relative to its directory.
ASSETS: dict[str, tuple[str, ...]] = {
    "dashboards": (
        "poolwatch-pools.json",
        "poolwatch-queries.json",
        "poolwatch-nplusone.json",
        "provisioning/poolwatch.yaml",
        "provisioning/datasource.example.yaml",
    ),
    "alerts": ("poolwatch.rules.yml", "poolwatch.rules.test.yml", "RUNBOOK.md"),
}


def _source(kind: str) -> Traversable:
    packed = resources.files("poolwatch").joinpath("_assets", kind)
    if packed.is_dir():
        return packed
    checkout = Path(__file__).resolve().parents[2] / kind  # an editable install
    if (checkout / ASSETS[kind][0]).is_file():
        return checkout
    raise FileNotFoundError(f"poolwatch's {kind} are not in this installation")


def export(kind: str, target: Path) -> list[Path]:
    """Write the files of ``kind`` (``dashboards`` or ``alerts``) into ``target``.

    Creates ``target`` if needed, overwrites files of the same name, and returns the
    paths written.
    """
    if kind not in ASSETS:
        raise ValueError(f"kind={kind!r}: must be one of {sorted(ASSETS)}")
    source = _source(kind)
    written: list[Path] = []
    for name in ASSETS[kind]:
        data = source.joinpath(*name.split("/")).read_bytes()
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written
