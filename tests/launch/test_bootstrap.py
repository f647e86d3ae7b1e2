"""The bootstrap every process of a ``poolwatch run`` command runs first: post-import
hooks, the sitecustomize it hides, and the multiprocess directory removed at exit."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from poolwatch.launch import command, shared_dir
from poolwatch.launch.command import BOOTSTRAP

SITECUSTOMIZE = BOOTSTRAP / "sitecustomize.py"


def _load() -> ModuleType:
    """The bootstrap as a module of another name: importing it installs nothing."""
    spec = importlib.util.spec_from_file_location("poolwatch_bootstrap_under_test", SITECUSTOMIZE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bootstrap = _load()


@pytest.fixture
def hooks() -> Iterator[tuple[object, list[str]]]:
    reports: list[str] = []
    finder = bootstrap.PostImportHooks(reports.append)
    sys.meta_path.insert(0, finder)
    yield finder, reports
    sys.meta_path.remove(finder)


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for modules made by the test (forgotten afterwards)."""
    sys.path.insert(0, str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_hook_runs_once_the_module_has_run(hooks: tuple, modules: Path) -> None:
    finder, reports = hooks
    (modules / "pw_shop").mkdir()
    (modules / "pw_shop" / "__init__.py").write_text("VALUE = 1\n")
    (modules / "pw_shop" / "engine.py").write_text("def create():\n    return 'engine'\n")
    seen: list[tuple[str, object]] = []
    finder.when_imported("pw_shop.engine", lambda m: seen.append((m.__name__, m.create())))
    finder.when_imported("pw_shop", lambda m: seen.append((m.__name__, m.VALUE)))

    import pw_shop.engine  # type: ignore[import-not-found]

    assert seen == [("pw_shop", 1), ("pw_shop.engine", "engine")]
    # The module shows its own loader, not the hooks'.
    assert type(pw_shop.engine.__loader__).__name__ == "SourceFileLoader"
    assert pw_shop.engine.__spec__.loader is pw_shop.engine.__loader__
    importlib.reload(pw_shop.engine)
    assert len(seen) == 2  # once
    # Imported already: at once.
    finder.when_imported("pw_shop", lambda m: seen.append(("again", m.VALUE)))
    assert seen[-1] == ("again", 1)
    assert reports == []


def test_a_failing_hook_never_fails_the_import(hooks: tuple, modules: Path) -> None:
    finder, reports = hooks
    (modules / "pw_broken_hook.py").write_text("VALUE = 2\n")
    finder.when_imported("pw_broken_hook", lambda m: 1 / 0)

    import pw_broken_hook  # type: ignore[import-not-found]

    assert pw_broken_hook.VALUE == 2
    assert reports == [
        "instrumenting pw_broken_hook failed (ZeroDivisionError('division by zero')); it runs as is"
    ]


def test_the_launcher_and_the_bootstrap_agree() -> None:
    assert bootstrap.RUN == command.RUN
    assert bootstrap.MARKER == shared_dir.MARKER
    assert sorted(p.name for p in BOOTSTRAP.iterdir() if p.name != "__pycache__") == [
        "sitecustomize.py"
    ]
    hooks_module = importlib.import_module(bootstrap.HOOKS_MODULE)
    for function in bootstrap.HOOKS.values():
        assert callable(getattr(hooks_module, function))


def test_without_the_launchers_variable_it_does_nothing() -> None:
    before = list(sys.meta_path)
    assert bootstrap.start({}) is None
    assert sys.meta_path == before


def _python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _environment(*paths: Path | str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", command.RUN)}
    here = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in paths), *filter(None, [here])])
    env.update(extra)
    return env


def test_it_chains_the_sitecustomize_it_hides_and_imports_nothing_of_poolwatch(
    tmp_path: Path,
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_RAN'] = 'yes'\n")
    done = _python(
        """
        import os, sys
        print(os.environ.get("OTHER_RAN"), sys.modules["sitecustomize"].__file__)
        print(type(sys.meta_path[0]).__name__)
        print(sorted(m for m in sys.modules if m.startswith("poolwatch")))
        """,
        _environment(BOOTSTRAP, other, **{command.RUN: "1"}),
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    chained, finder, imported = done.stdout.splitlines()
    assert chained == f"yes {other / 'sitecustomize.py'}"
    assert finder == "PostImportHooks"
    assert imported == "[]"


def test_a_python_without_poolwatch_runs_the_app_with_one_line_said(tmp_path: Path) -> None:
    done = _python(
        """
        import sys
        sys.modules["poolwatch"] = None  # as if poolwatch were not installed here
        import sqlalchemy, tortoise
        print("app ran")
        """,
        _environment(BOOTSTRAP, **{command.RUN: "1"}),
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "app ran\n"
    assert done.stderr.count("poolwatch run: poolwatch cannot be imported by") == 1


def test_the_multiprocess_directory_goes_when_the_launchers_process_exits(
    tmp_path: Path,
) -> None:
    # The command's process (the launcher's pid) forks a worker that exits first: the
    # directory stays until the process that made it exits.
    done = _python(
        f"""
        import importlib.util, os, sys
        from pathlib import Path
        from poolwatch.launch.shared_dir import make_shared_dir
        path = make_shared_dir(os.getpid(), {str(tmp_path)!r})
        spec = importlib.util.spec_from_file_location("boot", {str(SITECUSTOMIZE)!r})
        boot = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(boot)
        boot._remove_at_exit({{"{command.RUN}": str(os.getpid()),
                               "PROMETHEUS_MULTIPROC_DIR": str(path)}})
        child = os.fork()
        if child == 0:
            sys.exit(0)  # a worker: runs the atexit handlers it inherited
        os.waitpid(child, 0)
        print(path, path.is_dir())
        """,
        _environment(),
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    path, kept = done.stdout.split()
    assert kept == "True"
    assert not Path(path).exists()


def test_a_directory_of_the_users_own_is_kept(tmp_path: Path) -> None:
    theirs = tmp_path / "metrics"
    theirs.mkdir()
    done = _python(
        f"""
        import importlib.util, os
        spec = importlib.util.spec_from_file_location("boot", {str(SITECUSTOMIZE)!r})
        boot = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(boot)
        boot._remove_at_exit({{"{command.RUN}": str(os.getpid()),
                               "PROMETHEUS_MULTIPROC_DIR": {str(theirs)!r}}})
        """,
        _environment(),
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert theirs.is_dir()


def test_directories_of_launchers_that_are_gone_are_swept(tmp_path: Path) -> None:
    gone = shared_dir.make_shared_dir(2**22 + 12345, str(tmp_path))  # no such process
    assert gone.is_dir()
    unmarked = tmp_path / f"{shared_dir.PREFIX}unmarked"
    unmarked.mkdir()
    # Made by this process: the next launcher sweeps the other one.
    alive = shared_dir.make_shared_dir(os.getpid(), str(tmp_path))
    assert not gone.exists()
    assert shared_dir.owner_of(alive) == os.getpid()
    assert shared_dir.sweep(str(tmp_path)) == []
    assert alive.is_dir()
    assert unmarked.is_dir()
