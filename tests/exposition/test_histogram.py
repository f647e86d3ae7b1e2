"""poolwatch's histogram renders exactly what prometheus_client's would, under threads too."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from poolwatch.exposition.histogram import FastHistogram, histogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Values on, just under and just over each bound, zero, and past the last bound.
VALUES = (0.0, 0.0009, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 1.0, 1.5, 100.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_same_samples_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("x_seconds", "doc", ["pool", "route"], BUCKETS, ours)
    reference = Histogram("x_seconds", "doc", ["pool", "route"], registry=theirs, buckets=BUCKETS)
    for index, value in enumerate(VALUES):
        route = f"/r{index % 3}"
        fast.labels("p", route).observe(value)
        reference.labels("p", route).observe(value)

    assert _samples(ours) == _samples(theirs)
    assert _samples(ours)[("x_seconds_count", (("pool", "p"), ("route", "/r0")))] == 4


def test_text_exposition_matches_line_for_line() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("y", "doc", ["a"], BUCKETS, ours)
    reference = Histogram("y", "doc", ["a"], registry=theirs, buckets=BUCKETS)
    for value in VALUES:
        fast.labels("1").observe(value)
        reference.labels("1").observe(value)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if "_created" not in line]

    assert lines(ours) == lines(theirs)


def test_exemplar_kept_per_bucket_and_rendered_in_openmetrics() -> None:
    registry = CollectorRegistry()
    fast = FastHistogram("z_seconds", "doc", ["a"], BUCKETS, registry)
    child = fast.labels("1")
    child.observe(0.005, "0af7651916cd43dd8448eb211c80319c")
    child.observe(0.006)  # no trace id: the bucket keeps the last exemplar it had
    child.observe(0.5, "1bf7651916cd43dd8448eb211c80319d")

    text = generate_openmetrics(registry).decode()
    bucket = 'z_seconds_bucket{a="1",le="0.01"} 2.0'
    assert f'{bucket} # {{trace_id="0af7651916cd43dd8448eb211c80319c"}} 0.005' in text
    assert 'le="1.0"} 3.0 # {trace_id="1bf7651916cd43dd8448eb211c80319d"} 0.5' in text
    assert text.count("trace_id=") == 2


def test_concurrent_observations_are_all_counted() -> None:
    registry = CollectorRegistry()
    child = FastHistogram("c", "doc", ["a"], BUCKETS, registry).labels("1")
    threads, per_thread = 8, 20_000

    def work() -> None:
        for _ in range(per_thread):
            child.observe(0.05)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    samples = _samples(registry)
    assert samples[("c_count", (("a", "1"),))] == threads * per_thread
    assert samples[("c_bucket", (("a", "1"), ("le", "0.1")))] == threads * per_thread
    assert samples[("c_sum", (("a", "1"),))] == pytest.approx(0.05 * threads * per_thread)


def test_registry_refuses_a_second_family_of_the_same_name() -> None:
    registry = CollectorRegistry()
    FastHistogram("dup", "doc", [], BUCKETS, registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        FastHistogram("dup", "doc", [], BUCKETS, registry)


@pytest.mark.parametrize("buckets", [(), (0.1, 0.01), (0.1, 0.1)])
def test_bad_buckets_are_refused(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="buckets"):
        FastHistogram("b", "doc", [], buckets)


def test_wrong_number_of_label_values_is_refused() -> None:
    with pytest.raises(ValueError, match="expected labels"):
        FastHistogram("l", "doc", ["a", "b"], BUCKETS).labels("only-one")


def test_multiprocess_hands_out_prometheus_client_children() -> None:
    registry = CollectorRegistry()
    family = histogram("m", "doc", ["a"], BUCKETS, registry, multiprocess=True)
    family.labels("1").observe(0.5, "0af7651916cd43dd8448eb211c80319c")
    assert not isinstance(family, FastHistogram)
    assert registry.get_sample_value("m_count", {"a": "1"}) == 1
    assert registry.get_sample_value("m_bucket", {"a": "1", "le": "1.0"}) == 1
