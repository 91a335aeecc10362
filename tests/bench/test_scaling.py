"""The scaling simulation: the HPA's arithmetic on hand-computed cases, KEDA's 0 <-> N steps and
fallback, the datadog scaler's reading of the completion rate, and what the workers' ScaledObject
(k8s/workers/base/scaling.yaml, as a rollout leaves it) does with a sudden 3x spike and a day's
load. Deterministic; nothing is timed."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.scaling import (
    CURVES,
    DATADOG_LAG_S,
    SYNC_PERIOD_S,
    WORKER_RATE,
    Completions,
    Event,
    Fallback,
    Hpa,
    Keda,
    Policy,
    RateTrigger,
    Rules,
    Run,
    Scaling,
    Trigger,
    datadog_reading,
    load_scaled_object,
    main,
    metric_replicas,
    pipeline_limits,
    repository_scaled_object,
    scale_down_limit,
    scale_up_limit,
    scaling_from,
    simulate,
    with_fallback,
)

LIST = Trigger("recognize.1", target=20, activation=1)
UP = Rules(0, "Max", (Policy("Pods", 4, 60), Policy("Percent", 100, 60)))
DOWN = Rules(1800, "Max", (Policy("Pods", 1, 600),))
# A list-only ScaledObject for the hand-computed cases (the design before the load trigger).
LIST_ONLY: dict[str, Any] = {
    "apiVersion": "keda.sh/v1alpha1",
    "kind": "ScaledObject",
    "metadata": {"name": "recognition-worker"},
    "spec": {
        "scaleTargetRef": {"name": "recognition-worker"},
        "minReplicaCount": 1,
        "maxReplicaCount": 8,
        "pollingInterval": 15,
        "cooldownPeriod": 1800,
        "triggers": [{
            "type": "redis-sentinel",
            "metadata": {"listName": "recognize.1", "listLength": "20", "activationListLength": "1"},
        }],
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Pods", "value": 4, "periodSeconds": 60},
                             {"type": "Percent", "value": 100, "periodSeconds": 60}],
                "selectPolicy": "Max",
            },
            "scaleDown": {
                "stabilizationWindowSeconds": 1800,
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 600}],
            },
        }}},
    },
}
LOAD_QUERY = "sum:recognition.job.completed{model_version:1}.as_rate().rollup(sum, 60)"


def scaled_object(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(LIST_ONLY)
    doc["spec"].update(spec)
    return doc


def workers() -> Scaling:
    """The workers' ScaledObject, as a rollout leaves it (the simulation's default)."""
    return scaling_from(repository_scaled_object())


def load_trigger(s: Scaling) -> RateTrigger:
    (found,) = [t for t in s.triggers if isinstance(t, RateTrigger)]
    return found


# --- the metric and the tolerance ---------------------------------------------------------


def test_a_list_within_ten_percent_of_the_target_per_pod_changes_nothing() -> None:
    assert metric_replicas(LIST, 21, spec=1, status=1, ready=1) == 1  # ratio 1.05
    assert metric_replicas(LIST, 75, spec=4, status=4, ready=4) == 4  # ratio 0.94
    assert metric_replicas(LIST, 23, spec=1, status=1, ready=1) == 2  # ratio 1.15: ceil(23 / 20)
    assert metric_replicas(LIST, 59, spec=4, status=4, ready=4) == 3  # ratio 0.74: ceil(59 / 20)


def test_an_average_value_target_counts_pods_that_are_still_loading() -> None:
    # 4 pods exist, 1 is ready: 80 messages are 20 per pod, on target, so no more pods are asked for
    assert metric_replicas(LIST, 80, spec=4, status=4, ready=1) == 4
    assert metric_replicas(LIST, 0, spec=4, status=4, ready=4) == 0  # min/max come later


def test_a_value_target_scales_the_ready_pods_by_the_ratio() -> None:
    value = Trigger("recognize.1", target=20, activation=1, metric_type="Value")
    assert metric_replicas(value, 100, spec=4, status=4, ready=2) == 10  # ceil(5 x 2 ready)
    assert metric_replicas(value, 21, spec=4, status=4, ready=2) == 4  # within tolerance


# --- stabilization ------------------------------------------------------------------------


def test_the_down_window_holds_the_highest_recent_recommendation() -> None:
    hpa = Hpa(1, 8, UP, Rules(300, "Max", DOWN.policies), recommendations=[(0, 5)])
    assert hpa.stabilize(100, current=5, desired=2) == 5
    assert hpa.stabilize(299, current=5, desired=2) == 5
    # at 300 the 5 recorded at 0 is exactly 300 s old: outside the window (strictly after the cutoff)
    assert hpa.stabilize(300, current=5, desired=2) == 2


def test_the_up_window_holds_the_lowest_recent_recommendation() -> None:
    hpa = Hpa(1, 8, Rules(60, "Max", UP.policies), DOWN, recommendations=[(0, 2)])
    assert hpa.stabilize(30, current=2, desired=6) == 2
    assert hpa.stabilize(61, current=2, desired=6) == 6


def test_a_recommendation_between_the_windows_keeps_the_current_count() -> None:
    hpa = Hpa(1, 8, Rules(60, "Max", UP.policies), Rules(60, "Max", DOWN.policies),
              recommendations=[(0, 3), (15, 7)])
    # the windows hold 3 and 7: any count from 3 to 7 stays as it is
    assert hpa.stabilize(30, current=5, desired=5) == 5
    assert hpa.stabilize(45, current=4, desired=9) == 4
    assert hpa.stabilize(50, current=2, desired=4) == 3  # below them all: up to the lowest, 3


# --- policies -----------------------------------------------------------------------------


def test_scale_up_policies_take_the_larger_step_and_count_the_period() -> None:
    assert scale_up_limit(2, [], [], UP, now=100) == 6  # max(2 + 4, 2 x 2)
    assert scale_up_limit(5, [], [], UP, now=100) == 10  # max(5 + 4, 5 x 2)
    # 4 added 30 s ago: the period started at 2 replicas, so 6 is still the limit
    assert scale_up_limit(6, [Event(70, 4)], [], UP, now=100) == 6
    # exactly 60 s later the event has left the period
    assert scale_up_limit(6, [Event(40, 4)], [], UP, now=100) == 12
    # a scale-down in the period raises the period's starting count
    assert scale_up_limit(4, [], [Event(90, 1)], UP, now=100) == 10  # start 5: max(9, 10)


def test_select_policy_min_and_disabled() -> None:
    assert scale_up_limit(2, [], [], Rules(0, "Min", UP.policies), now=0) == 4  # min(6, 4)
    assert scale_up_limit(2, [], [], Rules(0, "Disabled", UP.policies), now=0) == 2
    percent = Rules(0, "Max", (Policy("Percent", 50, 60), Policy("Pods", 1, 60)))
    assert scale_down_limit(5, [], [], percent, now=0) == 2  # min(int(5 x 0.5), 5 - 1)
    assert scale_down_limit(5, [], [], Rules(0, "Min", percent.policies), now=0) == 4
    assert scale_down_limit(5, [], [], Rules(0, "Disabled", percent.policies), now=0) == 5


def test_one_pod_per_ten_minutes_down() -> None:
    assert scale_down_limit(8, [], [], DOWN, now=1000) == 7
    assert scale_down_limit(7, [], [Event(700, 1)], DOWN, now=1000) == 7  # period started at 8
    assert scale_down_limit(7, [], [Event(400, 1)], DOWN, now=1000) == 6  # 600 s ago: outside


def test_a_sync_applies_window_policies_and_bounds_in_that_order() -> None:
    hpa = Hpa(1, 8, UP, DOWN)
    assert hpa.reconcile(0, current=2, proposal=2) == 2  # records 2 as its first recommendation
    assert hpa.reconcile(15, current=2, proposal=40) == 6  # +4 pods in the first minute
    assert hpa.reconcile(30, current=6, proposal=40) == 6  # the minute is not over
    assert hpa.reconcile(75, current=6, proposal=40) == 8  # a new minute; max 8
    assert hpa.reconcile(90, current=8, proposal=0) == 8  # 40 was recommended 75 s ago
    assert hpa.reconcile(15 + 1800, current=8, proposal=0) == 8  # ... and 40 at 75 s
    assert hpa.reconcile(75 + 1800, current=8, proposal=0) == 7  # window over: one pod
    assert hpa.reconcile(75 + 1800 + 585, current=7, proposal=0) == 7
    assert hpa.reconcile(75 + 1800 + 600, current=7, proposal=0) == 6


def test_the_hpa_restores_its_bounds_and_leaves_zero_to_keda() -> None:
    hpa = Hpa(2, 8, UP, DOWN)
    assert hpa.reconcile(0, current=1, proposal=0) == 2
    assert hpa.reconcile(15, current=9, proposal=9) == 8
    assert hpa.reconcile(30, current=0, proposal=5) == 0


def test_without_behavior_the_legacy_rules_apply() -> None:
    hpa = Hpa(1, 20, None, None)
    assert hpa.reconcile(0, current=1, proposal=10) == 4  # at most max(2 x 1, 4)
    assert hpa.reconcile(15, current=4, proposal=10) == 8
    assert hpa.reconcile(30, current=8, proposal=1) == 10  # the last 300 s asked for 10
    assert hpa.reconcile(316, current=10, proposal=1) == 1  # no scale-down rate limit


# --- the ScaledObject and KEDA ------------------------------------------------------------


def test_the_list_only_scaled_object_reads_as_designed() -> None:
    s = scaling_from(LIST_ONLY)
    assert (s.min_replicas, s.max_replicas, s.polling_s, s.cooldown_s) == (1, 8, 15, 1800)
    assert s.triggers == (Trigger("recognize.1", 20.0, 1.0),)
    assert s.up == UP and s.down == DOWN and s.fallback is None


def test_missing_fields_take_keda_and_hpa_defaults() -> None:
    doc = scaled_object(minReplicaCount=None, advanced={"horizontalPodAutoscalerConfig": {"behavior": {
        "scaleDown": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}}}})
    del doc["spec"]["minReplicaCount"], doc["spec"]["pollingInterval"]
    s = scaling_from(doc)
    assert (s.min_replicas, s.hpa_min, s.polling_s) == (0, 1, 30)
    assert s.up == Rules(0, "Max", (Policy("Percent", 100, 15), Policy("Pods", 4, 15)))
    assert s.down == Rules(300, "Max", (Policy("Pods", 2, 60),))
    assert scaling_from(scaled_object(advanced={})).up is None


def test_triggers_other_than_redis_lists_and_the_completion_rate_are_named_and_skipped() -> None:
    doc = scaled_object()
    doc["spec"]["triggers"] += [
        {"type": "prometheus", "name": "wait", "metadata": {"query": "x"}},
        {"type": "datadog", "name": "cpu",
         "metadata": {"query": "avg:system.cpu.user{*}", "queryValue": "70"}}]
    assert scaling_from(doc).skipped == ("prometheus wait", "datadog cpu")
    with pytest.raises(ValueError, match="no trigger to simulate"):
        scaling_from(scaled_object(triggers=[{"type": "cpu", "metadata": {"value": "50"}}]))


def test_a_datadog_trigger_on_the_completion_rate_reads_with_the_scaler_s_defaults() -> None:
    doc = scaled_object(triggers=[{"type": "datadog", "metadata": {
        "query": "sum:recognition.job.completed{model_version:1}.as_count()", "queryValue": "7.5"}}])
    (t,) = scaling_from(doc).triggers
    assert t == RateTrigger("sum:recognition.job.completed{model_version:1}.as_count()", target=7.5,
                            activation=0.0, interval_s=10, per_second=False, age_s=90, window_offset_s=0,
                            point_offset=0, unavailable=None)


def test_the_workers_scaled_object_is_the_repository_s_with_the_pipeline_s_limits() -> None:
    s = workers()
    assert pipeline_limits() == {"minReplicaCount": 2, "maxReplicaCount": 8}
    assert (s.min_replicas, s.max_replicas, s.polling_s, s.cooldown_s) == (2, 8, 15, 1800)
    assert s.triggers == (
        Trigger("recognize.1", 50.0, 0.0),
        RateTrigger(LOAD_QUERY, target=17.0, activation=0.0, interval_s=60, per_second=True, age_s=300,
                    window_offset_s=0, point_offset=1, unavailable=0.0, cached=True))
    assert s.up == Rules(0, "Max", UP.policies) and s.down == Rules(1800, "Min", DOWN.policies)
    assert s.fallback is None and s.skipped == ()


def test_the_load_target_is_the_simulated_per_worker_rate_at_seventy_percent() -> None:
    assert load_trigger(workers()).target == int(WORKER_RATE * 0.7)


def test_the_default_agrees_with_the_scaled_object_kubectl_renders_for_each_color() -> None:
    from tests.deploy.kube import K8S, one, rendered  # skips without kubectl

    default = repository_scaled_object("3")
    for color in ("blue", "green"):
        scaled = one(rendered(K8S / "workers" / color, modelVersion="3"), "ScaledObject")
        # The color's suffix on the names apart, the same object.
        triggers = [{**t, "authenticationRef": {"name": t["authenticationRef"]["name"].removesuffix(
            f"-{color}")}} for t in scaled["spec"]["triggers"]]
        spec = {**scaled["spec"], **pipeline_limits(), "scaleTargetRef": default["spec"]["scaleTargetRef"],
                "triggers": triggers}
        assert spec == default["spec"]


def test_keda_scales_to_zero_after_the_cooldown_and_back_on_activity() -> None:
    keda = Keda(scaling_from(scaled_object(minReplicaCount=0, cooldownPeriod=300)))
    assert keda.poll(0, current=1, active=True) == 1
    assert keda.poll(300, current=1, active=False) == 1
    assert keda.poll(315, current=1, active=False) == 0
    assert keda.poll(330, current=0, active=False) == 0
    assert keda.poll(345, current=0, active=True) == 1


def test_with_a_minimum_keda_leaves_everything_to_the_hpa() -> None:
    keda = Keda(scaling_from(LIST_ONLY), last_active=0)
    assert keda.poll(10_000, current=3, active=False) == 3
    assert keda.poll(10_015, current=0, active=False) == 1
    assert keda.poll(10_030, current=3, active=False, error=True) == 3  # no fallback: failing changes nothing


def test_a_fallback_sets_the_count_itself_whenever_no_trigger_is_active_and_a_scaler_fails() -> None:
    s = scaling_from(scaled_object(fallback={"failureThreshold": 3, "replicas": 4}))
    assert s.fallback == Fallback(3, 4)
    keda = Keda(s, last_active=0)
    assert keda.poll(15, current=8, active=False, error=True) == 4  # at once: no threshold, no HPA rules
    assert keda.poll(30, current=0, active=False, error=True) == 4  # even from 0
    assert keda.poll(45, current=8, active=True, error=True) == 8  # an active trigger: left to the HPA


def test_a_fallback_metric_reads_as_its_replicas_times_the_whole_target_after_the_threshold() -> None:
    s = scaling_from(scaled_object(fallback={"failureThreshold": 3, "replicas": 4}))
    rate = RateTrigger(LOAD_QUERY, target=17.5)
    assert with_fallback(s, rate, 30.0, 0) == 30.0
    assert with_fallback(s, rate, None, 3) is None  # up to the threshold, still an error
    assert with_fallback(s, rate, None, 4) == 4 * 17.0  # KEDA truncates the target
    assert with_fallback(s, RateTrigger(LOAD_QUERY, target=17, metric_type="Value"), None, 4) is None
    assert with_fallback(scaling_from(LIST_ONLY), rate, None, 99) is None


def test_an_idle_workload_goes_to_zero_and_wakes_within_a_polling_interval() -> None:
    s = scaling_from(scaled_object(minReplicaCount=0, cooldownPeriod=300))
    run = simulate(s, [0.0] * 10 + [5.0] * 10, rate=25, load_s=600)
    gone = next(x.at for x in run.samples if x.replicas == 0)
    assert 300 < gone <= 300 + s.polling_s
    woke = next(x.at for x in run.samples if x.at >= 600 and x.replicas > 0)
    assert woke - 600 <= s.polling_s  # list longer than activationListLength after 1 s


def test_a_yaml_file_of_several_documents_yields_its_scaled_object(tmp_path: Path) -> None:
    path = tmp_path / "workers.yaml"
    other = scaled_object()
    other["metadata"] = {"name": "recognition-worker-green"}
    docs = [{"kind": "Deployment", "metadata": {"name": "w"}}, LIST_ONLY]
    path.write_text(yaml.safe_dump_all(docs))
    assert load_scaled_object(path) == LIST_ONLY
    path.write_text(yaml.safe_dump_all([*docs, other]))
    with pytest.raises(ValueError, match="2 ScaledObjects match"):
        load_scaled_object(path)
    assert load_scaled_object(path, "recognition-worker-green") == other


# --- Datadog and the HPA's metrics ---------------------------------------------------------

MINUTES = RateTrigger(LOAD_QUERY, target=17, interval_s=60, age_s=300, point_offset=1, unavailable=0.0)


def test_the_load_reads_the_newest_whole_minute_that_datadog_has() -> None:
    # 10 photos/s for 5 minutes, then 40: Datadog has each second 30 s later.
    done = Completions(before=10.0, per_second=[10.0] * 300 + [40.0] * 300)
    # At 6:30 Datadog has up to 5:59: that minute is the newest point, so the one before is read.
    assert datadog_reading(MINUTES, done, 390, lag_s=30) == 10.0
    # A second later the minute from 6:00 has begun (a point still filling): 5:00-5:59 is read.
    assert datadog_reading(MINUTES, done, 391, lag_s=30) == 40.0
    # Without skipping the newest point, a minute still filling reads low.
    newest = RateTrigger(LOAD_QUERY, target=17, interval_s=60, age_s=300, point_offset=0)
    assert datadog_reading(newest, done, 400, lag_s=30) == pytest.approx(40 * 10 / 60)
    # as_count(): photos per point, not per second.
    count = RateTrigger(LOAD_QUERY, target=17, interval_s=60, age_s=300, point_offset=1, per_second=False)
    assert datadog_reading(count, done, 600, lag_s=30) == 40 * 60
    # The run's past: the steady state before it.
    assert datadog_reading(MINUTES, Completions(before=12.5), 0, lag_s=30) == 12.5


def test_no_completion_in_the_window_is_the_unavailable_value_and_too_few_points_an_error() -> None:
    idle = Completions(before=0.0, per_second=[0.0] * 600)
    assert datadog_reading(MINUTES, idle, 600) == 0.0
    assert datadog_reading(RateTrigger(LOAD_QUERY, target=17, interval_s=60, age_s=300), idle, 600) is None
    # The first minute of work: one point, none left once the newest is skipped.
    waking = Completions(before=0.0, per_second=[0.0] * 540 + [10.0] * 60)
    assert datadog_reading(MINUTES, waking, 600, lag_s=0) is None
    # A pause: points only where something finished; the scaler takes the newest of those.
    paused = Completions(before=0.0, per_second=[10.0] * 420 + [0.0] * 180)
    assert datadog_reading(MINUTES, paused, 600, lag_s=0) == 10.0


def test_the_hpa_takes_the_largest_proposal_each_metric_makes_within_its_own_tolerance() -> None:
    load = RateTrigger(LOAD_QUERY, target=17)
    backlog = Trigger("recognize.1", target=50, activation=0)
    # 4 pods: the list (190 of 200) is within tolerance, 4; the load (80 of 68) is not, ceil(80 / 17) = 5.
    assert metric_replicas(backlog, 190, spec=4, status=4, ready=4) == 4
    assert metric_replicas(load, 80, spec=4, status=4, ready=4) == 5
    assert bench_proposal([backlog, load], [190, 80], current=4) == (5, True)
    # The load within tolerance (70 of 68): 4; the list asks for ceil(600 / 50) = 12.
    assert bench_proposal([backlog, load], [600, 70], current=4) == (12, True)
    # The list empty, the load (20 of 68) says 2: a scale-down proposal.
    assert bench_proposal([backlog, load], [0, 20], current=4) == (2, True)


def test_with_a_metric_missing_the_hpa_scales_up_on_the_others_and_never_down() -> None:
    load = RateTrigger(LOAD_QUERY, target=17)
    backlog = Trigger("recognize.1", target=50, activation=0)
    assert bench_proposal([backlog, load], [600, None], current=4) == (12, True)
    assert bench_proposal([backlog, load], [200, None], current=4) == (4, True)
    assert bench_proposal([backlog, load], [0, None], current=4) == (0, False)
    assert bench_proposal([backlog, load], [None, None], current=4) == (None, False)


def bench_proposal(triggers: list[Any], values: list[float | None], *,
                   current: int) -> tuple[int | None, bool]:
    from bench.scaling import metrics_proposal

    return metrics_proposal(triggers, values, current=current, ready=current)


# --- the workers' ScaledObject on the recorded curves --------------------------------------


@pytest.fixture(scope="module")
def spike() -> Run:
    return simulate(workers(), CURVES["spike"], rate=WORKER_RATE, load_s=600, curve_name="spike")


@pytest.fixture(scope="module")
def day() -> Run:
    return simulate(workers(), CURVES["day"], rate=WORKER_RATE, load_s=600, curve_name="day")


def first_minute_of(curve: list[float], value: float, after: int = 0) -> int:
    return next(m for m in range(after, len(curve)) if curve[m] == value)


def spike_minutes() -> tuple[int, int]:
    """The seconds at which the spike's load rises and drops."""
    curve = CURVES["spike"]
    up = first_minute_of(curve, 60.0)
    return 60 * up, 60 * first_minute_of(curve, 20.0, after=up)


