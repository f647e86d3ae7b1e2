"""The processes a load test starts, on loopback only, and always stops.

* :class:`Postgres`: a throwaway cluster in a temporary directory (``initdb``, ``pg_ctl``),
  run as the ``postgres`` OS user when we are root (PostgreSQL refuses to run as root),
  listening on 127.0.0.1 and a Unix socket in that directory; stoppable and restartable
  mid-run (the outage scenario).
* :class:`Prometheus`: Debian's ``prometheus``, scraping the app every second with the
  alert rules' fast profile loaded, its data in a temporary directory.
* :class:`App`: the load-test app under uvicorn.
* :class:`Locust`: Locust headless, in one process or as a master and N workers.

Each is a context manager; leaving it (normally, on failure or on Ctrl-C) stops the
process and removes what it created.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["App", "Locust", "Postgres", "Prometheus", "free_port"]

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not answering after {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (the whole process group)."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


def _spawn(
    command: Sequence[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,  # its own process group: stop() gets its children too
        )


class _Service:
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


class Postgres(_Service):
    """A throwaway PostgreSQL cluster."""

    def __init__(self, work: Path) -> None:
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="poolwatch-pg-", dir=work))
        self.port = free_port()
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
        self.start()

    @property
    def url(self) -> str:
        """Tortoise URL of the ``postgres`` database."""
        return f"asyncpg://postgres@{HOST}:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [*self.as_postgres, str(Path(self.bin) / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.dir, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses={HOST} -c max_connections=100 "
            "-c fsync=off -c synchronous_commit=off"
        )
        self._run("pg_ctl", "start", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"),
                  "-o", options, "-w", "-t", "30")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.dir / "data"), "-m", "fast", "-w", "-t", "30")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "stop", "-D", str(self.dir / "data"), "-m", "immediate", "-w")
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if os.access(os.path.join(directory, "pg_ctl"), os.X_OK):
            return directory
    found = shutil.which("pg_ctl")
    if found is None:
        raise RuntimeError("PostgreSQL not found: apt-get install postgresql (or use --sqlite)")
    return os.path.dirname(found)


class Prometheus(_Service):
    """A Prometheus scraping ``target`` every second, with ``rules`` loaded."""

    def __init__(
        self, work: Path, target: str, rules: Path, metrics_path: str = "/metrics"
    ) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not found: apt-get install prometheus")
        self.dir = Path(tempfile.mkdtemp(prefix="poolwatch-prom-", dir=work))
        self.port = free_port()
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {rules}\n"
            "scrape_configs:\n  - job_name: poolwatch\n"
            f"    metrics_path: {metrics_path}\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.process = _spawn(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address={HOST}:{self.port}", "--storage.tsdb.retention.time=1d",
             "--log.level=warn"],
            self.dir / "prometheus.log",
        )  # fmt: skip
        wait_http(f"{self.url}/-/ready", 60, self.process)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def close(self) -> None:
        stop(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)


class App(_Service):
    """The load-test app under uvicorn, configured by ``env``."""

    def __init__(self, work: Path, env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        environment = {**os.environ, **env}
        self.process = _spawn(
            [sys.executable, "-m", "uvicorn", "loadtests.app:create_app", "--factory",
             "--host", HOST, "--port", str(self.port), "--log-level", "warning",
             "--no-access-log"],
            log,
            environment,
        )  # fmt: skip
        wait_http(f"{self.url}/authors", 60, self.process)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def close(self) -> None:
        stop(self.process)


class Locust(_Service):
    """Locust headless: one process, or a master and ``workers`` worker processes."""

    def __init__(
        self,
        *,
        host: str,
        user: str,
        users: int,
        spawn_rate: float,
        seconds: int,
        out: Path,
        workers: int = 0,
        shape: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        files = "loadtests/locustfile.py" + (",loadtests/step_shape.py" if shape else "")
        base = [sys.executable, "-m", "locust", "-f", files, "--host", host]
        environment = {**os.environ, **(env or {})}
        common = [
            "--headless", "-u", str(users), "-r", str(spawn_rate), "-t", f"{seconds}s",
            "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
            "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING", user,
        ]  # fmt: skip
        self.workers: list[subprocess.Popen[bytes]] = []
        if workers:
            port = free_port()
            self.process = _spawn(
                [*base, "--master", "--master-bind-host", HOST, "--master-bind-port", str(port),
                 "--expect-workers", str(workers), *common],
                out / "locust.log",
                environment,
            )  # fmt: skip
            for _ in range(workers):
                self.workers.append(
                    _spawn(
                        [
                            *base,
                            "--worker",
                            "--master-host",
                            HOST,
                            "--master-port",
                            str(port),
                            "--loglevel",
                            "WARNING",
                            user,
                        ],
                        out / "locust-workers.log",
                        environment,
                    )
                )
        else:
            self.process = _spawn([*base, *common], out / "locust.log", environment)

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=15)
        return code

    def close(self) -> None:
        stop(self.process)
        for worker in self.workers:
            stop(worker)


@contextlib.contextmanager
def workdir(base: Path | None = None) -> Iterator[Path]:
    """A temporary directory readable by the postgres user, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="poolwatch-loadtest-", dir=base))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
