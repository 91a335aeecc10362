"""Scaling simulation: a recorded load curve through KEDA and the HPA's scaling rules.

    python -m bench.scaling                                    # every built-in curve, the workers'
    python -m bench.scaling --curve spike                      # one curve
    python -m bench.scaling --curve day --backlog-only         # without the load trigger (as it was)
    python -m bench.scaling --curve day --datadog-down 60-120  # Datadog unreadable, minutes 60 to 120
    python -m bench.scaling --scaledobject path/to/scaledobject.yaml --rate 25 --load-s 600

Prints, per curve, a table over time (arrivals, queue, the load metric, desired count, pods
starting/ready, estimated wait), the scaling events and a summary. Nothing is timed and nothing is
random: the same inputs give the same table.

The default ScaledObject is the workers' own, k8s/workers/base/scaling.yaml, with its model
version resolved as k8s/render.py resolves it and the minimum and maximum that the model-rollout
pipeline's patch sets (its parameters' defaults).

What is simulated, one second at a time:

- the queue: ``recognize.<version>``'s Redis list gains the curve's photos/s and loses what the
  ready workers serve (``--rate`` photos/s each). It is a fluid model, so the list is empty
  whenever the ready workers keep up: the list length measures backlog, not load. The photos
  finished in a second, min(arrivals + backlog, ready x rate), are the version's completions;
- Datadog: a ``datadog`` trigger on ``recognition.job.completed`` (``.as_rate()`` or
  ``.as_count()``, ``.rollup(sum, N)``) reads the completions as the scaler does: a second's
  completions reach Datadog ``--datadog-lag-s`` later; the query covers ``age`` seconds ending
  ``timeWindowOffset`` ago, in N-second points (a point only where something was completed);
  the scaler takes the newest point less ``lastAvailablePointOffset``, so a point still filling
  can be skipped; no point at all gives ``metricUnavailableValue`` (an error without it); a
  Datadog outage (``--datadog-down``) is an error whatever the settings;
- KEDA (every ``pollingInterval``): a trigger is active while its value is above its activation
  value (``activationListLength``, ``activationQueryValue``); KEDA itself scales 0 ->
  max(minReplicaCount, 1) on activity and back to 0 (or ``idleReplicaCount``) once no trigger
  was active for ``cooldownPeriod`` -- only when ``minReplicaCount`` is 0. With a ``fallback``
  whose replicas are not 0, no active trigger and a failing scaler, KEDA sets the count to
  ``fallback.replicas`` itself (its scale executor). Everything else between min and max is the
  HPA's;
- the HPA (every 15 s, the controller's sync period) on KEDA's external metrics, one per trigger
  (read live at each sync, as KEDA's metrics server does, or the last poll's value with the
  trigger's ``useCachedMetrics``): a replica proposal per metric -- AverageValue (KEDA's
  default): ceil(value / target) outside the 10 % tolerance; Value: the ratio times the ready
  pods -- and the largest proposal wins. A metric KEDA cannot read is left out; then the HPA
  does not scale at all if the others would take it down (computeReplicasForMetrics). With a
  ``fallback``, a metric failing more than ``failureThreshold`` reads in a row reads as
  ``fallback.replicas`` x its target instead. Then
  ``advanced.horizontalPodAutoscalerConfig.behavior`` exactly as kube-controller-manager applies
  it: stabilization windows over past recommendations, then the scale-up / scale-down policies
  over past scale events (selectPolicy Max / Min / Disabled), then min/max;
- the pods: a new pod exists at once (it counts in the Deployment's replicas and the HPA's
  per-pod average) but serves only after ``--load-s`` (the model load). Scale-down removes pods
  that are not ready yet first, newest first, as the ReplicaSet controller does.

The HPA arithmetic follows kube-controller-manager's podautoscaler (horizontal.go and
replica_calculator.go, Kubernetes 1.27+: both scale-up and scale-down events count towards a
policy's period); KEDA's follows its scale executor (pkg/scaling/executor/scale_scaledobjects.go),
its fallback (pkg/fallback/fallback.go) and its datadog scaler (pkg/scalers/datadog_scaler.go),
as of KEDA 2.16.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

SYNC_PERIOD_S = 15  # --horizontal-pod-autoscaler-sync-period
TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
DOWNSCALE_STABILIZATION_S = 300  # --horizontal-pod-autoscaler-downscale-stabilization
LEGACY_SCALE_UP_FACTOR, LEGACY_SCALE_UP_MINIMUM = 2.0, 4.0  # without spec.behavior
LIST_TRIGGERS = ("redis", "redis-sentinel", "redis-cluster")
# Photos/s one ready worker serves (--rate): the assumption the workers' load target is derived from
# (k8s/workers/base/scaling.yaml: queryValue = this x 0.7, rounded down).
WORKER_RATE = 25.0
MODEL_LOAD_S = 600  # --load-s: from a pod's start until it serves (the model load)
# From a job's end until Datadog's query API has it (--datadog-lag-s): the worker's DogStatsD client
# flushes every 0.3 s, the agent aggregates 10 s buckets and forwards every 15 s, then intake.
DATADOG_LAG_S = 30
# The points of a Datadog query without an explicit rollup: DogStatsD's 10 s buckets, the finest.
DATADOG_NATIVE_INTERVAL_S = 10
COMPLETED_METRIC = "recognition.job.completed"
COMPLETION_QUERY = re.compile(
    r"sum:" + re.escape(COMPLETED_METRIC) + r"\{[^{}]*\}"
    r"(?P<modifier>\.as_rate\(\)|\.as_count\(\))(?:\.rollup\(sum, ?(?P<rollup>\d+)\))?")

ROOT = Path(__file__).resolve().parent.parent
SCALING_MANIFEST = ROOT / "k8s" / "workers" / "base" / "scaling.yaml"
ROLLOUT_PIPELINE = ROOT / "k8s" / "spinnaker" / "model-rollout.json"


# Recorded load curves: photos/s, one value per minute.
CURVES: dict[str, list[float]] = {
    # A marketplace day (00:00-24:00) compressed into three hours, one minute per 8 minutes of the
    # day: a night trough, the morning climb, lunch, the afternoon plateau and the evening peak.
    "day": [
        12.4, 11.8, 12.1, 11.2, 10.9, 10.6, 10.1, 9.8, 9.9, 9.2, 8.8, 8.9,
        8.3, 7.9, 8.1, 7.6, 7.3, 7.5, 7.0, 6.8, 6.9, 6.6, 6.4, 6.7,
        6.3, 6.2, 6.5, 6.4, 6.6, 6.9, 7.1, 7.0, 7.4, 7.8, 7.7, 8.3,
        8.9, 9.2, 9.8, 10.7, 11.3, 12.6, 13.8, 15.1, 17.4, 20.2, 23.5, 27.9,
        31.6, 36.8, 41.2, 46.9, 52.7, 57.3, 62.8, 67.1, 72.9, 77.4, 81.0, 85.6,
        88.1, 90.4, 93.7, 92.8, 95.9, 98.2, 97.6, 100.3, 102.8, 101.9, 104.6, 107.3,
        106.1, 109.8, 112.4, 111.0, 114.7, 117.2, 116.3, 119.5, 121.8, 120.9, 124.6, 127.3,
        129.8, 133.4, 136.9, 138.2, 141.7, 139.5, 142.8, 140.3, 137.6, 134.1, 129.7, 124.2,
        119.8, 116.4, 113.9, 112.1, 110.6, 111.8, 109.4, 110.9, 108.7, 110.2, 111.6, 109.9,
        112.3, 110.8, 113.5, 112.0, 114.2, 115.9, 114.6, 117.3, 119.0, 118.4, 121.7, 123.5,
        126.8, 129.4, 133.0, 136.7, 139.2, 143.8, 147.1, 150.9, 153.6, 157.2, 160.4, 162.9,
        165.3, 167.8, 169.1, 170.6, 171.9, 170.2, 171.4, 169.5, 168.1, 165.7, 161.8, 157.3,
        151.6, 144.9, 137.2, 128.5, 119.6, 110.3, 100.8, 91.5, 82.6, 74.1, 66.3, 59.2,
        52.8, 47.1, 42.3, 37.9, 34.2, 30.8, 27.9, 25.3, 23.1, 21.2, 19.6, 18.3,
        17.1, 16.2, 15.4, 14.8, 14.1, 13.7, 13.3, 13.0, 12.8, 12.7, 12.5, 12.4,
    ],
    # A sudden 3x spike (a push notification): 30 min at the base, 15 min at three times the base,
    # then the base again long enough to watch the slow scale-down.
    "spike": [20.0] * 30 + [60.0] * 15 + [20.0] * 105,
    # A slow ramp from 10 to 160 photos/s over two hours, half an hour flat, then a drop back.
    "ramp": [round(10 + 150 * m / 119, 1) for m in range(120)] + [160.0] * 30 + [10.0] * 60,
}


# --- the ScaledObject ----------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    type: str  # Pods | Percent
    value: int
    period_s: int


@dataclass(frozen=True)
class Rules:
    """One direction of ``spec.behavior`` (HPAScalingRules), defaults filled in."""

    stabilization_s: int
    select: str  # Max | Min | Disabled
    policies: tuple[Policy, ...]


@dataclass(frozen=True)
class Trigger:
    """A Redis list trigger: the backlog."""

    list_name: str
    target: float  # listLength
    activation: float  # activationListLength
    metric_type: str = "AverageValue"  # AverageValue | Value
    cached: bool = False  # useCachedMetrics


@dataclass(frozen=True)
class RateTrigger:
    """A datadog trigger on the version's completions (recognition.job.completed): the load."""

    query: str
    target: float  # queryValue
    activation: float = 0.0  # activationQueryValue
    interval_s: int = DATADOG_NATIVE_INTERVAL_S  # the query's .rollup(sum, N)
    per_second: bool = True  # .as_rate(); .as_count() gives completions per interval
    age_s: int = 90  # age
    window_offset_s: int = 0  # timeWindowOffset
    point_offset: int = 0  # lastAvailablePointOffset
    unavailable: float | None = None  # metricUnavailableValue (None: not set, an error)
    metric_type: str = "AverageValue"
    cached: bool = False