def floor(run: Run, at: int) -> int:
    """The HPA's scale-down floor at a sync: the largest recommendation of its down window."""
    window = run.scaling.down.stabilization_s
    syncs = range(max(at - window + SYNC_PERIOD_S, 0), at + 1, SYNC_PERIOD_S)
    return max(run.samples[t].desired for t in syncs)


def longest_wait(run: Run) -> float:
    return max(x.wait_s(run.rate) for x in run.samples)


def test_the_simulation_is_deterministic(spike: Run) -> None:
    again = simulate(workers(), CURVES["spike"], rate=WORKER_RATE, load_s=600)
    assert again.samples == spike.samples and again.steps == spike.steps


def test_the_spike_is_a_sudden_threefold_rise_and_fall() -> None:
    curve = CURVES["spike"]
    up = first_minute_of(curve, 60.0)
    down = first_minute_of(curve, 20.0, after=up)
    assert curve[up - 1] == 20.0 and down - up == 15 and curve[-1] == 20.0


def test_the_spike_scales_up_within_a_polling_interval_and_a_sync(spike: Run) -> None:
    s = spike.scaling
    rise, _ = spike_minutes()
    first_up = next(step for step in spike.steps if step.after > step.before)
    assert first_up.by == "HPA" and rise < first_up.at <= rise + s.polling_s + SYNC_PERIOD_S
    # ... and at the latest one polling interval and a sync after the list passed its target.
    target = next(t for t in s.triggers if isinstance(t, Trigger)).target
    over = next(x.at for x in spike.samples if x.queue > target * x.replicas)
    assert first_up.at - over <= s.polling_s + SYNC_PERIOD_S
    assert spike.samples[first_up.at].replicas > spike.samples[over].replicas


