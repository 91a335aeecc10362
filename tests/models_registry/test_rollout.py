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
