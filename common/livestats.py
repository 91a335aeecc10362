"""Live figures per model version: what its jobs did, how the shadow version compared, what
sellers finally listed. Written by the workers and the API, read by the rollout judge and guard.

Counters live in Redis hashes by minute (Redis keeps them ``STATS_TTL_SECONDS``), so any window
is the sum of its minutes, and a counter costs one HINCRBY:

- ``<prefix>stats:<version>:<minute>``: ``jobs``, ``shadow_jobs``, ``failed``, ``err:<code>``,
  ``null:<field>`` (succeeded jobs that left the field blank), ``lat:<bucket>`` (end-to-end
  latency histogram of succeeded jobs), ``shadow_dropped`` (copies not queued: queue behind).
- ``<prefix>cmp:<candidate>:<active>:<minute>``: ``n``, ``<field>:<outcome>`` with outcome one
  of ``COMPARE_OUTCOMES``, ``<field>:shift`` (sum of candidate minus active confidence),
  ``lat_active:<bucket>``, ``lat_candidate:<bucket>``, ``failed_candidate``.
- ``<prefix>fb:<version>:<minute>``: ``<source>:<field>:<outcome>`` with source ``live`` (the
  job's own version) or ``shadow`` (the version that computed the job's shadow copy) and outcome
  one of ``FEEDBACK_OUTCOMES``.

Latency buckets are tenths of a decade (bucket b holds up to 10**(b/10) ms, 26 % apart), so a
p95 read from them is within 26 % of the true one, and the judge's thresholds are ratios.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

FIELDS = ("name", "category", "brand", "color")
COMPARE_OUTCOMES = ("same", "differ", "only_candidate", "only_active", "both_null")
FEEDBACK_OUTCOMES = ("accepted", "changed", "filled", "blank")
STATS_TTL_SECONDS = 8 * 86400
MAX_BUCKET = 60  # 10**6 ms


def minute(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // 60)


def stats_key(prefix: str, version: str, at: int) -> str:
    return f"{prefix}stats:{version}:{at}"


def compare_key(prefix: str, candidate: str, active: str, at: int) -> str:
    return f"{prefix}cmp:{candidate}:{active}:{at}"


def feedback_key(prefix: str, version: str, at: int) -> str:
    return f"{prefix}fb:{version}:{at}"


def latency_bucket(ms: float) -> int:
    if ms <= 1.0:
        return 0
    return min(MAX_BUCKET, math.ceil(10 * math.log10(ms)))


def bucket_upper_ms(bucket: int) -> float:
    return 10 ** (bucket / 10)


def percentile_ms(histogram: Mapping[int, int], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile; None for an empty histogram."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket_upper_ms(bucket)
    return bucket_upper_ms(max(histogram))


def field_value(result: Mapping[str, Any] | None, name: str) -> tuple[str | None, float | None]:
    """(value, confidence) of one field of a result as the workers store it."""
    entry = (result or {}).get(name) or {}
    value = entry.get("value")
    confidence = entry.get("confidence")
    return (str(value) if value not in (None, "") else None,
            float(confidence) if isinstance(confidence, (int, float)) else None)


def same(a: str | None, b: str | None) -> bool:
    return (a or "").strip().casefold() == (b or "").strip().casefold()


# --- writing --------------------------------------------------------------------------


def finish_counters(
    *, prefix: str, version: str, status: str, shadow: bool = False, error_code: str | None = None,
    latency_ms: float | None = None, result: Mapping[str, Any] | None = None, now: float | None = None,
) -> tuple[str, list[str]]:
    """The hash and the fields in it that one job's end adds one to. The job store's finish adds
    them in the same atomic step as the job's first terminal write (``JobStore.succeed``), so a
    job is counted once, whatever its deliveries."""
    names = ["jobs"]
    if shadow:
        names.append("shadow_jobs")
    if status == "failed":
        names += ["failed", f"err:{error_code or 'unknown'}"]
    else:
        names += [f"null:{name}" for name in FIELDS if field_value(result, name)[0] is None]
        if latency_ms is not None:
            names.append(f"lat:{latency_bucket(latency_ms)}")
    return stats_key(prefix, version, minute(now)), names


def record_finish(pipe: redis.client.Pipeline, **kwargs: Any) -> None:
    """Count one job's end through ``pipe`` (what ``finish_counters`` names; for tests and tools:
    the worker counts in its finish)."""
    key, names = finish_counters(**kwargs)
    for name in names:
        pipe.hincrby(key, name, 1)
    pipe.expire(key, STATS_TTL_SECONDS)


def record_shadow_dropped(client: redis.Redis, *, prefix: str, version: str) -> None:
    key = stats_key(prefix, version, minute())
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(key, "shadow_dropped", 1)
    pipe.expire(key, STATS_TTL_SECONDS)
    pipe.execute()


def compare_outcome(active: str | None, candidate: str | None) -> str:
    if active is None and candidate is None:
        return "both_null"
    if active is None:
        return "only_candidate"
    if candidate is None:
        return "only_active"
    return "same" if same(active, candidate) else "differ"


def compare_results(
    active: Mapping[str, Any] | None, candidate: Mapping[str, Any] | None,
) -> dict[str, tuple[str, float]]:
    """Per field: (outcome, candidate confidence minus active confidence)."""
    out = {}
    for name in FIELDS:
        a_value, a_conf = field_value(active, name)
        c_value, c_conf = field_value(candidate, name)
        shift = (c_conf - a_conf) if a_conf is not None and c_conf is not None else 0.0
        out[name] = (compare_outcome(a_value, c_value), shift)
    return out


def record_comparison(
    pipe: redis.client.Pipeline, *, prefix: str, candidate: str, active: str,
    outcomes: Mapping[str, tuple[str, float]] | None, active_ms: float | None, candidate_ms: float | None,
    now: float | None = None,
) -> None:
    """Count one shadow comparison; ``outcomes`` None: the candidate's copy failed."""
    key = compare_key(prefix, candidate, active, minute(now))
    pipe.hincrby(key, "n", 1)
    if outcomes is None:
        pipe.hincrby(key, "failed_candidate", 1)
    else:
        for name, (outcome, shift) in outcomes.items():
            pipe.hincrby(key, f"{name}:{outcome}", 1)
            pipe.hincrbyfloat(key, f"{name}:shift", shift)
    if active_ms is not None:
        pipe.hincrby(key, f"lat_active:{latency_bucket(active_ms)}", 1)
    if candidate_ms is not None:
        pipe.hincrby(key, f"lat_candidate:{latency_bucket(candidate_ms)}", 1)
    pipe.expire(key, STATS_TTL_SECONDS)