def test_pods_never_fall_below_the_minimum_nor_rise_above_the_maximum(spike: Run) -> None:
    s = spike.scaling
    assert all(s.min_replicas <= x.replicas <= s.max_replicas for x in spike.samples)
    assert max(x.replicas for x in spike.samples) == s.max_replicas  # the spike does reach the top


def test_scale_down_waits_the_stabilization_window_after_the_metrics_last_asked_for_more(spike: Run) -> None:
    """The guarantee the HPA gives: every recommendation of the last 1800 s is at most the new count."""
    window = spike.scaling.down.stabilization_s
    downs = [step for step in spike.steps if step.after < step.before]
    assert downs, "the run is long enough to see scale-down"
    for step in downs:
        assert floor(spike, step.at) <= step.after
    for earlier, later in zip(downs, downs[1:], strict=False):
        assert later.at - earlier.at >= 600 and later.before - later.after == 1  # one pod per 10 min
    assert window == 1800


def test_scale_down_waits_the_stabilization_window_after_the_load_drops(spike: Run) -> None:
    """Until the down window has passed since the spike's load dropped, the HPA keeps what that load
    needs at the load trigger's target (60 photos/s: 4 workers at 17/s), and the pods never go
    below it; no pod goes while the spike lasts. (The 8 pods of the spike were for the backlog the
    10-minute model load let build up; they are held for the window after the backlog is gone.)"""
    rise, drop = spike_minutes()
    window = spike.scaling.down.stabilization_s
    need = math.ceil(60.0 / load_trigger(spike.scaling).target)
    first_down = next(step.at for step in spike.steps if step.after < step.before)
    assert first_down > drop
    assert all(floor(spike, t) >= need for t in range(drop, drop + window + 1, SYNC_PERIOD_S))
    assert all(x.replicas >= need for x in spike.samples[rise + spike.load_s:drop + window + 1])
    # The list alone forgets the load 30 minutes after the backlog is gone, before that.
    backlog = simulate(workers().without_load(), CURVES["spike"], rate=WORKER_RATE, load_s=600)
    assert any(floor(backlog, t) < need for t in range(drop, drop + window + 1, SYNC_PERIOD_S))