AnyTrigger = Trigger | RateTrigger


@dataclass(frozen=True)
class Fallback:
    failure_threshold: int
    replicas: int


@dataclass(frozen=True)
class Scaling:
    """What KEDA and the HPA it owns are told by one ScaledObject."""

    name: str
    min_replicas: int
    max_replicas: int
    polling_s: int
    cooldown_s: int
    initial_cooldown_s: int
    idle_replicas: int | None
    triggers: tuple[AnyTrigger, ...]
    up: Rules | None  # None: no spec.behavior, the controller's legacy rules
    down: Rules | None
    skipped: tuple[str, ...] = ()  # triggers this model cannot simulate
    fallback: Fallback | None = None

    @property
    def hpa_min(self) -> int:
        """KEDA gives its HPA minReplicas max(minReplicaCount, 1): 0 <-> 1 is KEDA's own."""
        return max(self.min_replicas, 1)

    def without_load(self) -> Scaling:
        """The same ScaledObject with its backlog triggers only (as the workers' was before)."""
        return replace(self, triggers=tuple(t for t in self.triggers if isinstance(t, Trigger)))


def _policy(raw: Mapping[str, Any]) -> Policy:
    kind = raw["type"]
    if kind not in ("Pods", "Percent"):
        raise ValueError(f"unknown scaling policy type {kind!r}")
    return Policy(kind, int(raw["value"]), int(raw["periodSeconds"]))


