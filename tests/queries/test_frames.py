"""Whose code a frame runs, and how its file is shown in a call path."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from poolwatch.queries import frames
from poolwatch.queries.frames import display_path, is_library_module


def test_library_modules() -> None:
    assert is_library_module("sqlalchemy.orm.strategies")
    assert is_library_module("asyncio.tasks")
    assert is_library_module("poolwatch.queries.recorder")
    assert not is_library_module("poolwatch.demo.app")  # the demo is an application
    assert not is_library_module("myapp.views")
    assert is_library_module("myapp.db.repo", ("myapp.db",))
    assert not is_library_module("myapp.dbx", ("myapp.db",))


def test_paths_are_shown_relative_to_the_working_directory() -> None:
    assert display_path(__file__) == "tests/queries/test_frames.py"
    assert display_path("<string>") == "<string>"


def test_paths_are_shown_from_the_project_root_before_any_import_root(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A src layout: the project's root is the working directory, and its src/ is on
    # sys.path too. The finding names src/app/routes.py, as the project's tree does (and
    # as pytest's report does), not app/routes.py. A file outside the project is shown
    # from the sys.path entry it was imported from.
    project, elsewhere = tmp_path / "project", tmp_path / "lib"
    (project / "src" / "app").mkdir(parents=True)
    (elsewhere / "pkg").mkdir(parents=True)
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", [str(project / "src"), str(elsewhere), *sys.path])
    monkeypatch.setattr(frames, "_display_cache", {})
    inside = str(project / "src" / "app" / "routes.py")
    assert display_path(inside) == os.path.join("src", "app", "routes.py")
    outside = str(elsewhere / "pkg" / "mod.py")
    assert display_path(outside) == os.path.join("pkg", "mod.py")