def test_on_the_day_curve_pods_never_drop_below_what_the_load_needs(day: Run) -> None:
    """Once the first scale-up has loaded its model: at least ceil(photos/s / per-worker rate)."""
    ready = day.first_scale_up_ready()
    assert ready is not None
    assert day.short() == []
    assert all(x.replicas >= math.ceil(x.arrivals / day.rate) for x in day.samples[ready:])
    # The list alone took the afternoon's workers away under sustained load (backlog, not load):
    backlog = simulate(workers().without_load(), CURVES["day"], rate=WORKER_RATE, load_s=600)
    short = backlog.short()
    assert short and min(x.replicas - backlog.needed(x) for x in short) == -1
    assert max(x.arrivals for x in short) > 120
    assert longest_wait(day) < longest_wait(backlog)


def test_the_ramp_scales_ahead_of_its_backlog() -> None:
    """A slow rise: the load trigger adds workers at 70 % of their rate, before a backlog builds."""
    with_load = simulate(workers(), CURVES["ramp"], rate=WORKER_RATE, load_s=600)
    backlog = simulate(workers().without_load(), CURVES["ramp"], rate=WORKER_RATE, load_s=600)
    assert longest_wait(with_load) < 10 and longest_wait(backlog) > 60


# --- Datadog down --------------------------------------------------------------------------


