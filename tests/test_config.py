"""Settings: environment, arguments, and errors that name the setting, value and rule."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from poolwatch import ConfigError, PoolWatch, Settings


def test_environment_then_arguments() -> None:
    env = {
        "POOLWATCH_METRICS_PATH": "/prom",
        "POOLWATCH_EXPOSE_METRICS": "off",
        "POOLWATCH_EXCLUDE_PATHS": "/healthz, /ready",
    }
    settings = Settings.from_env(env)
    assert settings.metrics_path == "/prom"
    assert settings.expose_metrics is False
    assert settings.exclude_paths == ("/healthz", "/ready")
    assert Settings.from_env(env, metrics_path="/m").metrics_path == "/m"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POOLWATCH_ENABLED": "maybe"}, "POOLWATCH_ENABLED='maybe': must be one of"),
        ({"POOLWATCH_METRICS_PATH": "metrics"}, "metrics_path='metrics': must be a URL path"),
        ({"POOLWATCH_EXCLUDE_PATHS": "/ok,bad"}, "exclude_paths='bad': must be a URL path"),
    ],
)
def test_bad_environment_fails_fast(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Settings.from_env(env)
    assert isinstance(caught.value, ValueError)


def test_bad_arguments_name_setting_value_and_rule() -> None:
    with pytest.raises(ConfigError, match=r"metrics_path='/a b': must be a URL path"):
        PoolWatch(metrics_path="/a b")
    with pytest.raises(ConfigError, match=r"enabled='yes': must be True or False"):
        PoolWatch(enabled="yes")
    with pytest.raises(ConfigError, match=r"metrics_pth='/m': unknown setting; known: \["):
        PoolWatch(metrics_pth="/m")
    watch = PoolWatch()
    with pytest.raises(ConfigError, match=r"pool='': must be a non-empty string"):
        watch.instrument_sqlalchemy(object(), pool="")
    watch.uninstrument()


def test_two_watches_do_not_collide_and_global_registry_is_guarded() -> None:
    from prometheus_client import CollectorRegistry

    first, second = PoolWatch(), PoolWatch()
    assert first.registry is not second.registry
    shared = CollectorRegistry()
    PoolWatch(registry=shared).uninstrument()
    with pytest.raises(ConfigError, match=r"registry=.*already holds poolwatch's metrics"):
        PoolWatch(registry=shared)
    first.uninstrument()
    second.uninstrument()


def test_disabled_watch_instruments_nothing() -> None:
    from fastapi import FastAPI

    watch = PoolWatch(enabled=False)
    app = FastAPI()
    assert watch.instrument_app(app) is app
    assert app.user_middleware == []
    watch.instrument_tortoise()  # a no-op: a second watch may still instrument Tortoise
    other = PoolWatch()
    other.instrument_tortoise()
    other.uninstrument()
    watch.uninstrument()


def test_detection_settings_from_environment() -> None:
    settings = Settings.from_env(
        {
            "POOLWATCH_NPLUSONE_MODE": "raise",
            "POOLWATCH_NPLUSONE_THRESHOLD": "3",
            "POOLWATCH_SLOW_QUERY_THRESHOLD": "0.25",
            "POOLWATCH_ALLOW_ROUTES": "/admin/*, /export",
            "POOLWATCH_EXPOSE_FINDINGS": "no",
        }
    )
    assert settings.nplusone_mode == "raise"
    assert settings.nplusone_threshold == 3
    assert settings.slow_query_threshold == 0.25
    assert settings.allow_routes == ("/admin/*", "/export")
    assert settings.expose_findings is False
    assert Settings.from_env({}, allow_call_sites=["*/x.py:*"]).allow_call_sites == ("*/x.py:*",)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nplusone_mode": "loud"}, "nplusone_mode='loud': must be one of ('off', 'log', 'raise')"),
        ({"nplusone_threshold": 1}, "nplusone_threshold=1: must be at least 2"),
        ({"nplusone_threshold": True}, "nplusone_threshold=True: must be a number"),
        ({"duplicate_threshold": 2.5}, "duplicate_threshold=2.5: must be a number"),
        ({"slow_query_threshold": 0}, "slow_query_threshold=0: must be more than 0"),
        ({"nplusone_min_duration": float("nan")}, "nplusone_min_duration=nan: must be a finite"),
        ({"acquire_timeout": float("inf")}, "acquire_timeout=inf: must be a finite number"),
        ({"allow_routes": "/admin"}, "allow_routes='/admin': must be a tuple of non-empty"),
        ({"findings_path": "findings"}, "findings_path='findings': must be a URL path"),
    ],
)
def test_bad_detection_settings_fail_fast(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PoolWatch(**overrides)
    assert str(caught.value).startswith(message)


def test_bad_number_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"POOLWATCH_NPLUSONE_THRESHOLD='five': must be a number"):
        Settings.from_env({"POOLWATCH_NPLUSONE_THRESHOLD": "five"})


@pytest.mark.parametrize("raw", ["inf", "Infinity", "nan", "-inf"])
def test_an_endless_timeout_in_the_environment_is_refused_with_the_way_to_say_it(
    raw: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"POOLWATCH_ACQUIRE_TIMEOUT": raw})
    message = str(caught.value)
    assert message.startswith("acquire_timeout=")
    assert "must be a finite number (None or 'off' for no limit)" in message
    assert Settings.from_env({"POOLWATCH_ACQUIRE_TIMEOUT": "off"}).acquire_timeout is None


def test_a_misspelt_variable_is_named_once_with_the_closest_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {"POOLWATCH_ACQUIRE_TIMOUT": "5", "POOLWATCH_METRICS_PATH": "/m", "HOME": "/"}
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        Settings.from_env(environ)
        Settings.from_env(environ)  # once per process, not per PoolWatch
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "POOLWATCH_ACQUIRE_TIMOUT is not a poolwatch setting and is ignored; "
        "did you mean POOLWATCH_ACQUIRE_TIMEOUT?"
    ]


def test_findings_and_metrics_cannot_share_a_path() -> None:
    with pytest.raises(ConfigError, match=r"^findings_path='/metrics': must differ from"):
        PoolWatch(findings_path="/metrics")
    PoolWatch(findings_path="/metrics", expose_findings=False)  # only one is served


def test_disabled_registers_nothing_even_in_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    before = set(REGISTRY._names_to_collectors)
    watch = PoolWatch(enabled=False, use_global_registry=True)
    given = CollectorRegistry()
    PoolWatch(enabled=False, registry=given)
    assert set(REGISTRY._names_to_collectors) == before
    assert list(given.collect()) == []
    watch.uninstrument()
