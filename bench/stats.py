"""Percentiles and summaries, in plain Python (the load generator and the tests use them)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100), interpolating linearly between closest ranks.

    The same definition as numpy.percentile's default ("linear", Hyndman & Fan type 7): the value at
    rank q/100 * (n - 1) of the sorted sample. NaN for an empty sample.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(latencies_ms),
        "p50": percentile(latencies_ms, 50),
        "p95": percentile(latencies_ms, 95),
        "p99": percentile(latencies_ms, 99),
        "mean": sum(latencies_ms) / len(latencies_ms) if latencies_ms else math.nan,
        "max": max(latencies_ms) if latencies_ms else math.nan,
    }


def median(values: Iterable[float]) -> float:
    return percentile(list(values), 50)


def spread(values: Iterable[float]) -> dict[str, float]:
    """min / median / max of repeated measurements of one figure (the noise stays visible)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {"min": math.nan, "median": math.nan, "max": math.nan}
    return {"min": min(values), "median": median(values), "max": max(values)}
