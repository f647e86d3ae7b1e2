"""Reading poolwatch's metrics back in tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0.0 when the series does not exist."""
    sample = registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of every sample called ``name`` whose labels include ``labels``."""
    result = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                result += sample.value
    return result


def pool_gauges(registry: CollectorRegistry, pool: str) -> tuple[float, float, float]:
    """(used, idle, pending) of ``pool``."""
    return (
        value(registry, "db_client_connection_count", pool=pool, state="used"),
        value(registry, "db_client_connection_count", pool=pool, state="idle"),
        value(registry, "db_client_connection_pending_requests", pool=pool),
    )


def parse_exposition(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of a Prometheus text exposition, keyed by (name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


_SUFFIXES = {
    "histogram": ("_bucket", "_count", "_sum"),
    "counter": ("_total",),
    "gauge": ("",),
    "unknown": ("",),
}


def _families() -> list[tuple[str, str]]:
    from prometheus_client import CollectorRegistry

    from poolwatch import PoolWatch

    watch = PoolWatch(registry=CollectorRegistry())
    try:
        return [(family.name, family.type) for family in watch.registry.collect()]
    finally:
        watch.uninstrument()


def exported_names() -> set[str]:
    """Every series name a PoolWatch can export (histogram and counter suffixes included)."""
    return {name + suffix for name, kind in _families() for suffix in _SUFFIXES[kind]}


def counter_names() -> set[str]:
    """The series that only ever grow: counters and histograms' buckets, counts and sums."""
    return {
        name + suffix
        for name, kind in _families()
        if kind in ("counter", "histogram")
        for suffix in _SUFFIXES[kind]
    }
