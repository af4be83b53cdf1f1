"""Push latencies counted in the process and added to their histogram in one go end in the
same buckets, count and sum as the same values observed one by one."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from app.observability import LATENCY_BUCKETS, PendingObservations

BOUNDS = (0.0005, *LATENCY_BUCKETS)
# The bounds themselves (an observation equal to a bound belongs to that bucket), values
# between and beyond them, and zero.
AMOUNTS = st.one_of(
    st.sampled_from((0.0, *BOUNDS)),
    st.floats(min_value=0.0, max_value=60.0, allow_nan=False),
)


def _histograms() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    return (
        one_by_one,
        Histogram("h", "h", buckets=BOUNDS, registry=one_by_one),
        batched,
        Histogram("h", "h", buckets=BOUNDS, registry=batched),
    )


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@given(st.lists(AMOUNTS, max_size=50))
def test_a_flush_adds_what_observing_one_by_one_would(amounts: list[float]) -> None:
    one_by_one_registry, one_by_one, batched_registry, batched = _histograms()
    pending = PendingObservations(batched, every=3600)
    for amount in amounts:
        one_by_one.observe(amount)
        pending.observe(amount)
    pending.flush()
    expected, got = _samples(one_by_one_registry), _samples(batched_registry)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_observations_are_added_once_they_have_waited_long_enough() -> None:
    _, _, registry, histogram = _histograms()
    pending = PendingObservations(histogram, every=0.05)
    pending.observe(0.002)
    assert _samples(registry)[("h_count", "")] == 0
    time.sleep(0.06)
    pending.observe(0.003)
    assert _samples(registry)[("h_count", "")] == 2
    pending.flush()
    pending.flush()
    assert _samples(registry)[("h_count", "")] == 2
