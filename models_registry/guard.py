"""The rollout guard: after a promote, watch the new active version and roll back by itself.

A long-lived process (``python -m models_registry guard``, one replica: the ``rollout-guard``
Deployment) made of two small steps that tests call one at a time:

- ``export``: queue depth and ready workers per version, as DogStatsD gauges. The API and the
  workers publish per-job metrics; these gauges come from here so that they do not go silent
  exactly when a version has no workers left.
- ``check``: while the last rollout change is a promote, judge the active version's figures
  since that promote (at most ``window`` back) against the figures the previous version had
  when it was replaced (kept by ``promote``); on a ``rollback`` verdict, roll back, recording
  the failed checks in the history. A rollback that is refused (the previous version has no
  ready workers any more) is recorded once as ``guard-alert`` and logged loudly.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from common.heartbeat import ready_workers
from common.livestats import version_figures
from common.metrics import statsd
from common.queues import queue_depth, queue_for
from common.rollout import history_key, rollout_state
from models_registry.judge import JudgeConfig, Judgment, judge
from models_registry.rollout import (
    RolloutRefused,
    actor,
    baseline_figures,
    known_versions,
    model_version_rollback,
    rollout_history,
)

logger = logging.getLogger(__name__)


@dataclass
class GuardReport:
    action: str  # "idle" (nothing to watch), "wait", "ok", "rolled_back" or "refused"
    judgment: Judgment | None = None
    detail: str = ""


class RolloutGuard:
    def __init__(self, client: redis.Redis, *, prefix: str, config: JudgeConfig, window_seconds: float,
                 default_version: str | None = None, min_jobs: int | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.config = config
        self.window_seconds = window_seconds
        self.default_version = default_version
        self.min_jobs = min_jobs
        self._alerted: set[float] = set()

    def export(self) -> dict[str, dict[str, int]]:
        state = rollout_state(self.client, prefix=self.prefix, default_version=self.default_version)
        versions = set(known_versions(self.client, prefix=self.prefix))
        versions |= {v for v in (state.active, state.canary, state.shadow, state.previous) if v}
        out = {}
        for version in sorted(versions):
            depth = queue_depth(self.client, version)
            ready = len(ready_workers(self.client, prefix=self.prefix, version=version))
            statsd().gauge("queue.depth", depth, tags=[f"model_version:{version}", f"queue:{queue_for(version)}"])
            statsd().gauge("workers.ready", ready, tags=[f"model_version:{version}"])
            out[version] = {"queue_depth": depth, "ready_workers": ready}
        return out

    def check(self, now: float | None = None) -> GuardReport:
        now = time.time() if now is None else now
        state = rollout_state(self.client, prefix=self.prefix, default_version=self.default_version)
        history = rollout_history(self.client, prefix=self.prefix, limit=20)
        promote = next((e for e in history if e.get("action") in ("promote", "rollback")), None)
        if not promote or promote["action"] != "promote" or promote.get("version") != state.active:
            return GuardReport("idle", detail="the last change is not a promote of the active version")
        if not state.previous:
            return GuardReport("idle", detail="no previous version to compare with")
        baseline = baseline_figures(self.client, prefix=self.prefix, version=state.previous)
        if baseline is None:
            return GuardReport("idle", detail=f"no recorded figures of version {state.previous}")
        figures = version_figures(self.client, prefix=self.prefix, version=state.active,
                                  window_seconds=self.window_seconds, since=promote["at"], now=now,
                                  feedback_sources=("live",))
        judgment = judge(figures, baseline, config=self.config, min_jobs=self.min_jobs)
        if judgment.verdict == "wait":
            return GuardReport("wait", judgment)
        if judgment.verdict == "promote":
            return GuardReport("ok", judgment)
        reason = f"guard: version {state.active} degraded against {state.previous}'s figures: {judgment.reason()}"
        try:
            model_version_rollback(self.client, prefix=self.prefix, default_version=self.default_version,
                                   by=f"guard {actor()}", reason=reason)
        except RolloutRefused as exc:
            if promote["at"] not in self._alerted:
                self._alerted.add(promote["at"])
                self._record_alert(state.active, f"{reason}; rollback refused: {exc}")
            logger.error("guard could not roll back: %s", exc, extra={"reason": reason})
            return GuardReport("refused", judgment, str(exc))
        logger.warning("guard rolled back", extra={"reason": reason})
        statsd().event("Model version rolled back by the guard", reason, alert_type="error",
                       tags=[f"model_version:{state.active}"])
        return GuardReport("rolled_back", judgment, reason)

    def _record_alert(self, version: str, detail: str) -> None:
        event: dict[str, Any] = {"action": "guard-alert", "version": version, "reason": detail,
                                 "by": f"guard {actor()}", "at": time.time()}
        self.client.lpush(history_key(self.prefix), json.dumps(event))

    def run(self, *, interval_seconds: float, export_seconds: float = 10.0) -> None:
        """Export every ``export_seconds`` and check every ``interval_seconds`` until killed;
        a Redis outage is waited out, never a reason to exit."""
        next_check = 0.0
        while True:
            started = time.monotonic()
            try:
                self.export()
                if started >= next_check:
                    report = self.check()
                    next_check = started + interval_seconds
                    logger.info("guard check", extra={"action": report.action, "detail": report.detail})
            except redis.RedisError as exc:
                logger.warning("guard: redis unavailable: %s", exc)
            time.sleep(max(0.0, export_seconds - (time.monotonic() - started)))