def test_datadog_down_scales_nothing_down_and_still_scales_up_on_the_backlog() -> None:
    # Down from before the spike to the end: the spike still scales up, and nothing comes down.
    run = simulate(workers(), CURVES["spike"], rate=WORKER_RATE, load_s=600, datadog_down=(20 * 60, 150 * 60))
    ups = [step for step in run.steps if step.after > step.before]
    assert ups and ups[0].at <= spike_minutes()[0] + 30
    assert all(step.by == "HPA" for step in run.steps)
    assert not [step for step in run.steps if step.after < step.before]
    assert all(math.isnan(x.load) for x in run.samples[20 * 60 + SYNC_PERIOD_S:])
    # Back after an hour: scale-down resumes at once. The HPA records no recommendation while it
    # refuses to act, so its window holds only what it recorded before (the spike's, gone by then).
    back = simulate(workers(), CURVES["spike"], rate=WORKER_RATE, load_s=600, datadog_down=(20 * 60, 80 * 60))
    downs = [step for step in back.steps if step.after < step.before]
    assert downs and downs[0].at >= 80 * 60


def test_a_fallback_would_flap_the_workers_and_wake_an_idle_color_while_datadog_is_down() -> None:
    doc = repository_scaled_object()
    doc["spec"]["fallback"] = {"failureThreshold": 3, "replicas": 4}
    run = simulate(scaling_from(doc), CURVES["day"], rate=WORKER_RATE, load_s=600,
                   datadog_down=(60 * 60, 180 * 60))
    by_keda = [step for step in run.steps if step.by == "KEDA"]
    assert len(by_keda) >= 3 and all(step.after == 4 for step in by_keda)  # each one past the HPA's rules
    assert run.short()  # below the load's need, under load
    doc["spec"]["minReplicaCount"] = 0
    idle = simulate(scaling_from(doc), [0.0] * 60, rate=WORKER_RATE, load_s=600, initial=0,
                    datadog_down=(10 * 60, 50 * 60))
    assert max(x.replicas for x in idle.samples) == 4
    doc["spec"].pop("fallback")
    idle = simulate(scaling_from(doc), [0.0] * 60, rate=WORKER_RATE, load_s=600, initial=0,
                    datadog_down=(10 * 60, 50 * 60))
    assert max(x.replicas for x in idle.samples) == 0


