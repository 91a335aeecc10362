"""The rollout guard's steps against a real Redis: export, and check after a promote."""

from __future__ import annotations

import json

import redis

from common import heartbeat, livestats
from common.queues import queue_for
from models_registry import rollout
from models_registry.guard import RolloutGuard
from models_registry.judge import JudgeConfig
from tests.models_registry.test_rollout import ready, verified

CONFIG = JudgeConfig(min_jobs=20, min_feedback=10)


def finish(client: redis.Redis, prefix: str, version: str, n: int, *, failed: int = 0,
           accepted: int = 0, changed: int = 0) -> None:
    pipe = client.pipeline()
    for i in range(n):
        livestats.record_finish(pipe, prefix=prefix, version=version, status="failed" if i < failed else "succeeded",
                                error_code="inference_failed", latency_ms=100,
                                result={"category": {"value": "home", "confidence": 0.9}})
    outcomes = ["accepted"] * accepted + ["changed"] * changed
    for outcome in outcomes:
        livestats.record_feedback(pipe, prefix=prefix, version=version, source="live",
                                  outcomes={"category": outcome})
    pipe.execute()


def promoted(client: redis.Redis, prefix: str) -> RolloutGuard:
    """Version 1 served well and was replaced by version 2, whose figures follow."""
    for version in ("1", "2"):
        ready(client, prefix, version)
        verified(client, prefix, version)
    rollout.model_version_promote(client, prefix=prefix, version="1")
    finish(client, prefix, "1", 40, accepted=18, changed=2)
    rollout.model_version_promote(client, prefix=prefix, version="2")
    return RolloutGuard(client, prefix=prefix, config=CONFIG, window_seconds=600)


def test_the_guard_rolls_back_a_promoted_version_that_degrades(redis_client: redis.Redis, key_prefix: str) -> None:
    guard = promoted(redis_client, key_prefix)
    assert guard.check().action == "wait"  # nothing since the promote yet
    finish(redis_client, key_prefix, "2", 40, accepted=4, changed=16)
    report = guard.check()
    assert report.action == "rolled_back", report.judgment and report.judgment.table()
    state = rollout.rollout_state(redis_client, prefix=key_prefix)
    assert (state.active, state.previous) == ("1", "2")
    event = rollout.rollout_history(redis_client, prefix=key_prefix)[0]
    assert event["action"] == "rollback" and event["by"].startswith("guard")
    assert "accuracy[category]" in event["reason"]
    # After its own rollback the guard has nothing to watch: it never flips back.
    assert guard.check().action == "idle"


def test_the_guard_leaves_a_healthy_promotion_alone(redis_client: redis.Redis, key_prefix: str) -> None:
    guard = promoted(redis_client, key_prefix)
    finish(redis_client, key_prefix, "2", 40, accepted=19, changed=1)
    assert guard.check().action == "ok"
    assert rollout.rollout_state(redis_client, prefix=key_prefix).active == "2"


def test_a_refused_rollback_is_recorded_once_as_an_alert(redis_client: redis.Redis, key_prefix: str) -> None:
    guard = promoted(redis_client, key_prefix)
    finish(redis_client, key_prefix, "2", 40, failed=20)
    redis_client.delete(heartbeat.workers_key(key_prefix, "1"))  # version 1's workers are gone
    assert guard.check().action == "refused"
    assert guard.check().action == "refused"
    alerts = [e for e in rollout.rollout_history(redis_client, prefix=key_prefix) if e["action"] == "guard-alert"]
    assert len(alerts) == 1 and "rollback refused" in alerts[0]["reason"]
    assert rollout.rollout_state(redis_client, prefix=key_prefix).active == "2"


def test_export_reports_queue_depth_and_ready_workers_per_version(redis_client: redis.Redis,
                                                                   key_prefix: str) -> None:
    guard = promoted(redis_client, key_prefix)
    redis_client.rpush(queue_for("2"), json.dumps({"x": 1}))
    try:
        exported = guard.export()
    finally:
        redis_client.delete(queue_for("2"))
    assert exported["2"] == {"queue_depth": 1, "ready_workers": 1}
    assert exported["1"]["ready_workers"] == 1