def scale_up_rules(raw: Mapping[str, Any] | None) -> Rules:
    """GenerateHPAScaleUpRules: 0 s window; +100 % or +4 pods per 15 s, whichever is more."""
    raw = raw or {}
    policies = raw.get("policies") or [{"type": "Percent", "value": 100, "periodSeconds": 15},
                                       {"type": "Pods", "value": 4, "periodSeconds": 15}]
    return Rules(int(raw.get("stabilizationWindowSeconds", 0)), raw.get("selectPolicy", "Max"),
                 tuple(_policy(p) for p in policies))


def scale_down_rules(raw: Mapping[str, Any] | None) -> Rules:
    """GenerateHPAScaleDownRules: the controller's 300 s window; -100 % per 15 s."""
    raw = raw or {}
    policies = raw.get("policies") or [{"type": "Percent", "value": 100, "periodSeconds": 15}]
    window = raw.get("stabilizationWindowSeconds")
    return Rules(DOWNSCALE_STABILIZATION_S if window is None else int(window), raw.get("selectPolicy", "Max"),
                 tuple(_policy(p) for p in policies))


def rate_trigger(raw: Mapping[str, Any]) -> RateTrigger | None:
    """A datadog trigger this model simulates (None for any other query), with the scaler's defaults."""
    meta = raw.get("metadata", {})
    match = COMPLETION_QUERY.fullmatch(meta.get("query", ""))
    if raw.get("type") != "datadog" or match is None or meta.get("useClusterAgentProxy") == "true":
        return None
    unavailable = meta.get("metricUnavailableValue")
    return RateTrigger(
        query=meta["query"], target=float(meta.get("queryValue", meta.get("targetValue", 0))),
        activation=float(meta.get("activationQueryValue", 0)),
        interval_s=int(match["rollup"] or DATADOG_NATIVE_INTERVAL_S),
        per_second=match["modifier"] == ".as_rate()",
        age_s=int(meta.get("age", 90)), window_offset_s=int(meta.get("timeWindowOffset", 0)),
        point_offset=int(meta.get("lastAvailablePointOffset", 0)),
        unavailable=None if unavailable is None else float(unavailable),
        metric_type=raw.get("metricType", "AverageValue"), cached=bool(raw.get("useCachedMetrics", False)))


def scaling_from(doc: Mapping[str, Any]) -> Scaling:
    """Read a KEDA v2 ScaledObject (as a dict) with KEDA's and the HPA's defaults."""
    if doc.get("kind") != "ScaledObject":
        raise ValueError(f"not a ScaledObject: kind {doc.get('kind')!r}")
    spec = doc["spec"]
    triggers: list[AnyTrigger] = []
    skipped = []
    for raw in spec.get("triggers", []):
        meta = raw.get("metadata", {})
        rate = rate_trigger(raw)
        if raw.get("type") in LIST_TRIGGERS and "listName" in meta:
            triggers.append(Trigger(
                list_name=meta["listName"], target=float(meta.get("listLength", 5)),
                activation=float(meta.get("activationListLength", 0)),
                metric_type=raw.get("metricType", "AverageValue"),
                cached=bool(raw.get("useCachedMetrics", False))))
        elif rate is not None:
            triggers.append(rate)
        else:
            skipped.append(f"{raw.get('type')} {raw.get('name', '')}".strip())
    if not triggers:
        raise ValueError("no trigger to simulate: a redis list (redis, redis-sentinel or redis-cluster with "
                         f"a listName) or datadog on {COMPLETED_METRIC}")
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    fallback = spec.get("fallback")
    if fallback is not None:
        fallback = Fallback(int(fallback["failureThreshold"]), int(fallback["replicas"]))
    return Scaling(
        name=doc.get("metadata", {}).get("name", "?"),
        min_replicas=int(spec.get("minReplicaCount", 0)),
        max_replicas=int(spec.get("maxReplicaCount", 100)),
        polling_s=int(spec.get("pollingInterval", 30)),
        cooldown_s=int(spec.get("cooldownPeriod", 300)),
        initial_cooldown_s=int(spec.get("initialCooldownPeriod", 0)),
        idle_replicas=None if spec.get("idleReplicaCount") is None else int(spec["idleReplicaCount"]),
        triggers=tuple(triggers),
        up=None if behavior is None else scale_up_rules(behavior.get("scaleUp")),
        down=None if behavior is None else scale_down_rules(behavior.get("scaleDown")),
        skipped=tuple(skipped),
        fallback=fallback,
    )


