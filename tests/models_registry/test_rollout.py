"""Rollout state changes against a real Redis; workers appear through their real heartbeat."""

from __future__ import annotations

import pytest
import redis

from common import heartbeat
from models_registry import rollout
from models_registry.rollout import RolloutRefused


def ready(client: redis.Redis, prefix: str, version: str, sha: str = "sha-v", worker: str = "w",
          checked: bool = True) -> None:
    heartbeat.beat(client, prefix=prefix, version=version, worker_id=f"{worker}-{version}", ttl_seconds=30,
                   info={"manifest_sha256": sha, "checked_manifest_sha256": sha if checked else ""})


def verified(client: redis.Redis, prefix: str, version: str, sha: str = "sha-v") -> None:
    rollout.record_verification(client, prefix=prefix, version=version, manifest_sha256=sha)


def test_promote_is_refused_without_ready_workers(redis_client: redis.Redis, key_prefix: str) -> None:
    verified(redis_client, key_prefix, "2")
    with pytest.raises(RolloutRefused, match="no ready workers"):
        rollout.model_version_promote(redis_client, prefix=key_prefix, version="2", default_version="1")
    assert rollout.rollout_state(redis_client, prefix=key_prefix, default_version="1").active == "1"


def test_promote_is_refused_for_an_unverified_version(redis_client: redis.Redis, key_prefix: str) -> None:
    ready(redis_client, key_prefix, "2")
    with pytest.raises(RolloutRefused, match="has not passed `verify`"):
        rollout.model_version_promote(redis_client, prefix=key_prefix, version="2")


def test_promote_is_refused_when_workers_loaded_another_volume(redis_client: redis.Redis, key_prefix: str) -> None:
    verified(redis_client, key_prefix, "2", sha="good")
    ready(redis_client, key_prefix, "2", sha="tampered")
    with pytest.raises(RolloutRefused, match="whose manifest is the one that passed verification"):
        rollout.model_version_promote(redis_client, prefix=key_prefix, version="2")


def test_promote_is_refused_when_a_worker_did_not_check_its_volume(redis_client: redis.Redis, key_prefix: str) -> None:
    verified(redis_client, key_prefix, "2")
    ready(redis_client, key_prefix, "2", checked=False)  # the right manifest, files never checked
    with pytest.raises(RolloutRefused, match="did not check, at load"):
        rollout.model_version_promote(redis_client, prefix=key_prefix, version="2")


def test_promote_then_rollback(redis_client: redis.Redis, key_prefix: str) -> None:
    for version in ("1", "2"):
        verified(redis_client, key_prefix, version)
        ready(redis_client, key_prefix, version)
    state = rollout.model_version_promote(redis_client, prefix=key_prefix, version="2", default_version="1",
                                          by="alice@laptop")
    assert (state.active, state.previous, state.updated_by) == ("2", "1", "alice@laptop")
    state = rollout.model_version_rollback(redis_client, prefix=key_prefix, default_version="1")
    assert (state.active, state.previous) == ("1", "2")
    actions = [(e["action"], e["version"]) for e in rollout.rollout_history(redis_client, prefix=key_prefix)]
    assert actions == [("rollback", "1"), ("promote", "2")]


def test_rollback_needs_a_previous_version(redis_client: redis.Redis, key_prefix: str) -> None:
    with pytest.raises(RolloutRefused, match="no previous version"):
        rollout.model_version_rollback(redis_client, prefix=key_prefix, default_version="1")


def test_force_promotes_anyway_and_is_recorded(redis_client: redis.Redis, key_prefix: str) -> None:
    state = rollout.model_version_promote(redis_client, prefix=key_prefix, version="9", force=True)
    assert state.active == "9"
    event = rollout.rollout_history(redis_client, prefix=key_prefix)[0]
    assert event["forced"] is True and event["problems"]


def test_canary_on_and_off(redis_client: redis.Redis, key_prefix: str) -> None:
    verified(redis_client, key_prefix, "3")
    ready(redis_client, key_prefix, "3")
    state = rollout.model_version_canary(redis_client, prefix=key_prefix, version="3", weight=0.2)
    assert (state.canary, state.canary_weight) == ("3", 0.2)
    with pytest.raises(RolloutRefused, match="between 0 and 1"):
        rollout.model_version_canary(redis_client, prefix=key_prefix, version="3", weight=1.5)
    state = rollout.model_version_canary(redis_client, prefix=key_prefix, version=None)
    assert state.canary is None


