"""Generate poolwatch's Grafana dashboards with Grafana's grafana-foundation-sdk.

    python -m dashboards.build            # writes dashboards/poolwatch-*.json
    python -m dashboards.build --check    # exit 1 if the committed JSON differs

Three dashboards, all with the same variables (data source; job, instance, pool and
route, each multi-valued with "All" meaning ``.+``): **Pools** (utilisation, connections,
waiting, acquire wait, hold and creation times, time held idle, transactions by outcome,
rollback ratio and transaction duration, timeouts, autosize and whether it still works,
leaks, unaccounted connections and give-backs), **Queries** (rates and latency by
operation and route, errors, queries per request, slowest routes) and **N+1** (findings,
duplicates, slow statements, the routes running most statements).
Every panel has a title, a description and a unit; counters are always read through
``rate``/``increase`` over ``$__rate_interval``; uids are fixed; dashboards are not
editable (provisioned copies are replaced on every start anyway).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.models import dashboard as model

from dashboards import grafana, nplusone, pools, queries
from dashboards.panel import Panel

__all__ = ["DASHBOARDS", "build", "main", "render"]

HERE = Path(__file__).resolve().parent

# Each dashboard by uid (its file's name): its title and its panels.
DASHBOARDS: dict[str, tuple[str, Callable[[], list[Panel]]]] = {
    "poolwatch-pools": ("poolwatch / Pools", pools.panels),
    "poolwatch-queries": ("poolwatch / Queries", queries.panels),
    "poolwatch-nplusone": ("poolwatch / N+1", nplusone.panels),
}


def build(uid: str) -> model.Dashboard:
    """The dashboard ``uid`` of :data:`DASHBOARDS`, built."""
    title, panels = DASHBOARDS[uid]
    return grafana.dashboard(uid, title, panels())


def render(uid: str) -> str:
    """The dashboard's JSON, as committed."""
    return grafana.to_json(build(uid))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    stale = []
    for uid in DASHBOARDS:
        path = HERE / f"{uid}.json"
        text = render(uid)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python -m dashboards.build): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
