"""``poolwatch run``'s launcher: options to ``POOLWATCH_*`` variables, the command found
(or exit 127), the bootstrap first on ``PYTHONPATH``, multiprocess mode for several
workers, and the command run in the launcher's own process."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from poolwatch.config import Settings
from poolwatch.launch import command
from poolwatch.launch.automatic import POOL_NAMES
from poolwatch.launch.command import BOOTSTRAP, RUN, Launch, UsageError, prepare
from poolwatch.launch.options import OPTIONS, Option, variable

PYTHON = sys.executable


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="poolwatch")
    command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["run", *argv])


def _prepare(*argv: str, environ: dict[str, str] | None = None, made: Path | None = None) -> Launch:
    def make_dir(pid: int) -> Path:
        assert made is not None, "no multiprocess directory expected"
        made.mkdir()
        return made

    return prepare(_options(*argv), environ or {"PATH": os.environ["PATH"]}, 4242, make_dir)


def test_options_become_the_variables_of_their_settings() -> None:
    launch = _prepare(
        "--metrics-port", "9109", "--exclude-paths", "/health,/ready", "--nplusone-mode",
        "raise", "--acquire-timeout", "2.5", "--", PYTHON, "-m", "app",
    )  # fmt: skip
    env = launch.environ
    assert env["POOLWATCH_METRICS_PORT"] == "9109"
    settings = Settings.from_env(env)
    assert settings.metrics_port == 9109
    assert settings.exclude_paths == ("/health", "/ready")
    assert settings.nplusone_mode == "raise"
    assert settings.acquire_timeout == 2.5
    assert "POOLWATCH_METRICS_PATH" not in env  # not given: not set
    assert launch.argv == [PYTHON, "-m", "app"]
    assert launch.program == PYTHON


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.flag)
def test_every_option_is_a_setting_read_from_its_variable(option: Option) -> None:
    assert option.setting in Settings.__dataclass_fields__
    assert variable(option.setting) == f"POOLWATCH_{option.setting.upper()}"
    assert option.flag == "--" + option.setting.replace("_", "-")


def test_an_option_wins_over_its_variable_and_other_variables_pass() -> None:
    environ = {
        "PATH": os.environ["PATH"],
        "POOLWATCH_METRICS_PATH": "/internal/metrics",
        "POOLWATCH_METRICS_BEARER_TOKEN": "s3cret",
        "PYTHONPATH": f"/srv/app{os.pathsep}{BOOTSTRAP}",
    }
    launch = _prepare("--metrics-path", "/m", "--", PYTHON, environ=environ)
    assert launch.environ["POOLWATCH_METRICS_PATH"] == "/m"
    assert launch.environ["POOLWATCH_METRICS_BEARER_TOKEN"] == "s3cret"
    # The bootstrap first, once; the app's own path kept.
    assert launch.environ["PYTHONPATH"] == f"{BOOTSTRAP}{os.pathsep}/srv/app"
    assert launch.environ[RUN] == "4242"


def test_bad_settings_stop_the_launch_naming_the_setting() -> None:
    with pytest.raises(UsageError, match="metrics_path='metrics': must be a URL path") as err:
        _prepare("--metrics-path", "metrics", "--", PYTHON)
    assert err.value.status == 2
    with pytest.raises(UsageError, match="POOLWATCH_LEAK_THRESHOLD='soon'"):
        _prepare("--", PYTHON, environ={"POOLWATCH_LEAK_THRESHOLD": "soon"})
    with pytest.raises(SystemExit):  # argparse: not one of off, log, raise
        _options("--nplusone-mode", "loud", "--", PYTHON)
    with pytest.raises(UsageError, match="give the command to run"):
        _prepare()
    with pytest.raises(UsageError, match="--pool-name 'main=': expected NAME or FOUND=NAME"):
        _prepare("--pool-name", "main=", "--", PYTHON)


def test_pool_names_are_passed_on() -> None:
    launch = _prepare("--pool-name", "shop=main", "--pool-name", "audit=log", "--", PYTHON)
    assert launch.environ[POOL_NAMES] == "shop=main,audit=log"
    assert POOL_NAMES not in _prepare("--", PYTHON).environ


def test_a_missing_command_is_127_and_one_that_cannot_run_126(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no-such-server: command not found") as err:
        _prepare("--", "no-such-server", "app:app")
    assert err.value.status == 127
    with pytest.raises(UsageError, match="no such file") as err:
        _prepare("--", str(tmp_path / "server"))
    assert err.value.status == 127
    script = tmp_path / "server"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match="cannot be run") as err:
        _prepare("--", str(script))
    assert err.value.status == 126


def test_several_workers_get_a_multiprocess_directory(tmp_path: Path) -> None:
    made = tmp_path / "shared"
    launch = _prepare("--", PYTHON, "-m", "uvicorn", "app:app", "--workers", "2", made=made)
    assert launch.environ["PROMETHEUS_MULTIPROC_DIR"] == str(made) == str(launch.shared)
    assert launch.notes == [f"2 workers: multiprocess mode, its files in {made} (removed at exit)"]
    # One worker: none; the user's own directory: kept as it is.
    assert "PROMETHEUS_MULTIPROC_DIR" not in _prepare("--", PYTHON, "-m", "uvicorn").environ
    theirs = {"PATH": os.environ["PATH"], "PROMETHEUS_MULTIPROC_DIR": "/run/metrics"}
    launch = _prepare("--", PYTHON, "-m", "gunicorn", "-w", "4", environ=theirs)
    assert (launch.environ["PROMETHEUS_MULTIPROC_DIR"], launch.shared) == ("/run/metrics", None)
    forced = tmp_path / "forced"
    launch = _prepare("--multiprocess", "--", PYTHON, "-m", "app", made=forced)
    assert launch.environ["PROMETHEUS_MULTIPROC_DIR"] == str(forced)


def test_options_that_keep_python_from_loading_poolwatch_are_named(tmp_path: Path) -> None:
    launch = _prepare("--", PYTHON, "-IS", "-X", "dev", "-m", "app")
    assert launch.notes == [
        "-I -S keeps Python from loading poolwatch's bootstrap (PYTHONPATH, "
        "sitecustomize): the app will run without poolwatch"
    ]
    script = tmp_path / "server"
    script.write_text(f"#!{PYTHON} -E\nprint('hi')\n")
    script.chmod(0o755)
    assert _prepare("--", str(script)).notes[0].startswith("-E keeps Python")
    assert _prepare("--", PYTHON, "-X", "importtime", "-m", "app").notes == []


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "poolwatch", "run", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_the_command_runs_in_the_launchers_process_with_its_exit_status(tmp_path: Path) -> None:
    code = (
        "import os, sys; print(os.getpid() == int(os.environ['_POOLWATCH_RUN']), "
        "os.environ['POOLWATCH_METRICS_PORT']); sys.exit(3)"
    )
    done = _run("--metrics-port", "9109", "--", PYTHON, "-c", code, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (3, "True 9109\n", "")
    done = _run(PYTHON, "-c", "print('no -- needed')", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "no -- needed\n")
    done = _run("--", "no-such-server", "app:app", cwd=tmp_path)
    assert done.returncode == 127
    assert done.stderr == "poolwatch run: no-such-server: command not found\n"
