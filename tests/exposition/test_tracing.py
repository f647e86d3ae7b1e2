"""The trace id behind exemplars: OpenTelemetry's current span first, else traceparent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from poolwatch.exposition.tracing import trace_id_of

HEADER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HEADERS = {
    "headers": [
        (b"host", b"x"),
        (b"traceparent", f"00-{HEADER_TRACE}-00f067aa0ba902b7-01".encode()),
    ]
}


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[TracerProvider]:
    sdk = TracerProvider()
    # OpenTelemetry lets a process set its provider once; the test sets it for itself.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", sdk)
    yield sdk
    sdk.shutdown()


def test_without_a_tracer_provider_the_header_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    assert trace_id_of(HEADERS) == HEADER_TRACE
    assert trace_id_of({"headers": []}) is None


def test_the_current_span_wins_over_the_header(provider: TracerProvider) -> None:
    with provider.get_tracer("test").start_as_current_span("request") as span:
        expected = format(span.get_span_context().trace_id, "032x")
        assert trace_id_of(HEADERS) == expected
        assert trace_id_of({"headers": []}) == expected
    assert expected != HEADER_TRACE


def test_outside_any_span_the_header_is_used(provider: TracerProvider) -> None:
    assert trace_id_of(HEADERS) == HEADER_TRACE


@pytest.mark.parametrize(
    "value",
    [
        b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01",  # all-zero trace id: invalid
        b"00-xyz-00f067aa0ba902b7-01",
        b"",
    ],
)
def test_invalid_traceparent_gives_none(value: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    assert trace_id_of({"headers": [(b"traceparent", value)]}) is None