def feedback_outcome(suggested: str | None, final: str | None) -> str:
    if suggested is None:
        return "blank" if final is None else "filled"
    return "accepted" if same(suggested, final) else "changed"


def feedback_outcomes(result: Mapping[str, Any] | None, final: Mapping[str, str | None]) -> dict[str, str]:
    """Per field the seller gave: accepted as suggested, changed, filled where the model gave
    none, or left blank as the model did."""
    return {name: feedback_outcome(field_value(result, name)[0], _clean(final[name]))
            for name in FIELDS if name in final}


def record_feedback(
    pipe: redis.client.Pipeline, *, prefix: str, version: str, source: str, outcomes: Mapping[str, str],
    now: float | None = None,
) -> None:
    key = feedback_key(prefix, version, minute(now))
    for name, outcome in outcomes.items():
        pipe.hincrby(key, f"{source}:{name}:{outcome}", 1)
    pipe.expire(key, STATS_TTL_SECONDS)


def _clean(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


# --- reading --------------------------------------------------------------------------


def _sum_hashes(client: redis.Redis, keys: Iterable[str]) -> dict[str, float]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    total: dict[str, float] = {}
    for raw in pipe.execute():
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else k
            total[name] = total.get(name, 0.0) + float(v)
    return total


def _minutes(window_seconds: float, since: float | None, now: float | None) -> range:
    end = minute(now)
    start = minute((time.time() if now is None else now) - window_seconds)
    if since is not None:
        start = max(start, minute(since))
    return range(start, end + 1)


def _histogram(totals: Mapping[str, float], prefix: str) -> dict[int, int]:
    return {int(k[len(prefix):]): int(v) for k, v in totals.items() if k.startswith(prefix)}


@dataclass
class Figures:
    """What one version did in a window: the judge's inputs."""

    version: str
    jobs: int = 0
    shadow_jobs: int = 0
    shadow_dropped: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)
    latency: dict[int, int] = field(default_factory=dict)
    # feedback[field][outcome], over live and shadow feedback
    feedback: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return self.jobs - self.failed

    def error_rate(self, codes: Iterable[str]) -> float | None:
        if not self.jobs:
            return None
        return sum(self.errors.get(code, 0) for code in codes) / self.jobs

    def null_rate(self, name: str) -> float | None:
        return self.nulls.get(name, 0) / self.succeeded if self.succeeded else None

    def p95_ms(self) -> float | None:
        return percentile_ms(self.latency, 0.95)

    def feedback_count(self, name: str) -> int:
        return sum(self.feedback.get(name, {}).get(o, 0) for o in ("accepted", "changed", "filled"))

    def accuracy(self, name: str) -> float | None:
        """The share of the seller's final values that the model suggested (a value the model
        left blank and the seller filled counts as missed)."""
        n = self.feedback_count(name)
        return self.feedback.get(name, {}).get("accepted", 0) / n if n else None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "jobs": self.jobs, "shadow_jobs": self.shadow_jobs,
                "shadow_dropped": self.shadow_dropped, "failed": self.failed, "errors": self.errors,
                "nulls": self.nulls, "latency": {str(k): v for k, v in self.latency.items()},
                "feedback": self.feedback}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Figures:
        return cls(version=data["version"], jobs=data["jobs"], shadow_jobs=data.get("shadow_jobs", 0),
                   shadow_dropped=data.get("shadow_dropped", 0), failed=data["failed"],
                   errors=dict(data["errors"]), nulls=dict(data["nulls"]),
                   latency={int(k): v for k, v in data["latency"].items()},
                   feedback={k: dict(v) for k, v in data["feedback"].items()})


