"""The scaling simulation: the HPA's arithmetic on hand-computed cases, KEDA's 0 <-> N steps, and
what the worker ScaledObject does with a sudden 3x spike. Deterministic; nothing is timed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.scaling import (
    CURVES,
    DEFAULT_SCALED_OBJECT,
    SYNC_PERIOD_S,
    Event,
    Hpa,
    Keda,
    Policy,
    Rules,
    Run,
    Trigger,
    load_scaled_object,
    main,
    metric_replicas,
    scale_down_limit,
    scale_up_limit,
    scaling_from,
    simulate,
)

LIST = Trigger("recognize.1", target=20, activation=1)
UP = Rules(0, "Max", (Policy("Pods", 4, 60), Policy("Percent", 100, 60)))
DOWN = Rules(1800, "Max", (Policy("Pods", 1, 600),))


def scaled_object(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DEFAULT_SCALED_OBJECT)
    doc["spec"].update(spec)
    return doc


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


def test_the_default_scaled_object_reads_as_designed() -> None:
    s = scaling_from(DEFAULT_SCALED_OBJECT)
    assert (s.min_replicas, s.max_replicas, s.polling_s, s.cooldown_s) == (1, 8, 15, 1800)
    assert s.triggers == (Trigger("recognize.1", 20.0, 1.0),)
    assert s.up == UP and s.down == DOWN


def test_missing_fields_take_keda_and_hpa_defaults() -> None:
    doc = scaled_object(minReplicaCount=None, advanced={"horizontalPodAutoscalerConfig": {"behavior": {
        "scaleDown": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}}}})
    del doc["spec"]["minReplicaCount"], doc["spec"]["pollingInterval"]
    s = scaling_from(doc)
    assert (s.min_replicas, s.hpa_min, s.polling_s) == (0, 1, 30)
    assert s.up == Rules(0, "Max", (Policy("Percent", 100, 15), Policy("Pods", 4, 15)))
    assert s.down == Rules(300, "Max", (Policy("Pods", 2, 60),))
    assert scaling_from(scaled_object(advanced={})).up is None


def test_triggers_other_than_redis_lists_are_named_and_skipped() -> None:
    doc = scaled_object()
    doc["spec"]["triggers"].append({"type": "prometheus", "name": "wait", "metadata": {"query": "x"}})
    assert scaling_from(doc).skipped == ("prometheus wait",)
    with pytest.raises(ValueError, match="no redis list trigger"):
        scaling_from(scaled_object(triggers=[{"type": "cpu", "metadata": {"value": "50"}}]))


def test_keda_scales_to_zero_after_the_cooldown_and_back_on_activity() -> None:
    keda = Keda(scaling_from(scaled_object(minReplicaCount=0, cooldownPeriod=300)))
    assert keda.poll(0, current=1, active=True) == 1
    assert keda.poll(300, current=1, active=False) == 1
    assert keda.poll(315, current=1, active=False) == 0
    assert keda.poll(330, current=0, active=False) == 0
    assert keda.poll(345, current=0, active=True) == 1


def test_with_a_minimum_keda_leaves_everything_to_the_hpa() -> None:
    keda = Keda(scaling_from(DEFAULT_SCALED_OBJECT), last_active=0)
    assert keda.poll(10_000, current=3, active=False) == 3
    assert keda.poll(10_015, current=0, active=False) == 1


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
    docs = [{"kind": "Deployment", "metadata": {"name": "w"}}, DEFAULT_SCALED_OBJECT]
    path.write_text(yaml.safe_dump_all(docs))
    assert load_scaled_object(path) == DEFAULT_SCALED_OBJECT
    path.write_text(yaml.safe_dump_all([*docs, other]))
    with pytest.raises(ValueError, match="2 ScaledObjects match"):
        load_scaled_object(path)
    assert load_scaled_object(path, "recognition-worker-green") == other


# --- the spike through the designed ScaledObject ------------------------------------------


@pytest.fixture(scope="module")
def spike() -> Run:
    return simulate(scaling_from(DEFAULT_SCALED_OBJECT), CURVES["spike"], rate=25, load_s=600,
                    curve_name="spike")


def first_minute_of(curve: list[float], value: float, after: int = 0) -> int:
    return next(m for m in range(after, len(curve)) if curve[m] == value)


def test_the_simulation_is_deterministic(spike: Run) -> None:
    again = simulate(scaling_from(DEFAULT_SCALED_OBJECT), CURVES["spike"], rate=25, load_s=600)
    assert again.samples == spike.samples and again.steps == spike.steps


def test_the_spike_is_a_sudden_threefold_rise_and_fall() -> None:
    curve = CURVES["spike"]
    up = first_minute_of(curve, 60.0)
    down = first_minute_of(curve, 20.0, after=up)
    assert curve[up - 1] == 20.0 and down - up == 15 and curve[-1] == 20.0


def test_scale_up_starts_within_a_polling_interval_and_a_sync_of_the_queue_passing_the_target(
        spike: Run) -> None:
    s = spike.scaling
    target = s.triggers[0].target
    over = next(x.at for x in spike.samples if x.queue > target * x.replicas)
    first_up = next(step for step in spike.steps if step.after > step.before)
    assert first_up.by == "HPA" and first_up.at >= over
    assert first_up.at - over <= s.polling_s + SYNC_PERIOD_S
    assert spike.samples[first_up.at].replicas > spike.samples[over].replicas


def test_pods_never_fall_below_the_minimum_nor_rise_above_the_maximum(spike: Run) -> None:
    s = spike.scaling
    assert all(s.min_replicas <= x.replicas <= s.max_replicas for x in spike.samples)
    assert max(x.replicas for x in spike.samples) == s.max_replicas  # the spike does reach the top


def test_scale_down_waits_the_stabilization_window_after_the_list_last_asked_for_more(spike: Run) -> None:
    """The guarantee the HPA gives: every recommendation of the last 1800 s is at most the new count."""
    window = spike.scaling.down.stabilization_s
    downs = [step for step in spike.steps if step.after < step.before]
    assert downs, "the run is long enough to see scale-down"
    for step in downs:
        # the syncs strictly after the cutoff
        syncs = range(step.at - window + SYNC_PERIOD_S, step.at + 1, SYNC_PERIOD_S)
        assert max(spike.samples[t].desired for t in syncs) <= step.after
    for earlier, later in zip(downs, downs[1:], strict=False):
        assert later.at - earlier.at >= 600 and later.before - later.after == 1  # one pod per 10 min


@pytest.mark.xfail(strict=True, reason=(
    "the list-length metric shows backlog, not load: once the new pods drain the backlog (8 ready pods "
    "serve 200 photos/s against 60 arriving) the list is empty and the HPA's memory of the spike starts "
    "ageing while the spike is still on, so scale-down starts ~28 min after the load drops, not 30. "
    "Holding pods for the window after the *load* drops needs a load signal (arrival or completion "
    "rate, busy workers) in the ScaledObject."))
def test_scale_down_waits_the_stabilization_window_after_the_load_drops(spike: Run) -> None:
    curve = CURVES["spike"]
    drop = 60 * first_minute_of(curve, 20.0, after=first_minute_of(curve, 60.0))
    first_down = next(step.at for step in spike.steps if step.after < step.before)
    assert first_down - drop >= spike.scaling.down.stabilization_s


def test_the_command_prints_the_table_over_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--curve", "spike"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.split()[:2] == ["time", "photos/s"])
    assert header.split() == ["time", "photos/s", "queue", "desired", "pods", "starting", "ready", "est.",
                              "wait"]
    rows = [line.split() for line in out.splitlines() if line[:8].strip().count(":") == 2]
    assert len(rows) >= len(CURVES["spike"])  # a row a minute, and one at each scaling step
    assert ["0:30:15", "60.0", "525", "27", "5", "4", "1", "21.0", "s"] in rows
    assert "scaling steps: 0:30:15 HPA 1->5; 0:31:15 HPA 5->8;" in out
    assert "longest estimated wait" in out


def test_the_command_reads_a_scaled_object_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "so.yaml"
    path.write_text(yaml.safe_dump_all([scaled_object(maxReplicaCount=3)]))
    assert main(["--scaledobject", str(path), "--curve", "ramp", "--every", "600"]) == 0
    out = capsys.readouterr().out
    assert "replicas 1..3" in out and "== curve ramp" in out
    with pytest.raises(SystemExit):
        main(["--scaledobject", str(tmp_path / "missing.yaml")])
