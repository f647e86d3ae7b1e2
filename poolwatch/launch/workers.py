"""How many worker processes a server command starts, read from its command line and
environment: several need prometheus_client's multiprocess mode, so that one scrape sums
them. Standard library only.

Known: ``uvicorn --workers``, ``gunicorn -w/--workers`` (and ``GUNICORN_CMD_ARGS``),
``hypercorn -w/--workers``, ``fastapi run --workers``, each as a script or as
``python -m``; ``WEB_CONCURRENCY``, which uvicorn (``uvicorn.run`` too), gunicorn and
``fastapi run`` read. A count that lives elsewhere (a gunicorn config file) is not seen:
``poolwatch run --multiprocess`` says so.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence

__all__ = ["SERVERS", "python_flags", "server_of", "worker_count"]

SERVERS = ("uvicorn", "gunicorn", "hypercorn", "fastapi")
_SHORT_W = ("gunicorn", "hypercorn")  # servers that take -w for --workers
_WITH_ARGUMENT = ("-X", "-W", "--check-hash-based-pycs")
_PYTHON = re.compile(r"python(\d+(\.\d+)*)?[tw]?(\.exe)?")


def _is_python(program: str) -> bool:
    return bool(_PYTHON.fullmatch(os.path.basename(program)))


def python_flags(argv: Sequence[str]) -> list[str]:
    """The interpreter options of a ``python ...`` command line, up to its script,
    ``-m`` or ``-c`` (empty for any other program)."""
    if not argv or not _is_python(argv[0]):
        return []
    flags: list[str] = []
    taking = False  # the argument of -X, -W ...
    for arg in argv[1:]:
        if taking:
            flags.append(arg)
            taking = False
            continue
        if not arg.startswith("-") or arg in ("-", "--") or arg.startswith(("-m", "-c")):
            break
        flags.append(arg)
        taking = arg in _WITH_ARGUMENT
    return flags


def server_of(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The server a command runs and its own arguments (``None`` if none is known)."""
    if not argv:
        return None, []
    name = os.path.basename(argv[0])
    rest = list(argv[1:])
    if _is_python(argv[0]):
        flags = python_flags(argv)
        rest = rest[len(flags) :]
        if rest[:1] == ["-m"] and len(rest) > 1:
            name, rest = rest[1], rest[2:]
        elif rest[:1] and rest[0].startswith("-m") and len(rest[0]) > 2:
            name, rest = rest[0][2:], rest[1:]
        else:
            return None, rest
    name = name.split(".")[0]
    return (name if name in SERVERS else None), rest


def _flag_value(args: Sequence[str], short: bool) -> int | None:
    """The last ``--workers N`` (or ``-w N`` / ``-wN``) in ``args``."""
    found: int | None = None
    for index, arg in enumerate(args):
        text: str | None = None
        if arg == "--":
            break
        if arg == "--workers" or (short and arg == "-w"):
            text = args[index + 1] if index + 1 < len(args) else None
        elif arg.startswith("--workers="):
            text = arg.partition("=")[2]
        elif short and arg.startswith("-w") and arg[2:].isdigit():
            text = arg[2:]
        if text is not None:
            try:
                found = int(text)
            except ValueError:
                continue  # the server will say what is wrong with it
    return found


def _environment_count(environ: Mapping[str, str]) -> int | None:
    try:
        return int(environ["WEB_CONCURRENCY"])
    except (KeyError, ValueError):
        return None


def worker_count(argv: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """How many workers the command starts, if its command line or environment says.

    >>> worker_count(["gunicorn", "-w", "4", "app:app"], {})
    4
    >>> worker_count(["python", "-m", "uvicorn", "app:app"], {"WEB_CONCURRENCY": "3"})
    3
    """
    server, args = server_of(argv)
    if server == "gunicorn":
        given = _flag_value(args, short=True)
        if given is None:
            try:
                extra = shlex.split(environ.get("GUNICORN_CMD_ARGS", ""))
            except ValueError:
                extra = []
            given = _flag_value(extra, short=True)
        return given if given is not None else _environment_count(environ)
    if server == "hypercorn":
        return _flag_value(args, short=True)
    given = _flag_value(args, short=False) if server is not None else None
    # uvicorn's Config reads WEB_CONCURRENCY, so does uvicorn.run() in `python -m app`.
    return given if given is not None else _environment_count(environ)