def test_promoting_the_canary_ends_the_canary(redis_client: redis.Redis, key_prefix: str) -> None:
    verified(redis_client, key_prefix, "3")
    ready(redis_client, key_prefix, "3")
    rollout.model_version_canary(redis_client, prefix=key_prefix, version="3", weight=0.5)
    state = rollout.model_version_promote(redis_client, prefix=key_prefix, version="3", default_version="1")
    assert (state.active, state.canary) == ("3", None)


def test_a_dead_worker_stops_counting_as_ready(redis_client: redis.Redis, key_prefix: str) -> None:
    heartbeat.beat(redis_client, prefix=key_prefix, version="4", worker_id="w", ttl_seconds=0.2, info={})
    assert heartbeat.ready_workers(redis_client, prefix=key_prefix, version="4") == ["w"]
    import time

    time.sleep(0.3)
    assert heartbeat.ready_workers(redis_client, prefix=key_prefix, version="4") == []


def test_shadow_on_and_off_and_never_for_the_active_version(redis_client: redis.Redis, key_prefix: str) -> None:
    for version in ("1", "2"):
        ready(redis_client, key_prefix, version)
        verified(redis_client, key_prefix, version)
    rollout.model_version_promote(redis_client, prefix=key_prefix, version="1")
    with pytest.raises(RolloutRefused, match="no ready workers"):
        rollout.model_version_shadow(redis_client, prefix=key_prefix, version="3", fraction=0.5)
    with pytest.raises(RolloutRefused, match="is active"):
        rollout.model_version_shadow(redis_client, prefix=key_prefix, version="1", fraction=0.5)
    with pytest.raises(RolloutRefused, match="fraction"):
        rollout.model_version_shadow(redis_client, prefix=key_prefix, version="2", fraction=1.5)
    state = rollout.model_version_shadow(redis_client, prefix=key_prefix, version="2", fraction=0.25)
    assert (state.shadow, state.shadow_fraction, state.active) == ("2", 0.25, "1")
    state = rollout.model_version_shadow(redis_client, prefix=key_prefix, version=None)
    assert (state.shadow, state.shadow_fraction) == (None, 0.0)
    assert [e["action"] for e in rollout.rollout_history(redis_client, prefix=key_prefix)][:2] == [
        "shadow-off", "shadow"]


def test_abort_stops_a_candidate_s_canary_and_shadow_but_not_the_active(redis_client: redis.Redis,
                                                                         key_prefix: str) -> None:
    for version in ("1", "2"):
        ready(redis_client, key_prefix, version)
        verified(redis_client, key_prefix, version)
    rollout.model_version_promote(redis_client, prefix=key_prefix, version="1")
    rollout.model_version_shadow(redis_client, prefix=key_prefix, version="2", fraction=0.5)
    rollout.model_version_canary(redis_client, prefix=key_prefix, version="2", weight=0.1)
    state = rollout.model_version_abort(redis_client, prefix=key_prefix, version="2", reason="judge: rollback")
    assert (state.active, state.canary, state.shadow) == ("1", None, None)
    assert rollout.rollout_history(redis_client, prefix=key_prefix)[0]["reason"] == "judge: rollback"
    with pytest.raises(RolloutRefused, match="use rollback"):
        rollout.model_version_abort(redis_client, prefix=key_prefix, version="1")


def test_promote_ends_the_shadow_and_keeps_the_outgoing_version_s_figures(redis_client: redis.Redis,
                                                                          key_prefix: str) -> None:
    from common import livestats

    for version in ("1", "2"):
        ready(redis_client, key_prefix, version)
        verified(redis_client, key_prefix, version)
    rollout.model_version_promote(redis_client, prefix=key_prefix, version="1")
    pipe = redis_client.pipeline()
    for _ in range(4):
        livestats.record_finish(pipe, prefix=key_prefix, version="1", status="succeeded", latency_ms=50, result={})
    pipe.execute()
    rollout.model_version_shadow(redis_client, prefix=key_prefix, version="2", fraction=0.5)
    state = rollout.model_version_promote(redis_client, prefix=key_prefix, version="2")
    assert (state.active, state.previous, state.shadow) == ("2", "1", None)
    baseline = rollout.baseline_figures(redis_client, prefix=key_prefix, version="1")
    assert baseline is not None and baseline.jobs == 4