def load_scaled_object(path: Path, name: str | None = None) -> dict[str, Any]:
    """The ScaledObject among a YAML file's documents (by name where there are several)."""
    import yaml

    docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    found = [d for d in docs if d.get("kind") == "ScaledObject"]
    names = [d.get("metadata", {}).get("name") for d in found]
    if name is not None:
        found = [d for d, n in zip(found, names, strict=True) if n == name]
    if len(found) != 1:
        raise ValueError(f"{path}: {len(found)} ScaledObjects match (present: {names}); choose with --name")
    return found[0]


def _render() -> ModuleType:
    """k8s/render.py: how the pipelines' deploy stages resolve the manifests' placeholders."""
    spec = importlib.util.spec_from_file_location("k8s_render", ROOT / "k8s" / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pipeline_limits(pipeline: Path = ROLLOUT_PIPELINE) -> dict[str, int]:
    """minReplicaCount and maxReplicaCount as the pipeline's patch of the ScaledObject sets them:
    the parameters it names there, at their defaults."""
    p = json.loads(pipeline.read_text())
    defaults = {q["name"]: q.get("default") for q in p["parameterConfig"]}
    limits: dict[str, int] = {}
    for stage in p["stages"]:
        if stage.get("type") != "patchManifest" or \
                not stage.get("manifestName", "").startswith("scaledObject.keda.sh"):
            continue
        for key in ("minReplicaCount", "maxReplicaCount"):
            value = str(stage["patchBody"]["spec"].get(key))
            named = re.fullmatch(r"\$\{#toInt\(parameters\.(\w+)\)\}", value)
            if named:
                limits[key] = int(defaults[named[1]])
    if set(limits) != {"minReplicaCount", "maxReplicaCount"}:
        raise ValueError(f"{pipeline}: no patch of a ScaledObject's minReplicaCount and maxReplicaCount "
                         "from parameters")
    return limits


def repository_scaled_object(model_version: str = "1") -> dict[str, Any]:
    """The workers' ScaledObject as a rollout leaves it: k8s/workers/base/scaling.yaml, its
    ${modelVersion} resolved by k8s/render.py's rules, and model-rollout's minimum and maximum
    (its parameters' defaults). The color (a name suffix) changes nothing simulated; the tests
    check this against the ScaledObject `kubectl kustomize` renders."""
    import yaml

    docs = yaml.safe_load_all(SCALING_MANIFEST.read_text())
    (doc,) = [d for d in docs if d and d.get("kind") == "ScaledObject"]
    doc = _render().resolve(doc, {"modelVersion": model_version})
    doc["spec"].update(pipeline_limits())
    return doc


# --- the HPA ------------------------------------------------------------------------------


def metric_replicas(trigger: AnyTrigger, value: float, *, spec: int, status: int, ready: int,
                    tolerance: float = TOLERANCE) -> int:
    """The replica count one external metric asks for (replica_calculator.go).

    AverageValue (KEDA's default): the usage ratio is taken against the pods that exist, ready or
    not (scale.status.replicas), and the answer is ceil(value / target) when outside tolerance.
    Value: ratio value / target; outside tolerance ceil(ratio * ready pods).
    """
    if trigger.metric_type == "Value":
        ratio = value / trigger.target
        if spec == 0:
            return math.ceil(ratio)
        if abs(1.0 - ratio) <= tolerance:
            return spec
        return math.ceil(ratio * ready)
    if status == 0:
        return math.ceil(value / trigger.target)
    ratio = value / (trigger.target * status)
    if abs(1.0 - ratio) > tolerance:
        return math.ceil(value / trigger.target)
    return status


def metrics_proposal(triggers: Sequence[AnyTrigger], values: Sequence[float | None], *, current: int,
                     ready: int) -> tuple[int | None, bool]:
    """computeReplicasForMetrics: a proposal per metric (each with its own tolerance), the largest
    of those that could be read (None: none could), and whether the HPA acts on it at all: with a
    metric missing, only to scale up, on the others (invalidMetricsCount > 0 && replicas <
    specReplicas is an error, and the sync changes nothing)."""
    proposals = [metric_replicas(t, v, spec=current, status=current, ready=ready)
                 for t, v in zip(triggers, values, strict=True) if v is not None]
    if not proposals:
        return None, False
    largest = max(proposals)
    return largest, len(proposals) == len(values) or largest >= current


@dataclass(frozen=True)
class Event:
    at: int
    change: int  # added (scale up) or removed (scale down) replicas, positive


def change_in_period(period_s: int, events: Iterable[Event], now: int) -> int:
    """Replicas changed by events strictly after now - period (getReplicasChangePerPeriod)."""
    return sum(e.change for e in events if e.at > now - period_s)


def scale_up_limit(current: int, ups: Sequence[Event], downs: Sequence[Event], rules: Rules,
                   now: int) -> int:
    """The most replicas the policies allow now (calculateScaleUpLimitWithScalingRules)."""
    if rules.select == "Disabled":
        return current
    proposals = []
    for p in rules.policies:
        start = current - change_in_period(p.period_s, ups, now) + change_in_period(p.period_s, downs, now)
        proposals.append(start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100)))
    return min(proposals) if rules.select == "Min" else max(proposals)