def version_figures(
    client: redis.Redis, *, prefix: str, version: str, window_seconds: float, since: float | None = None,
    now: float | None = None, feedback_sources: tuple[str, ...] = ("live", "shadow"),
) -> Figures:
    minutes = _minutes(window_seconds, since, now)
    totals = _sum_hashes(client, [stats_key(prefix, version, m) for m in minutes])
    fb = _sum_hashes(client, [feedback_key(prefix, version, m) for m in minutes])
    feedback: dict[str, dict[str, int]] = {}
    for key, value in fb.items():
        source, name, outcome = key.split(":", 2)
        if source in feedback_sources:
            counts = feedback.setdefault(name, {})
            counts[outcome] = counts.get(outcome, 0) + int(value)
    return Figures(
        version=version,
        jobs=int(totals.get("jobs", 0)),
        shadow_jobs=int(totals.get("shadow_jobs", 0)),
        shadow_dropped=int(totals.get("shadow_dropped", 0)),
        failed=int(totals.get("failed", 0)),
        errors={k[4:]: int(v) for k, v in totals.items() if k.startswith("err:")},
        nulls={k[5:]: int(v) for k, v in totals.items() if k.startswith("null:")},
        latency=_histogram(totals, "lat:"),
        feedback=feedback,
    )


def feedback_by_source(
    client: redis.Redis, *, prefix: str, version: str, window_seconds: float, now: float | None = None,
) -> dict[str, dict[str, dict[str, int]]]:
    """feedback[source][field][outcome] for one version over a window."""
    minutes = _minutes(window_seconds, None, now)
    out: dict[str, dict[str, dict[str, int]]] = {}
    for key, value in _sum_hashes(client, [feedback_key(prefix, version, m) for m in minutes]).items():
        source, name, outcome = key.split(":", 2)
        out.setdefault(source, {}).setdefault(name, {})[outcome] = int(value)
    return out


@dataclass
class Comparison:
    """How a shadow (candidate) version's answers compared with the active version's."""

    candidate: str
    active: str
    n: int = 0
    failed_candidate: int = 0
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    shift: dict[str, float] = field(default_factory=dict)
    latency_active: dict[int, int] = field(default_factory=dict)
    latency_candidate: dict[int, int] = field(default_factory=dict)

    def compared(self, name: str) -> int:
        return sum(self.outcomes.get(name, {}).values())

    def agreement(self, name: str) -> float | None:
        """Same value, or both blank, over the comparisons of this field."""
        n = self.compared(name)
        counts = self.outcomes.get(name, {})
        return (counts.get("same", 0) + counts.get("both_null", 0)) / n if n else None

    def mean_shift(self, name: str) -> float | None:
        n = self.compared(name)
        return self.shift.get(name, 0.0) / n if n else None

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate, "active": self.active, "compared": self.n,
            "failed_candidate": self.failed_candidate,
            "fields": {name: {**{o: self.outcomes.get(name, {}).get(o, 0) for o in COMPARE_OUTCOMES},
                              "agreement": self.agreement(name), "confidence_shift": self.mean_shift(name)}
                       for name in FIELDS},
            "latency_p50_ms": {"active": percentile_ms(self.latency_active, 0.5),
                               "candidate": percentile_ms(self.latency_candidate, 0.5)},
            "latency_p95_ms": {"active": percentile_ms(self.latency_active, 0.95),
                               "candidate": percentile_ms(self.latency_candidate, 0.95)},
        }


def shadow_comparison(
    client: redis.Redis, *, prefix: str, candidate: str, active: str, window_seconds: float,
    now: float | None = None,
) -> Comparison:
    minutes = _minutes(window_seconds, None, now)
    totals = _sum_hashes(client, [compare_key(prefix, candidate, active, m) for m in minutes])
    outcomes: dict[str, dict[str, int]] = {}
    shift: dict[str, float] = {}
    for key, value in totals.items():
        name, _, what = key.partition(":")
        if name not in FIELDS:
            continue
        if what == "shift":
            shift[name] = value
        else:
            outcomes.setdefault(name, {})[what] = int(value)
    return Comparison(candidate, active, n=int(totals.get("n", 0)),
                      failed_candidate=int(totals.get("failed_candidate", 0)), outcomes=outcomes, shift=shift,
                      latency_active=_histogram(totals, "lat_active:"),
                      latency_candidate=_histogram(totals, "lat_candidate:"))
