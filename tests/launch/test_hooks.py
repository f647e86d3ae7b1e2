"""The wrappers the bootstrap's hooks put on the libraries' functions: each calls the
original unchanged, tells the automatic instrumentation, is put on once, and a fault of
poolwatch's never reaches the app. Run here on stand-ins of the libraries' modules."""

from __future__ import annotations

import logging
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from poolwatch.launch import hooks


class Recorder:
    """Stands in for the process's Automatic."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail

    def _record(self, what: str, thing: Any) -> None:
        self.calls.append((what, thing))
        if self.fail:
            raise RuntimeError("poolwatch's own fault")

    def app_building(self, app: Any) -> None:
        self._record("app", app)

    def engine_created(self, engine: Any) -> None:
        self._record("engine", engine)

    def tortoise_initialising(self) -> None:
        self._record("tortoise", None)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    made = Recorder()
    monkeypatch.setattr(hooks, "_made", [made])
    return made


def _module(name: str, **attributes: Any) -> ModuleType:
    module = ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def test_an_app_is_reported_as_it_builds_its_stack(recorder: Recorder) -> None:
    class Starlette:
        def build_middleware_stack(self) -> str:
            return "stack"

    class FastAPI(Starlette):
        def build_middleware_stack(self) -> str:  # FastAPI's own copy
            return "fastapi stack"

    hooks.starlette_imported(_module("starlette.applications", Starlette=Starlette))
    hooks.fastapi_imported(_module("fastapi.applications", FastAPI=FastAPI))
    hooks.fastapi_imported(_module("fastapi.applications", FastAPI=FastAPI))  # once
    app, plain = FastAPI(), Starlette()
    assert (app.build_middleware_stack(), plain.build_middleware_stack()) == (
        "fastapi stack",
        "stack",
    )
    assert recorder.calls == [("app", app), ("app", plain)]
    assert FastAPI.build_middleware_stack.__name__ == "build_middleware_stack"


def test_create_engine_is_wrapped_under_every_name_it_has(recorder: Recorder) -> None:
    def create_engine(url: str, **kwargs: Any) -> Any:
        return SimpleNamespace(url=url, kwargs=kwargs)

    create = _module("sqlalchemy.engine.create", create_engine=create_engine)
    engine_package = _module("sqlalchemy.engine", create_engine=create_engine)
    package = _module("sqlalchemy", create_engine=create_engine)
    hooks._replace([create, engine_package, package], "create_engine")
    hooks._replace([create, engine_package, package], "create_engine")  # once
    wrapper = package.create_engine
    assert wrapper is engine_package.create_engine is create.create_engine
    assert wrapper.__wrapped__ is create_engine
    engine = wrapper("sqlite://", echo=True)
    assert engine.kwargs == {"echo": True}
    assert recorder.calls == [("engine", engine)]


def test_a_fault_of_poolwatchs_never_reaches_the_app(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hooks, "_made", [Recorder(fail=True)])
    module = _module("sqlalchemy.engine.create", create_engine=lambda url: ("engine", url))
    hooks._replace([module], "create_engine")
    with caplog.at_level(logging.ERROR, logger="poolwatch"):
        assert module.create_engine("sqlite://") == ("engine", "sqlite://")
    assert "poolwatch run: instrumenting an engine failed; the app goes on without it" in (
        caplog.text
    )


async def test_tortoise_is_reported_before_it_initialises(recorder: Recorder) -> None:
    class Tortoise:
        @classmethod
        async def init(cls, db_url: str) -> tuple[type, str]:
            return cls, db_url

    class TortoiseContext:
        async def init(self, db_url: str) -> tuple[object, str]:
            return self, db_url

    hooks.tortoise_imported(_module("tortoise", Tortoise=Tortoise, TortoiseContext=TortoiseContext))
    assert await Tortoise.init(db_url="sqlite://:memory:") == (Tortoise, "sqlite://:memory:")
    context = TortoiseContext()
    assert await context.init("sqlite://:memory:") == (context, "sqlite://:memory:")
    assert recorder.calls == [("tortoise", None), ("tortoise", None)]


def test_gunicorn_workers_the_launcher_did_not_see_are_named(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Arbiter:
        num_workers = 4

        def start(self) -> str:
            return "started"

    class Multiprocess:
        processes_num = 2

        def run(self) -> str:
            return "supervising"

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    hooks.gunicorn_imported(_module("gunicorn.arbiter", Arbiter=Arbiter))
    hooks.uvicorn_supervisor_imported(
        _module("uvicorn.supervisors.multiprocess", Multiprocess=Multiprocess)
    )
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        assert Arbiter().start() == "started"
        assert Multiprocess().run() == "supervising"
    assert "gunicorn starts 4 workers, without multiprocess mode" in caplog.text
    assert "uvicorn starts 2 workers, without multiprocess mode" in caplog.text
    caplog.clear()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/run/metrics")
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        Arbiter().start()
    assert caplog.text == ""
