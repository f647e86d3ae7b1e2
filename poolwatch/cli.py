"""The ``poolwatch`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from poolwatch.exposition.assets import ASSETS, export
from poolwatch.launch import command as run_command


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``poolwatch`` console script."""
    parser = argparse.ArgumentParser(prog="poolwatch", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the instrumented demo blog app")
    demo.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    demo.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="Tortoise database URL (default: $DATABASE_URL, else sqlite://demo.sqlite3)",
    )
    export = commands.add_parser(
        "export",
        help="write the Grafana dashboards or the Prometheus rules (with their tests and "
        "runbook) into a directory",
    )
    export.add_argument("kind", choices=sorted(ASSETS), help="what to write")
    export.add_argument("directory", type=Path, help="where (created if missing)")
    run_command.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_command.run(args)
    if args.command == "demo":
        return _demo(args.host, args.port, args.database_url)
    if args.command == "export":
        return _export(args.kind, args.directory)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _export(kind: str, directory: Path) -> int:
    try:
        written = export(kind, directory)
    except OSError as exc:
        print(f"poolwatch export {kind}: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def _demo(host: str, port: int, database_url: str | None) -> int:
    try:
        import uvicorn

        from poolwatch.demo.app import DEFAULT_DATABASE_URL, create_app
    except ImportError as exc:
        print(f"the demo needs the 'demo' extra: pip install 'poolwatch[demo]' ({exc})")
        return 1
    url = database_url or DEFAULT_DATABASE_URL
    base = f"http://{host}:{port}"
    print(f"poolwatch demo on {url.split('@')[-1]}", flush=True)
    print(f"  app:      {base}/authors   {base}/posts   {base}/posts/nplusone", flush=True)
    print(f"  metrics:  {base}/metrics", flush=True)
    print(f"  API docs: {base}/docs", flush=True)
    uvicorn.run(create_app(url), host=host, port=port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