def scale_down_limit(current: int, ups: Sequence[Event], downs: Sequence[Event], rules: Rules,
                     now: int) -> int:
    """The fewest replicas the policies allow now (calculateScaleDownLimitWithBehaviors)."""
    if rules.select == "Disabled":
        return current
    proposals = []
    for p in rules.policies:
        start = current - change_in_period(p.period_s, ups, now) + change_in_period(p.period_s, downs, now)
        proposals.append(start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100)))
    return max(proposals) if rules.select == "Min" else min(proposals)


@dataclass
class Hpa:
    """One HorizontalPodAutoscaler's controller state: past recommendations and scale events."""

    min_replicas: int
    max_replicas: int
    up: Rules | None
    down: Rules | None
    tolerance: float = TOLERANCE
    recommendations: list[tuple[int, int]] = field(default_factory=list)  # (at, unstabilized desired)
    ups: list[Event] = field(default_factory=list)
    downs: list[Event] = field(default_factory=list)

    def stabilize(self, now: int, current: int, desired: int) -> int:
        """stabilizeRecommendationWithBehaviors: no higher than the lowest recommendation of the
        up window, no lower than the highest of the down window; then remember ``desired``."""
        assert self.up is not None and self.down is not None
        up_cut, down_cut = now - self.up.stabilization_s, now - self.down.stabilization_s
        up_rec = min([desired] + [r for at, r in self.recommendations if at > up_cut])
        down_rec = max([desired] + [r for at, r in self.recommendations if at > down_cut])
        recommendation = min(max(current, up_rec), down_rec)
        oldest = min(up_cut, down_cut)
        self.recommendations = [(at, r) for at, r in self.recommendations if at >= oldest] + [(now, desired)]
        return recommendation

    def rate_limit(self, now: int, current: int, desired: int) -> int:
        """convertDesiredReplicasWithBehaviorRate: the policies, then min/max."""
        assert self.up is not None and self.down is not None
        if desired > current:
            limit = max(scale_up_limit(current, self.ups, self.downs, self.up, now), current)
            return min(desired, self.max_replicas, limit)
        if desired < current:
            limit = min(scale_down_limit(current, self.ups, self.downs, self.down, now), current)
            return max(desired, self.min_replicas, limit)
        return desired

    def legacy(self, now: int, current: int, desired: int) -> int:
        """normalizeDesiredReplicas (no spec.behavior): the highest recommendation of the last
        300 s, then at most max(2 x current, 4) and within min/max."""
        cut = now - DOWNSCALE_STABILIZATION_S
        stabilized = max([desired] + [r for at, r in self.recommendations if at >= cut])
        self.recommendations = [(at, r) for at, r in self.recommendations if at >= cut] + [(now, desired)]
        ceiling = min(self.max_replicas, int(max(LEGACY_SCALE_UP_FACTOR * current, LEGACY_SCALE_UP_MINIMUM)))
        return min(max(stabilized, self.min_replicas), ceiling)

    def reconcile(self, now: int, *, current: int, proposal: int) -> int:
        """One sync (reconcileAutoscaler): the replica count to set, given the Deployment's
        current replicas and the metrics' proposal. A change is remembered as a scale event."""
        if not self.recommendations:
            self.recommendations.append((now, current))  # recordInitialRecommendation
        if current == 0 and self.min_replicas != 0:
            return 0  # scaling is disabled while the target is at zero (KEDA's part)
        if current > self.max_replicas:
            desired = self.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        elif self.up is None:
            desired = self.legacy(now, current, proposal)
        else:
            desired = self.rate_limit(now, current, self.stabilize(now, current, proposal))
        if desired > current:
            self.ups.append(Event(now, desired - current))
        elif desired < current:
            self.downs.append(Event(now, current - desired))
        longest = max((p.period_s for r in (self.up, self.down) if r for p in r.policies), default=0)
        self.ups = [e for e in self.ups if e.at > now - longest]
        self.downs = [e for e in self.downs if e.at > now - longest]
        return desired




# --- KEDA ---------------------------------------------------------------------------------


@dataclass
class Keda:
    """KEDA's scale loop for one ScaledObject: activation, the 0 <-> N steps, the fallback."""

    scaling: Scaling
    last_active: int | None = None

    def poll(self, now: int, *, current: int, active: bool, error: bool = False) -> int:
        """RequestScale: the replica count KEDA sets (``current`` when it leaves it to the HPA).
        ``error``: a scaler failed this poll."""
        s = self.scaling
        if active:
            self.last_active = now
            if current == 0 or (s.idle_replicas is not None and current < s.min_replicas):
                return s.hpa_min  # scaleFromZeroOrIdle
            return current
        if error and s.fallback is not None and s.fallback.replicas != 0:
            return s.fallback.replicas  # doFallbackScaling: no threshold, no HPA rules, even from 0
        idle = s.idle_replicas is not None and current > s.idle_replicas
        if idle or (current > 0 and s.min_replicas == 0):
            since = self.last_active if self.last_active is not None else 0
            wait = s.cooldown_s if self.last_active is not None else s.initial_cooldown_s
            if since + wait < now:  # scaleToZeroOrIdle, after the cooldown
                return s.idle_replicas or 0
            return current
        if current < s.min_replicas and s.idle_replicas is None:
            return s.min_replicas
        return current


def with_fallback(scaling: Scaling, trigger: AnyTrigger, value: float | None, failures: int) -> float | None:
    """GetMetricsWithFallback: the value the HPA gets for a metric that failed ``failures`` reads
    in a row (``value`` None: this read failed too). Past failureThreshold, an AverageValue metric
    reads as fallback.replicas x its target (the target truncated to a whole number, as KEDA does)."""
    f = scaling.fallback
    if value is not None or f is None or trigger.metric_type != "AverageValue":
        return value
    if failures <= f.failure_threshold:
        return None
    return f.replicas * float(int(trigger.target))


# --- Datadog ------------------------------------------------------------------------------


@dataclass
class Completions:
    """Photos finished per second: what the workers report to Datadog, one count per job."""

    before: float  # per second before the run (its steady state)
    per_second: list[float] = field(default_factory=list)

    def between(self, start: int, end: int) -> float:
        """Photos finished in the seconds [start, end)."""
        early = max(0, min(end, 0) - start) * self.before
        return early + sum(self.per_second[max(start, 0):max(end, 0)])


def datadog_reading(trigger: RateTrigger, completed: Completions, now: int, *,
                    lag_s: int = DATADOG_LAG_S) -> float | None:
    """What KEDA's datadog scaler returns at ``now`` (getQueryResult), None for an error.

    Datadog holds the seconds before now - lag. The query covers [now - offset - age, now - offset]
    in points of ``interval_s`` aligned to the clock, one per interval in which something was
    completed; the last of them may still be filling. The scaler takes the newest point less
    ``lastAvailablePointOffset`` (too few points: an error); no point at all is
    ``metricUnavailableValue`` (an error without it)."""
    to = now - trigger.window_offset_s
    since = to - trigger.age_s
    step = trigger.interval_s
    points = []
    for k in range(-(-since // step), to // step + 1):
        start = k * step
        done = completed.between(start, min(start + step, now - lag_s, to))
        if done > 0:
            points.append(done / step if trigger.per_second else done)
    if not points:
        return trigger.unavailable
    if len(points) - 1 < trigger.point_offset:
        return None  # "index is smaller than the lastAvailablePointOffset"
    return points[len(points) - 1 - trigger.point_offset]


# --- the workers and the run --------------------------------------------------------------


@dataclass
class Workers:
    """The worker Deployment's pods: when each one finishes loading the model."""

    load_s: int
    ready_at: list[int] = field(default_factory=list)

    def scale_to(self, n: int, now: int) -> None:
        if n > len(self.ready_at):
            self.ready_at += [now + self.load_s] * (n - len(self.ready_at))
        elif n < len(self.ready_at):
            # The ReplicaSet deletes pods that are not ready before ready ones, newest first.
            self.ready_at = sorted(self.ready_at)[:n]

    def ready(self, now: int) -> int:
        return sum(1 for t in self.ready_at if t <= now)

    def __len__(self) -> int:
        return len(self.ready_at)


@dataclass(frozen=True)
class Sample:
    at: int
    arrivals: float  # photos/s
    queue: float
    desired: int  # the largest proposal of the metrics at the last HPA sync, before any rule
    replicas: int
    starting: int
    ready: int
    completed: float = 0.0  # photos finished in this second
    load: float | None = None  # the load metric (datadog) at the last HPA sync; nan: unreadable

    def wait_s(self, rate: float) -> float:
        """Estimated wait of a new photo: backlog / (ready workers x rate)."""
        if self.queue <= 0:
            return 0.0
        return math.inf if self.ready == 0 else self.queue / (self.ready * rate)

    def needed(self, rate: float) -> int:
        """The fewest workers that serve this second's arrivals."""
        return math.ceil(self.arrivals / rate - 1e-9)


@dataclass(frozen=True)
class ScaleStep:
    at: int
    by: str  # HPA | KEDA
    before: int
    after: int


@dataclass
class Run:
    scaling: Scaling
    curve: str
    rate: float
    load_s: int
    samples: list[Sample]  # one per second
    steps: list[ScaleStep]
    datadog_lag_s: int = DATADOG_LAG_S
    datadog_down: tuple[int, int] | None = None

    def first_scale_up_ready(self) -> int | None:
        """When the pods of the first scale-up had loaded their model (None: no scale-up)."""
        up = next((s for s in self.steps if s.after > s.before), None)
        return None if up is None else up.at + self.load_s

    def needed(self, sample: Sample) -> int:
        """The fewest workers that serve a second's arrivals, within the maximum."""
        return min(sample.needed(self.rate), self.scaling.max_replicas)

    def short(self) -> list[Sample]:
        """The seconds, once the first scale-up is ready, with fewer pods than the load needs."""
        ready = self.first_scale_up_ready()
        if ready is None:
            return []
        return [s for s in self.samples[ready:] if s.replicas < self.needed(s)]


def simulate(scaling: Scaling, curve: Sequence[float], *, rate: float = WORKER_RATE,
             load_s: int = MODEL_LOAD_S, curve_name: str = "", initial: int | None = None,
             datadog_lag_s: int = DATADOG_LAG_S, datadog_down: tuple[int, int] | None = None) -> Run:
    """Run a curve (photos/s per minute) through the ScaledObject, one second at a time.

    The run starts in a steady state: ``initial`` pods (by default the fewest that serve the
    curve's first minute, within min/max), all ready, an empty queue, the workers finishing the
    first minute's photos (also in Datadog's past), and an HPA that has just recorded that count
    as its first recommendation. ``datadog_down``: the seconds [from, to) in which Datadog cannot
    be read."""
    if initial is None:
        initial = min(max(math.ceil(curve[0] / rate), scaling.hpa_min), scaling.max_replicas)
    workers = Workers(load_s, [0] * initial)
    hpa = Hpa(scaling.hpa_min, scaling.max_replicas, scaling.up, scaling.down)
    keda = Keda(scaling, last_active=0)
    completed = Completions(before=min(curve[0], initial * rate))
    queue, desired, load = 0.0, initial, None
    polled: list[float | None] = [0.0] * len(scaling.triggers)
    failures = [0] * len(scaling.triggers)
    samples: list[Sample] = []
    steps: list[ScaleStep] = []
    for now in range(len(curve) * 60):
        length = float(math.floor(queue))  # LLEN: whole messages
        down = datadog_down is not None and datadog_down[0] <= now < datadog_down[1]

        def read(trigger: AnyTrigger, now: int = now, length: float = length,
                 down: bool = down) -> float | None:
            if isinstance(trigger, Trigger):
                return length
            return None if down else datadog_reading(trigger, completed, now, lag_s=datadog_lag_s)

        if now % scaling.polling_s == 0:
            polled = [read(t) for t in scaling.triggers]
            active = any(v is not None and v > t.activation
                         for t, v in zip(scaling.triggers, polled, strict=True))
            error = any(v is None for v in polled)
            after = keda.poll(now, current=len(workers), active=active, error=error)
            if after != len(workers):
                steps.append(ScaleStep(now, "KEDA", len(workers), after))
                workers.scale_to(after, now)
        if now % SYNC_PERIOD_S == 0 and len(workers) > 0:
            ready = workers.ready(now)
            values: list[float | None] = []
            for i, t in enumerate(scaling.triggers):
                value = polled[i] if t.cached else read(t)
                failures[i] = 0 if value is not None else failures[i] + 1
                values.append(with_fallback(scaling, t, value, failures[i]))
            load = next((math.nan if v is None else v for t, v in zip(scaling.triggers, values, strict=True)
                         if isinstance(t, RateTrigger)), None)
            largest, acts = metrics_proposal(scaling.triggers, values, current=len(workers), ready=ready)
            desired = desired if largest is None else largest
            if acts:
                after = hpa.reconcile(now, current=len(workers), proposal=desired)
                if after != len(workers):
                    steps.append(ScaleStep(now, "HPA", len(workers), after))
                    workers.scale_to(after, now)
        ready = workers.ready(now)
        arrivals = curve[now // 60]
        served = min(queue + arrivals, ready * rate)
        completed.per_second.append(served)
        samples.append(Sample(now, arrivals, queue, desired, len(workers), len(workers) - ready, ready,
                              served, load))
        queue = queue + arrivals - served
    return Run(scaling, curve_name, rate, load_s, samples, steps, datadog_lag_s, datadog_down)


# --- the report ---------------------------------------------------------------------------


def clock(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe(s: Scaling) -> str:
    cooldown = f"cooldownPeriod {s.cooldown_s} s{' (only 1 -> 0 uses it)' if s.min_replicas else ''}"
    lines = [f"ScaledObject {s.name}: replicas {s.min_replicas}..{s.max_replicas}, "
             f"pollingInterval {s.polling_s} s, {cooldown}"]
    for t in s.triggers:
        cached = ", cached metric" if t.cached else ""
        if isinstance(t, Trigger):
            lines.append(f"  backlog trigger: list {t.list_name}, {t.metric_type} target listLength "
                         f"{t.target:g}, activation > {t.activation:g}{cached}")
        else:
            unavailable = "an error" if t.unavailable is None else f"{t.unavailable:g}"
            lines.append(f"  load trigger: Datadog {t.query}, {t.metric_type} target queryValue "
                         f"{t.target:g}, activation > {t.activation:g}{cached}")
            lines.append(f"    window {t.age_s} s ending {t.window_offset_s} s ago, {t.interval_s} s points, "
                         f"newest {t.point_offset} skipped; no point: {unavailable}")
    if s.fallback:
        lines.append(f"  fallback: {s.fallback.replicas} replicas after {s.fallback.failure_threshold} "
                     "failures")
    else:
        lines.append("  no fallback: a metric KEDA cannot read is left out; no scale-down while one is "
                     "missing")
    if s.up and s.down:
        for word, r in (("up", s.up), ("down", s.down)):
            policies = ", ".join(f"{p.value}{'%' if p.type == 'Percent' else ' pods'}/{p.period_s}s"
                                 for p in r.policies)
            lines.append(f"  scale {word}: window {r.stabilization_s} s, {r.select} of [{policies}]")
    else:
        lines.append("  no behavior: legacy rules (300 s down window, at most max(2x, 4) up)")
    if s.skipped:
        lines.append(f"  not simulated: {', '.join(s.skipped)}")
    return "\n".join(lines)


def table(run: Run, every_s: int = 60) -> str:
    """The run every ``every_s`` seconds, and at every scaling step. ``load/s`` is the load
    metric the HPA read at its last sync (``err``: Datadog unreadable)."""
    at = {s.at for s in run.steps} | set(range(0, len(run.samples), every_s))
    rows = [f"{'time':>8} {'photos/s':>9} {'queue':>8} {'load/s':>7} {'desired':>8} {'pods':>5} "
            f"{'starting':>9} {'ready':>6} {'est. wait':>10}"]
    for s in (run.samples[t] for t in sorted(at)):
        wait = s.wait_s(run.rate)
        shown = "inf" if math.isinf(wait) else f"{wait:.1f} s"
        load = "-" if s.load is None else "err" if math.isnan(s.load) else f"{s.load:.1f}"
        rows.append(f"{clock(s.at):>8} {s.arrivals:>9.1f} {s.queue:>8.0f} {load:>7} {s.desired:>8d} "
                    f"{s.replicas:>5d} {s.starting:>9d} {s.ready:>6d} {shown:>10}")
    return "\n".join(rows)


def summary(run: Run) -> str:
    waits = [s.wait_s(run.rate) for s in run.samples]
    longest = max(range(len(waits)), key=waits.__getitem__)
    steps = "; ".join(f"{clock(s.at)} {s.by} {s.before}->{s.after}" for s in run.steps) or "none"
    pod_hours = sum(s.replicas for s in run.samples) / 3600
    ready = run.first_scale_up_ready()
    if ready is None:
        load = "no scale-up"
    else:
        short = run.short()
        fewest = min(run.samples[ready:], key=lambda s: (s.replicas, s.at), default=None)
        load = (f"after the first scale-up was ready ({clock(ready)}): pods below the load's need "
                f"(ceil(photos/s / {run.rate:g}), at most {run.scaling.max_replicas}) for {len(short)} s")
        if short:
            worst = min(short, key=lambda s: (s.replicas - run.needed(s), s.at))
            load += (f"; the most short: {worst.replicas} pods for {worst.arrivals:g} photos/s (needing "
                     f"{run.needed(worst)}) at {clock(worst.at)}")
        elif fewest is not None:
            load += f"; fewest pods {fewest.replicas} at {clock(fewest.at)}"
    return "\n".join([
        f"scaling steps: {steps}",
        f"longest estimated wait {waits[longest]:.1f} s at {clock(longest)}; "
        f"over 10 s for {sum(w > 10 for w in waits)} s, over 60 s for {sum(w > 60 for w in waits)} s",
        load,
        f"pod-hours {pod_hours:.1f} (ready {sum(s.ready for s in run.samples) / 3600:.1f}); "
        f"photos served {sum(s.arrivals for s in run.samples) - run.samples[-1].queue:.0f}",
    ])


def report(run: Run, every_s: int = 60) -> str:
    down = "" if run.datadog_down is None else \
        f"; Datadog unreadable {clock(run.datadog_down[0])}-{clock(run.datadog_down[1])}"
    return "\n".join([
        f"== curve {run.curve}: {len(run.samples) // 60} min; {run.rate:g} photos/s per ready worker, "
        f"model load {run.load_s} s; Datadog {run.datadog_lag_s} s behind{down}",
        describe(run.scaling), "", table(run, every_s), "", summary(run), "",
    ])


def minutes(text: str) -> tuple[int, int]:
    start, _, end = text.partition("-")
    return int(start) * 60, int(end) * 60


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    cli.add_argument("--scaledobject", type=Path,
                     help="YAML file with the ScaledObject (default: k8s/workers/base/scaling.yaml's)")
    cli.add_argument("--name", help="which ScaledObject when the file holds several")
    cli.add_argument("--backlog-only", action="store_true", help="leave the load (datadog) triggers out")
    cli.add_argument("--curve", choices=sorted(CURVES), action="append", help="a curve to run (default: all)")
    cli.add_argument("--rate", type=float, default=WORKER_RATE,
                     help=f"photos/s one ready worker serves (default {WORKER_RATE:g})")
    cli.add_argument("--load-s", type=int, default=MODEL_LOAD_S,
                     help=f"seconds from pod start to ready (default {MODEL_LOAD_S})")
    cli.add_argument("--datadog-lag-s", type=int, default=DATADOG_LAG_S,
                     help=f"seconds from a job's end until Datadog has it (default {DATADOG_LAG_S})")
    cli.add_argument("--datadog-down", type=minutes, metavar="FROM-TO",
                     help="minutes of the curve in which Datadog cannot be read, e.g. 60-120")
    cli.add_argument("--every", type=int, default=60, help="table row every N seconds (default 60)")
    args = cli.parse_args(argv)
    try:
        doc = repository_scaled_object() if args.scaledobject is None else \
            load_scaled_object(args.scaledobject, args.name)
        scaling = scaling_from(doc)
        if args.backlog_only:
            scaling = scaling.without_load()
    except (OSError, ValueError, KeyError) as e:
        cli.error(str(e))
    for name in args.curve or list(CURVES):
        run = simulate(scaling, CURVES[name], rate=args.rate, load_s=args.load_s, curve_name=name,
                       datadog_lag_s=args.datadog_lag_s, datadog_down=args.datadog_down)
        sys.stdout.write(report(run, args.every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
