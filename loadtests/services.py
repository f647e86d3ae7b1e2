"""The processes a load test starts, on loopback only, and always stops.

* :class:`~tests.servers.Postgres`: a throwaway cluster (in :mod:`tests.servers`, which
  the test runner uses too), stoppable and restartable mid-run (the outage scenario).
* :class:`Prometheus`: Debian's ``prometheus``, scraping the app every second with the
  alert rules' fast profile loaded, its data in a temporary directory.
* :class:`App`: the load-test app under uvicorn.
* :class:`Locust`: Locust headless, in one process or as a master and N workers.

Each is a context manager; leaving it (normally, on failure or on Ctrl-C) stops the
process and removes what it created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.servers import HOST, Postgres, Service, free_port, workdir

__all__ = ["HOST", "App", "Locust", "Postgres", "Prometheus", "free_port", "workdir"]

ROOT = Path(__file__).resolve().parent.parent


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


class Prometheus(Service):
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


class App(Service):
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


class Locust(Service):
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
