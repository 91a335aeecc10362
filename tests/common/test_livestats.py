"""Live figures per model version, counted in a real Redis."""

from __future__ import annotations

import redis

from common import livestats


def result(**values: str | None) -> dict:
    return {name: {"value": values.get(name), "confidence": 0.5 if values.get(name) else 0.1}
            for name in livestats.FIELDS}


def test_a_percentile_is_the_upper_bound_of_its_bucket() -> None:
    histogram = {livestats.latency_bucket(ms): 0 for ms in (10, 100)}
    histogram[livestats.latency_bucket(10)] = 95
    histogram[livestats.latency_bucket(100)] = 5
    assert livestats.percentile_ms(histogram, 0.95) == 10.0
    assert livestats.percentile_ms(histogram, 0.99) == 100.0
    assert livestats.percentile_ms({}, 0.95) is None
    # A bucket is at most 26 % wide: whatever the latency, its bound is within that of it.
    for ms in (3.0, 47.0, 812.0, 15_000.0):
        assert ms <= livestats.bucket_upper_ms(livestats.latency_bucket(ms)) < ms * 1.26


def test_finished_jobs_add_up_to_a_version_s_figures(redis_client: redis.Redis, key_prefix: str) -> None:
    pipe = redis_client.pipeline()
    for _ in range(3):
        livestats.record_finish(pipe, prefix=key_prefix, version="2", status="succeeded", latency_ms=80,
                                result=result(name="Red mug", category="kitchen_tableware", color="red"))
    livestats.record_finish(pipe, prefix=key_prefix, version="2", status="succeeded", shadow=True, latency_ms=900,
                            result=result(category="kitchen_tableware"))
    livestats.record_finish(pipe, prefix=key_prefix, version="2", status="failed", error_code="inference_failed")
    livestats.record_finish(pipe, prefix=key_prefix, version="1", status="succeeded", latency_ms=5, result=result())
    pipe.execute()
    figures = livestats.version_figures(redis_client, prefix=key_prefix, version="2", window_seconds=600)
    assert (figures.jobs, figures.shadow_jobs, figures.failed, figures.succeeded) == (5, 1, 1, 4)
    assert figures.error_rate(["inference_failed"]) == 0.2
    assert figures.error_rate(["deadline_exceeded"]) == 0.0
    assert figures.null_rate("brand") == 1.0 and figures.null_rate("category") == 0.0
    assert figures.null_rate("name") == 0.25
    # 3 at 80 ms, 1 at 900 ms: the median is in 80's bucket, the p95 in 900's.
    assert livestats.percentile_ms(figures.latency, 0.5) == 100.0 and figures.p95_ms() == 1000.0
    # Another version's jobs are its own; an empty window is empty.
    assert livestats.version_figures(redis_client, prefix=key_prefix, version="1", window_seconds=600).jobs == 1
    assert livestats.version_figures(redis_client, prefix=key_prefix, version="3", window_seconds=600).jobs == 0


def test_figures_round_trip_through_json(redis_client: redis.Redis, key_prefix: str) -> None:
    pipe = redis_client.pipeline()
    livestats.record_finish(pipe, prefix=key_prefix, version="1", status="succeeded", latency_ms=40,
                            result=result(color="red"))
    livestats.record_feedback(pipe, prefix=key_prefix, version="1", source="live",
                              outcomes={"color": "accepted", "brand": "filled"})
    pipe.execute()
    figures = livestats.version_figures(redis_client, prefix=key_prefix, version="1", window_seconds=600)
    again = livestats.Figures.from_json(figures.to_json())
    assert again == figures
    assert again.accuracy("color") == 1.0 and again.accuracy("brand") == 0.0 and again.accuracy("name") is None


def test_a_comparison_tells_same_different_and_one_sided_answers() -> None:
    active = result(name="Red mug", category="kitchen_tableware", color="red")
    candidate = result(name="red MUG ", category="home", brand="Nordvik")
    outcomes = livestats.compare_results(active, candidate)
    assert {name: outcome for name, (outcome, _) in outcomes.items()} == {
        "name": "same", "category": "differ", "brand": "only_candidate", "color": "only_active"}
    assert outcomes["brand"][1] == 0.5 - 0.1


def test_feedback_outcomes_per_field() -> None:
    suggested = result(name="Red mug", category="kitchen_tableware")
    outcomes = livestats.feedback_outcomes(
        suggested, {"name": "Red mug", "category": "home", "brand": "Nordvik", "color": ""})
    assert outcomes == {"name": "accepted", "category": "changed", "brand": "filled", "color": "blank"}
    assert livestats.feedback_outcomes(suggested, {"category": None}) == {"category": "changed"}


def test_comparisons_and_feedback_are_read_per_window(redis_client: redis.Redis, key_prefix: str) -> None:
    pipe = redis_client.pipeline()
    old = 1_000_000.0
    livestats.record_comparison(pipe, prefix=key_prefix, candidate="2", active="1", now=old,
                                outcomes={"color": ("differ", 0.0)}, active_ms=10, candidate_ms=10)
    for outcome in ("same", "same", "both_null", "differ"):
        livestats.record_comparison(pipe, prefix=key_prefix, candidate="2", active="1",
                                    outcomes={"color": (outcome, 0.1)}, active_ms=20, candidate_ms=30)
    livestats.record_comparison(pipe, prefix=key_prefix, candidate="2", active="1", outcomes=None,
                                active_ms=20, candidate_ms=None)
    pipe.execute()
    comparison = livestats.shadow_comparison(redis_client, prefix=key_prefix, candidate="2", active="1",
                                             window_seconds=3600)
    assert (comparison.n, comparison.failed_candidate, comparison.compared("color")) == (5, 1, 4)
    assert comparison.agreement("color") == 0.75
    assert abs(comparison.mean_shift("color") - 0.1) < 1e-9  # type: ignore[operator]
    assert comparison.agreement("brand") is None
