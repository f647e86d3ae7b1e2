"""What ``import poolwatch`` costs an application that already imports FastAPI.

    python benchmarks/importtime.py [--runs 15]

Each run is a fresh interpreter that imports ``fastapi`` and ``prometheus_client`` (what a
FastAPI app exposing metrics has loaded anyway), then ``poolwatch``, timing each step
with ``perf_counter``; figures are medians over runs. Two ways:

* with bytecode caches, as a deployed application runs: the interpreters share a
  ``PYTHONPYCACHEPREFIX`` directory of the benchmark's own (so nothing is written next to
  the sources), filled by one run that is not counted;
* without: ``PYTHONDONTWRITEBYTECODE=1`` and an empty cache directory, so every module
  is compiled from source in every run (a container started with that variable and no
  ``.pyc`` files in its image).

One more run with ``-X importtime`` lists the modules ``import poolwatch`` loaded and the
costliest of them (self time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from _timing import Table, Target

__all__ = ["bench_import"]

LIMIT_MS = 50.0
MARK = "-- poolwatch --"
CHILD = f"""
import json, sys, time
started = time.perf_counter()
import fastapi, prometheus_client
between = time.perf_counter()
before = set(sys.modules)
print({MARK!r}, file=sys.stderr, flush=True)
import poolwatch
ended = time.perf_counter()
print(json.dumps({{"base": between - started, "poolwatch": ended - between,
                  "modules": sorted(set(sys.modules) - before)}}))
"""


def _run(env: dict[str, str], *flags: str) -> tuple[dict[str, object], str]:
    finished = subprocess.run(
        [sys.executable, *flags, "-c", CHILD],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(finished.stdout)
    return result, finished.stderr


def _environment(cache: str, *, write: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _costliest(stderr: str, count: int = 5) -> list[tuple[int, str]]:
    """(self µs, module) of the modules imported after the mark, costliest first."""
    found: list[tuple[int, str]] = []
    after = False
    for line in stderr.splitlines():
        if line.strip() == MARK:
            after = True
        elif after and line.startswith("import time:") and "|" in line:
            own, _, name = line.removeprefix("import time:").split("|")
            if own.strip().isdigit():
                found.append((int(own), name.strip()))
    return sorted(found, reverse=True)[:count]


def bench_import(runs: int) -> Table:
    """Section 5: ms for ``import poolwatch`` after FastAPI, with and without .pyc."""
    table = Table(
        "5. Import time (fresh interpreter, after import fastapi, prometheus_client)",
        ["bytecode", "import", "ms", "ratio vs fastapi + prometheus_client", "target"],
    )
    modules: list[str] = []
    costliest: list[tuple[int, str]] = []
    with tempfile.TemporaryDirectory(prefix="poolwatch-pyc-") as cached, \
         tempfile.TemporaryDirectory(prefix="poolwatch-nopyc-") as empty:  # fmt: skip
        warm = _environment(cached, write=True)
        _run(warm)  # fills the cache; not counted
        for label, env in (("cached .pyc", warm), ("no .pyc", _environment(empty, write=False))):
            base: list[float] = []
            own: list[float] = []
            for _ in range(runs):
                result, _ = _run(env)
                base.append(float(str(result["base"])))
                own.append(float(str(result["poolwatch"])))
            base_ms, own_ms = statistics.median(base) * 1e3, statistics.median(own) * 1e3
            table.add(label, "fastapi, prometheus_client", f"{base_ms:.1f}", "1.000x")
            table.add(
                label,
                "poolwatch",
                f"{own_ms:.1f}",
                f"{own_ms / base_ms:.3f}x",
                target=Target(f"≤ {LIMIT_MS:.0f} ms", own_ms <= LIMIT_MS)
                if label == "cached .pyc"
                else None,
            )
        result, stderr = _run(warm, "-X", "importtime")
        modules = [str(m) for m in result["modules"]]  # type: ignore[attr-defined]
        costliest = _costliest(stderr)
    outside = sorted({m.split(".")[0] for m in modules} - {"poolwatch"})
    table.notes.append(
        f"Median of {runs} fresh interpreters per row. `import poolwatch` loaded "
        f"{len(modules)} modules ({len([m for m in modules if m.startswith('poolwatch')])} of "
        f"poolwatch; others: {', '.join(outside) or 'none'}). Costliest (self time, cached "
        f".pyc, -X importtime): " + ", ".join(f"{name} {us / 1e3:.1f} ms" for us, name in costliest)
    )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(bench_import(args.runs).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
