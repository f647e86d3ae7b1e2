"""The multiprocess directory ``poolwatch run`` makes when the server starts several
workers, and takes away again.

It is made before the command runs (prometheus_client reads ``PROMETHEUS_MULTIPROC_DIR``
when it is imported) and named by the launcher's process id, in a marker file: the
command runs in that very process (the launcher execs it), and the bootstrap removes the
directory when that process exits (see ``_bootstrap/sitecustomize.py``), never when a
worker does. One left behind by a process that was killed is swept by the next
``poolwatch run``. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["MARKER", "PREFIX", "make_shared_dir", "owner_of", "sweep"]

PREFIX = "poolwatch-run-"
MARKER = "poolwatch-run.pid"  # prometheus_client reads *.db files only


def make_shared_dir(pid: int, parent: str | None = None) -> Path:
    """A new empty directory for the workers' files, marked as ``pid``'s."""
    sweep(parent)
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    (path / MARKER).write_text(f"{pid}\n")
    return path


def owner_of(path: Path) -> int | None:
    """The process whose ``poolwatch run`` made ``path`` (None: not made by one)."""
    try:
        return int((path / MARKER).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep(parent: str | None = None) -> list[Path]:
    """Remove the directories of ``poolwatch run`` processes that are gone (this user's);
    returns them."""
    removed = []
    root = Path(parent or tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for path in root.glob(f"{PREFIX}*"):
            owner = owner_of(path)
            with contextlib.suppress(OSError):
                if owner is None or path.stat().st_uid != os.getuid() or _alive(owner):
                    continue
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed
