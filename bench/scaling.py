"""Scaling simulation: a recorded load curve through KEDA and the HPA's scaling rules.

    python -m bench.scaling                                   # every built-in curve, default ScaledObject
    python -m bench.scaling --curve spike                     # one curve
    python -m bench.scaling --scaledobject path/to/scaledobject.yaml --rate 25 --load-s 600

Prints, per curve, a table over time (arrivals, queue, desired count, pods starting/ready, estimated
wait), the scaling events and a summary. Nothing is timed and nothing is random: the same inputs
give the same table.

What is simulated, one second at a time:

- the queue: ``recognize.<version>``'s Redis list gains the curve's photos/s and loses what the
  ready workers serve (``--rate`` photos/s each). It is a fluid model, so the list is empty
  whenever the ready workers keep up: the list length measures backlog, not load;
- KEDA (every ``pollingInterval``): a redis list trigger is active while the list is longer than
  ``activationListLength``; KEDA itself scales 0 -> max(minReplicaCount, 1) on activity and back
  to 0 (or ``idleReplicaCount``) once no trigger was active for ``cooldownPeriod`` -- only when
  ``minReplicaCount`` is 0. Everything between min and max is the HPA's;
- the HPA (every 15 s, the controller's sync period) on KEDA's external metric: the list length
  (read live at each sync, as KEDA's metrics server does, or the last poll's value with the
  trigger's ``useCachedMetrics``) with an AverageValue target of ``listLength`` (or a Value
  target with ``metricType: Value``), the 10 % tolerance, then
  ``advanced.horizontalPodAutoscalerConfig.behavior`` exactly as kube-controller-manager applies
  it: stabilization windows over past recommendations, then the scale-up / scale-down policies
  over past scale events (selectPolicy Max / Min / Disabled), then min/max;
- the pods: a new pod exists at once (it counts in the Deployment's replicas and the HPA's
  per-pod average) but serves only after ``--load-s`` (the model load). Scale-down removes pods
  that are not ready yet first, newest first, as the ReplicaSet controller does.

The HPA arithmetic follows kube-controller-manager's podautoscaler (horizontal.go and
replica_calculator.go, Kubernetes 1.27+: both scale-up and scale-down events count towards a
policy's period); KEDA's follows its scale executor (pkg/scaling/executor/scale_scaledobjects.go).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYNC_PERIOD_S = 15  # --horizontal-pod-autoscaler-sync-period
TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
DOWNSCALE_STABILIZATION_S = 300  # --horizontal-pod-autoscaler-downscale-stabilization
LEGACY_SCALE_UP_FACTOR, LEGACY_SCALE_UP_MINIMUM = 2.0, 4.0  # without spec.behavior
LIST_TRIGGERS = ("redis", "redis-sentinel", "redis-cluster")

# The worker ScaledObject the design asks for, until the Kustomize overlay's is wired in
# (--scaledobject reads any file holding one).
DEFAULT_SCALED_OBJECT: dict[str, Any] = {
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
    list_name: str
    target: float  # listLength
    activation: float  # activationListLength
    metric_type: str = "AverageValue"  # AverageValue | Value
    cached: bool = False  # useCachedMetrics


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
    triggers: tuple[Trigger, ...]
    up: Rules | None  # None: no spec.behavior, the controller's legacy rules
    down: Rules | None
    skipped: tuple[str, ...] = ()  # triggers this model cannot simulate

    @property
    def hpa_min(self) -> int:
        """KEDA gives its HPA minReplicas max(minReplicaCount, 1): 0 <-> 1 is KEDA's own."""
        return max(self.min_replicas, 1)


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


def scaling_from(doc: Mapping[str, Any]) -> Scaling:
    """Read a KEDA v2 ScaledObject (as a dict) with KEDA's and the HPA's defaults."""
    if doc.get("kind") != "ScaledObject":
        raise ValueError(f"not a ScaledObject: kind {doc.get('kind')!r}")
    spec = doc["spec"]
    triggers, skipped = [], []
    for raw in spec.get("triggers", []):
        meta = raw.get("metadata", {})
        if raw.get("type") in LIST_TRIGGERS and "listName" in meta:
            triggers.append(Trigger(
                list_name=meta["listName"], target=float(meta.get("listLength", 5)),
                activation=float(meta.get("activationListLength", 0)),
                metric_type=raw.get("metricType", "AverageValue"),
                cached=bool(raw.get("useCachedMetrics", False))))
        else:
            skipped.append(f"{raw.get('type')} {raw.get('name', '')}".strip())
    if not triggers:
        raise ValueError("no redis list trigger (redis, redis-sentinel or redis-cluster with a listName)")
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
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


# --- the HPA ------------------------------------------------------------------------------


def metric_replicas(trigger: Trigger, value: float, *, spec: int, status: int, ready: int,
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
    """KEDA's scale loop for one ScaledObject: activation and the 0 <-> N steps."""

    scaling: Scaling
    last_active: int | None = None

    def poll(self, now: int, *, current: int, active: bool) -> int:
        """RequestScale: the replica count KEDA sets (``current`` when it leaves it to the HPA)."""
        s = self.scaling
        if active:
            self.last_active = now
            if current == 0 or (s.idle_replicas is not None and current < s.min_replicas):
                return s.hpa_min  # scaleFromZeroOrIdle
            return current
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
    desired: int  # what the metric asked for at the last HPA sync, before any rule
    replicas: int
    starting: int
    ready: int

    def wait_s(self, rate: float) -> float:
        """Estimated wait of a new photo: backlog / (ready workers x rate)."""
        if self.queue <= 0:
            return 0.0
        return math.inf if self.ready == 0 else self.queue / (self.ready * rate)


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


def simulate(scaling: Scaling, curve: Sequence[float], *, rate: float = 25.0, load_s: int = 600,
             curve_name: str = "", initial: int | None = None) -> Run:
    """Run a curve (photos/s per minute) through the ScaledObject, one second at a time.

    The run starts in a steady state: ``initial`` pods (by default the fewest that serve the
    curve's first minute, within min/max), all ready, an empty queue, and an HPA that has just
    recorded that count as its first recommendation."""
    if initial is None:
        initial = min(max(math.ceil(curve[0] / rate), scaling.hpa_min), scaling.max_replicas)
    workers = Workers(load_s, [0] * initial)
    hpa = Hpa(scaling.hpa_min, scaling.max_replicas, scaling.up, scaling.down)
    keda = Keda(scaling, last_active=0)
    queue, desired = 0.0, initial
    polled: list[float] = [0.0] * len(scaling.triggers)
    samples: list[Sample] = []
    steps: list[ScaleStep] = []
    for now in range(len(curve) * 60):
        length = float(math.floor(queue))  # LLEN: whole messages
        if now % scaling.polling_s == 0:
            polled = [length] * len(scaling.triggers)
            active = any(length > t.activation for t in scaling.triggers)
            after = keda.poll(now, current=len(workers), active=active)
            if after != len(workers):
                steps.append(ScaleStep(now, "KEDA", len(workers), after))
                workers.scale_to(after, now)
        if now % SYNC_PERIOD_S == 0 and len(workers) > 0:
            ready = workers.ready(now)
            desired = max(metric_replicas(t, polled[i] if t.cached else length, spec=len(workers),
                                          status=len(workers), ready=ready)
                          for i, t in enumerate(scaling.triggers))
            after = hpa.reconcile(now, current=len(workers), proposal=desired)
            if after != len(workers):
                steps.append(ScaleStep(now, "HPA", len(workers), after))
                workers.scale_to(after, now)
        ready = workers.ready(now)
        arrivals = curve[now // 60]
        samples.append(Sample(now, arrivals, queue, desired, len(workers), len(workers) - ready, ready))
        queue = max(0.0, queue + arrivals - ready * rate)
    return Run(scaling, curve_name, rate, load_s, samples, steps)


# --- the report ---------------------------------------------------------------------------


def clock(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe(s: Scaling) -> str:
    cooldown = f"cooldownPeriod {s.cooldown_s} s{' (only 1 -> 0 uses it)' if s.min_replicas else ''}"
    lines = [f"ScaledObject {s.name}: replicas {s.min_replicas}..{s.max_replicas}, "
             f"pollingInterval {s.polling_s} s, {cooldown}"]
    lines += [f"  trigger: list {t.list_name}, {t.metric_type} target listLength {t.target:g}, "
              f"activation > {t.activation:g}{', cached metric' if t.cached else ''}" for t in s.triggers]
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
    """The run every ``every_s`` seconds, and at every scaling step."""
    at = {s.at for s in run.steps} | set(range(0, len(run.samples), every_s))
    rows = [f"{'time':>8} {'photos/s':>9} {'queue':>8} {'desired':>8} {'pods':>5} {'starting':>9} "
            f"{'ready':>6} {'est. wait':>10}"]
    for s in (run.samples[t] for t in sorted(at)):
        wait = s.wait_s(run.rate)
        shown = "inf" if math.isinf(wait) else f"{wait:.1f} s"
        rows.append(f"{clock(s.at):>8} {s.arrivals:>9.1f} {s.queue:>8.0f} {s.desired:>8d} {s.replicas:>5d} "
                    f"{s.starting:>9d} {s.ready:>6d} {shown:>10}")
    return "\n".join(rows)


def summary(run: Run) -> str:
    waits = [s.wait_s(run.rate) for s in run.samples]
    worst = max(range(len(waits)), key=waits.__getitem__)
    steps = "; ".join(f"{clock(s.at)} {s.by} {s.before}->{s.after}" for s in run.steps) or "none"
    pod_hours = sum(s.replicas for s in run.samples) / 3600
    return "\n".join([
        f"scaling steps: {steps}",
        f"longest estimated wait {waits[worst]:.1f} s at {clock(worst)}; "
        f"over 10 s for {sum(w > 10 for w in waits)} s, over 60 s for {sum(w > 60 for w in waits)} s",
        f"pod-hours {pod_hours:.1f} (ready {sum(s.ready for s in run.samples) / 3600:.1f}); "
        f"photos served {sum(s.arrivals for s in run.samples) - run.samples[-1].queue:.0f}",
    ])


def report(run: Run, every_s: int = 60) -> str:
    return "\n".join([
        f"== curve {run.curve}: {len(run.samples) // 60} min; {run.rate:g} photos/s per ready worker, "
        f"model load {run.load_s} s",
        describe(run.scaling), "", table(run, every_s), "", summary(run), "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    cli.add_argument("--scaledobject", type=Path, help="YAML file with the ScaledObject (default: built in)")
    cli.add_argument("--name", help="which ScaledObject when the file holds several")
    cli.add_argument("--curve", choices=sorted(CURVES), action="append", help="a curve to run (default: all)")
    cli.add_argument("--rate", type=float, default=25.0, help="photos/s one ready worker serves (default 25)")
    cli.add_argument("--load-s", type=int, default=600, help="seconds from pod start to ready (default 600)")
    cli.add_argument("--every", type=int, default=60, help="table row every N seconds (default 60)")
    args = cli.parse_args(argv)
    try:
        doc = DEFAULT_SCALED_OBJECT
        if args.scaledobject is not None:
            doc = load_scaled_object(args.scaledobject, args.name)
        scaling = scaling_from(doc)
    except (OSError, ValueError, KeyError) as e:
        cli.error(str(e))
    for name in args.curve or list(CURVES):
        run = simulate(scaling, CURVES[name], rate=args.rate, load_s=args.load_s, curve_name=name)
        sys.stdout.write(report(run, args.every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
