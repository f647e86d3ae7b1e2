"""The servers the tests need, started on loopback in temporary directories, and stopped.

* :class:`Postgres`: a throwaway cluster (``initdb``, ``pg_ctl``), run as the
  ``postgres`` OS user when we are root (PostgreSQL refuses to run as root), listening on
  127.0.0.1 and a Unix socket in its own directory; stoppable and restartable mid-run
  (the fault campaign and the outage load test restart it);
* :class:`MariaDB`: a throwaway server for the MySQL tests, run as ``nobody`` when we
  are root;
* :func:`install_missing`: Debian's packages for them and for Prometheus's ``promtool``,
  installed when missing (as root, or with sudo).

The test runner (``noxfile.py``) starts one of each per session and hands the tests
their URLs in ``POOLWATCH_TEST_PG_DSN`` and ``POOLWATCH_TEST_MYSQL_URL`` (see
``tests/conftest.py``); the load tests and the fault campaign start clusters of their own.
Standard library only: the runner imports it before any project dependency is installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "HOST",
    "MariaDB",
    "Postgres",
    "free_port",
    "install_missing",
    "missing_packages",
    "workdir",
]

HOST = "127.0.0.1"


def free_port() -> int:
    """A port free on loopback now (another process could take it before it is bound:
    the servers below try again)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def workdir(base: Path | None = None) -> Iterator[Path]:
    """A temporary directory the server users may enter, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="poolwatch-servers-", dir=base))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Service:
    """A context manager that stops what it started, however the block ends."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


def _as(user: str) -> list[str]:
    """The prefix that runs a command as ``user`` when we are root (nothing otherwise)."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


class Postgres(Service):
    """A throwaway PostgreSQL cluster in a directory of its own under ``work``."""

    def __init__(self, work: Path, *, max_connections: int = 100) -> None:
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL not found: apt-get install postgresql")
        self.dir = Path(tempfile.mkdtemp(prefix="poolwatch-pg-", dir=work))
        self.max_connections = max_connections
        self.port = free_port()
        self.as_postgres = _as("postgres")
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
        # Trust auth and no fsync: a disposable cluster bound to loopback, where speed
        # matters and durability does not.
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
        self.start()

    @property
    def url(self) -> str:
        """Tortoise URL of the ``postgres`` database."""
        return f"asyncpg://postgres@{HOST}:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """libpq DSN of the ``postgres`` database (the superuser)."""
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [*self.as_postgres, str(Path(self.bin or "") / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.dir, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses={HOST} "
            f"-c max_connections={self.max_connections} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "start", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"),
                  "-o", options, "-w", "-t", "60")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.dir / "data"), "-m", "fast", "-w", "-t", "30")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "stop", "-D", str(self.dir / "data"), "-m", "immediate", "-w")
        shutil.rmtree(self.dir, ignore_errors=True)


class MariaDB(Service):
    """A throwaway MariaDB server: root without a password, on loopback and a socket in
    its own directory only."""

    def __init__(self, work: Path, *, max_connections: int = 300) -> None:
        server = mariadbd()
        if server is None:
            raise RuntimeError("MariaDB not found: apt-get install mariadb-server-core")
        self.dir = Path(tempfile.mkdtemp(prefix="poolwatch-my-", dir=work))
        self.dir.chmod(0o755)
        self.as_user = _as("nobody")
        if self.as_user:
            shutil.chown(self.dir, "nobody")
        installed = subprocess.run(
            [*self.as_user, "mariadb-install-db", "--no-defaults", f"--datadir={self.dir}/data",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, cwd=self.dir, check=False,
        )  # fmt: skip
        if installed.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {installed.stdout}{installed.stderr}")
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        for _ in range(3):  # the port may be taken between free_port() and the bind
            self.port = free_port()
            if self._start(server, max_connections):
                return
        self.close()
        raise RuntimeError(f"MariaDB did not start: {self._log()[-2000:]}")

    @property
    def url(self) -> str:
        """``mysql://root:@host:port/`` (no database)."""
        return f"mysql://root:@{HOST}:{self.port}/"

    def _log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "error.log").read_text(errors="replace")
        return ""

    def _start(self, server: str, max_connections: int) -> bool:
        self.process = subprocess.Popen(
            [*self.as_user, server, "--no-defaults", f"--datadir={self.dir}/data",
             f"--socket={self.dir}/sock", f"--port={self.port}", f"--bind-address={HOST}",
             "--skip-name-resolve", f"--pid-file={self.dir}/pid",
             f"--log-error={self.dir}/error.log", "--innodb-buffer-pool-size=64M",
             f"--max-connections={max_connections}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "ready for connections" in self._log():
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.2)
        return False

    def close(self) -> None:
        pid_file = self.dir / "pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), 15)  # runuser's child: the server
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
            if self.process.poll() is None:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def pg_bin() -> str | None:
    """The directory of ``pg_ctl`` and ``initdb``: Debian keeps one per major version out
    of PATH (the newest is taken); elsewhere they are usually on PATH."""
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(directory, "pg_ctl"), os.X_OK):
            return directory
    found = shutil.which("pg_ctl")
    return None if found is None else os.path.dirname(found)


def mariadbd() -> str | None:
    """The MariaDB server binary, if it and ``mariadb-install-db`` are installed."""
    if shutil.which("mariadb-install-db") is None:
        return None
    for path in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld", shutil.which("mariadbd")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def missing_packages() -> list[str]:
    """Debian's packages the tests need and this machine lacks."""
    missing = []
    if pg_bin() is None:
        missing.append("postgresql")
    if shutil.which("promtool") is None:
        missing.append("prometheus")  # brings promtool (and the server the load tests use)
    if mariadbd() is None:
        missing += ["mariadb-server-core", "mariadb-client-core"]
    return missing


def install_missing() -> list[str]:
    """Install what :func:`missing_packages` lists with apt-get (as root, or with sudo);
    returns what is still missing."""
    missing = missing_packages()
    if not missing or shutil.which("apt-get") is None:
        return missing
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if sudo and shutil.which("sudo") is None:
        return missing
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # No recommends: the prometheus package would pull in node-exporter and friends.
    for command in (
        [*sudo, "apt-get", "update", "-qq"],
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        subprocess.run(command, env=environment, check=False, stdout=subprocess.DEVNULL)
    return missing_packages()
