"""Percentiles and rates, computed the same way for every measurement of a run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``fraction`` of all at or below."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(latencies: Sequence[float], seconds: float) -> dict[str, Any]:
    """Count, rate per second and p50/p99/p99.9/max in milliseconds of latencies in seconds."""
    ordered = sorted(latencies)

    def ms(value: float) -> float | None:
        return None if math.isnan(value) else round(value * 1000, 3)

    return {
        "count": len(ordered),
        "seconds": round(seconds, 3),
        "rate": round(len(ordered) / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "p999_ms": ms(percentile(ordered, 0.999)),
        "max_ms": ms(ordered[-1]) if ordered else None,
    }
