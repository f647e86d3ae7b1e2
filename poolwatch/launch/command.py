"""``poolwatch run [options] [--] COMMAND [ARGS...]``: run a server command with
poolwatch in every process it starts, the app unchanged.

The launcher checks the settings, finds the command (exit 127 if there is none, 126 if
it cannot be run), sets up the environment and replaces itself with the command
(``exec``: same process id, signals go straight to the server). The environment:

* ``PYTHONPATH``: this package's ``_bootstrap`` directory first (it holds only a
  ``sitecustomize``; kept for the workers the server spawns, which run it again);
* ``_POOLWATCH_RUN``: the launcher's process id (the bootstrap does nothing without it);
* ``_POOLWATCH_RUN_POOLS``: what ``--pool-name`` said;
* ``POOLWATCH_<SETTING>``: from the options (which win over the same variables already
  set);
* ``PROMETHEUS_MULTIPROC_DIR``: a new directory, removed when the command exits, when the
  command starts several workers (``--workers``, ``-w``, ``WEB_CONCURRENCY``) or
  ``--multiprocess`` says so, unless the variable is set already.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from poolwatch.config import Settings
from poolwatch.errors import ConfigError
from poolwatch.launch.automatic import POOL_NAMES
from poolwatch.launch.names import PoolNames
from poolwatch.launch.options import OPTIONS, environment_of, variable
from poolwatch.launch.shared_dir import make_shared_dir
from poolwatch.launch.workers import python_flags, worker_count

__all__ = [
    "BOOTSTRAP",
    "RUN",
    "Launch",
    "UsageError",
    "add_parser",
    "prepare",
    "resolve",
    "run",
]

BOOTSTRAP = Path(__file__).resolve().parent / "_bootstrap"
RUN = "_POOLWATCH_RUN"
NOT_FOUND = 127
NOT_EXECUTABLE = 126
USAGE = 2

DESCRIPTION = """\
Run COMMAND (uvicorn, gunicorn, fastapi run, hypercorn, python -m ...) with poolwatch in
every process it starts: each ASGI app the server loads gets poolwatch's middleware and
GET /metrics, each SQLAlchemy engine and Tortoise connection is instrumented, with the
pool named after its database. What the app instruments itself stays as it is.
"""

EPILOG = """\
Every setting can also be given as a POOLWATCH_<NAME> variable (POOLWATCH_METRICS_PORT,
POOLWATCH_METRICS_BEARER_TOKEN ...); an option wins over its variable. With several
workers, multiprocess mode is set up (a temporary PROMETHEUS_MULTIPROC_DIR), unless
PROMETHEUS_MULTIPROC_DIR is set already.

examples:
  poolwatch run uvicorn app.main:app --port 8000
  poolwatch run --metrics-port 9109 -- gunicorn -k uvicorn.workers.UvicornWorker -w 4 app:app
  poolwatch run --pool-name app=main -- fastapi run app/main.py
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run`` to the ``poolwatch`` command's subcommands."""
    parser = commands.add_parser(
        "run",
        help="run a server command with poolwatch in it, the app unchanged",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Settings()
    for option in OPTIONS:
        default = getattr(defaults, option.setting)
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(
            option.flag,
            dest=option.setting,
            metavar=option.metavar,
            choices=option.choices,
            help=f"{option.help} ({variable(option.setting)}; default: {shown or 'none'})",
        )
    parser.add_argument(
        "--pool-name",
        action="append",
        default=[],
        metavar="[FOUND=]NAME",
        help="name the pools: NAME for every engine's (the next ones NAME-2 ...), or "
        "FOUND=NAME for the one otherwise named FOUND (its database; repeatable)",
    )
    parser.add_argument(
        "--multiprocess",
        action="store_true",
        help="set up multiprocess mode even when no worker count is seen on the command "
        "line (a gunicorn config file's workers, uvicorn.run(workers=...) in python -m)",
    )
    parser.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="COMMAND [ARGS...]",
        help="the command to run (after --, which is optional)",
    )


@dataclasses.dataclass(frozen=True)
class Launch:
    """What the launcher will run: the program found, its argv and environment."""

    program: str
    argv: list[str]
    environ: dict[str, str]
    shared: Path | None  # the multiprocess directory made for it, if any
    notes: list[str]  # what to tell the user before it runs