# --- the command ---------------------------------------------------------------------------


def test_the_command_prints_the_table_over_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--curve", "spike"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.split()[:2] == ["time", "photos/s"])
    assert header.split() == ["time", "photos/s", "queue", "load/s", "desired", "pods", "starting", "ready",
                              "est.", "wait"]
    rows = [line.split() for line in out.splitlines() if line[:8].strip().count(":") == 2]
    assert len(rows) >= len(CURVES["spike"])  # a row a minute, and one at each scaling step
    assert ["0:30:15", "60.0", "150", "20.0", "3", "3", "1", "2", "3.0", "s"] in rows
    assert ["0:45:00", "20.0", "0", "60.0", "4", "8", "0", "8", "0.0", "s"] in rows
    assert "scaling steps: 0:30:15 HPA 2->3; 0:30:30 HPA 3->6;" in out
    assert "longest estimated wait" in out and "pods below the load's need" in out
    assert f"Datadog {DATADOG_LAG_S} s behind" in out and "no fallback" in out


def test_the_command_leaves_the_load_out_and_takes_datadog_down(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--curve", "day", "--backlog-only", "--every", "600"]) == 0
    out = capsys.readouterr().out
    assert "load trigger" not in out and "pods below the load's need" in out and " for 105 s" in out
    assert main(["--curve", "spike", "--datadog-down", "40-60", "--every", "600"]) == 0
    out = capsys.readouterr().out
    assert "Datadog unreadable 0:40:00-1:00:00" in out and " err " in out


def test_the_command_reads_a_scaled_object_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "so.yaml"
    path.write_text(yaml.safe_dump_all([scaled_object(maxReplicaCount=3)]))
    assert main(["--scaledobject", str(path), "--curve", "ramp", "--every", "600"]) == 0
    out = capsys.readouterr().out
    assert "replicas 1..3" in out and "== curve ramp" in out
    with pytest.raises(SystemExit):
        main(["--scaledobject", str(tmp_path / "missing.yaml")])