class UsageError(Exception):
    """What is wrong with the command line, and the exit status to leave with."""

    def __init__(self, message: str, status: int = USAGE) -> None:
        super().__init__(message)
        self.status = status


def resolve(program: str, environ: Mapping[str, str]) -> str:
    """The file ``program`` names, looked up on ``PATH`` if it has no slash."""
    if os.sep in program or (os.altsep and os.altsep in program):
        path = program
        if not os.path.exists(path):
            raise UsageError(f"{program}: no such file", NOT_FOUND)
    else:
        found = shutil.which(program, path=environ.get("PATH", os.defpath))
        if found is None:
            raise UsageError(f"{program}: command not found", NOT_FOUND)
        path = found
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise UsageError(f"{program}: cannot be run ({path} is not executable)", NOT_EXECUTABLE)
    return path


def _shebang_flags(path: str) -> list[str]:
    """The interpreter options in a script's ``#!`` line (``-I``, ``-E`` ...)."""
    try:
        with open(path, "rb") as script:
            line = script.readline(256)
    except OSError:
        return []
    if not line.startswith(b"#!"):
        return []
    words = line[2:].decode(errors="replace").split()
    return [w for w in words[1:] if w.startswith("-")]


def _blind_flags(flags: Sequence[str]) -> list[str]:
    """The interpreter options that keep the bootstrap from running."""
    blind = []
    for flag in flags:
        # A cluster of one-letter options (-IS, -bb), not -X/-W and their arguments.
        if flag.startswith(("--", "-X", "-W")) or not flag.startswith("-"):
            continue
        blind += [f"-{letter}" for letter in "IES" if letter in flag[1:]]
    return blind


def prepare(
    options: argparse.Namespace,
    environ: Mapping[str, str],
    pid: int,
    make_dir: Callable[[int], Path] = make_shared_dir,
) -> Launch:
    """Check the options and find the command; the environment it runs in. Makes the
    multiprocess directory if one is needed (the caller removes it if it does not run)."""
    argv = list(options.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError("give the command to run: poolwatch run [options] -- COMMAND ...")
    env = dict(environ)
    given = {option.setting: getattr(options, option.setting) for option in OPTIONS}
    env.update(environment_of(given))
    try:
        Settings.from_env(env)
    except ConfigError as exc:
        raise UsageError(f"poolwatch settings: {exc}") from exc
    try:
        names = PoolNames.parse(",".join(options.pool_name))
    except ValueError as exc:
        raise UsageError(f"--pool-name {exc}") from exc
    program = resolve(argv[0], env)
    notes = []
    blind = _blind_flags(python_flags(argv) + _shebang_flags(program))
    if blind:
        notes.append(
            f"{' '.join(blind)} keeps Python from loading poolwatch's bootstrap "
            "(PYTHONPATH, sitecustomize): the app will run without poolwatch"
        )
    paths = [str(BOOTSTRAP)] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(BOOTSTRAP)
    ]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[RUN] = str(pid)
    if str(names):
        env[POOL_NAMES] = str(names)
    else:
        env.pop(POOL_NAMES, None)
    shared = None
    workers = worker_count(argv, env)
    if (options.multiprocess or (workers or 1) > 1) and not env.get("PROMETHEUS_MULTIPROC_DIR"):
        shared = make_dir(pid)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
        many = f"{workers} workers" if workers and workers > 1 else "--multiprocess"
        notes.append(f"{many}: multiprocess mode, its files in {shared} (removed at exit)")
    return Launch(program, argv, env, shared, notes)


def run(options: argparse.Namespace) -> int:
    """Run the command in place of this process; returns an exit status if it cannot."""
    try:
        launch = prepare(options, os.environ, os.getpid())
    except UsageError as exc:
        print(f"poolwatch run: {exc}", file=sys.stderr)
        return exc.status
    for note in launch.notes:
        print(f"poolwatch run: {note}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(launch.program, launch.argv, launch.environ)
    except OSError as exc:
        if launch.shared is not None:
            shutil.rmtree(launch.shared, ignore_errors=True)
        print(f"poolwatch run: {launch.argv[0]}: {exc.strerror}", file=sys.stderr)
        return NOT_EXECUTABLE
