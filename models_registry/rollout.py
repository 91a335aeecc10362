"""Changes of the rollout state (``common.rollout``): promote, rollback, canary.

Only these functions change the state; the API and the workers only read it.

Guarantees: a version becomes active (or canary) only when it has ready workers,
every one of which loaded exactly the volume that ``verify`` passed (same
manifest sha256). ``force=True`` skips the checks and is recorded as forced.
Every change is appended to ``<prefix>rollout:history``.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from typing import Any

import redis

# Both read heartbeats (common.heartbeat); the CLI and the guard find them here too.
from common.heartbeat import known_versions as known_versions
from common.heartbeat import worker_details as worker_details
from common.livestats import Figures, version_figures
from common.rollout import (
    CANARY,
    SHADOW,
    RolloutState,
    baseline_key,
    decode_hash,
    history_key,
    rollout_key,
    rollout_state,
    verified_key,
)


class RolloutRefused(Exception):
    """The change would route jobs to a version that cannot serve them."""


def actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def record_verification(client: redis.Redis, *, prefix: str, version: str, manifest_sha256: str) -> None:
    client.hset(verified_key(prefix, version), mapping={
        "manifest_sha256": manifest_sha256, "verified_at": repr(time.time()), "verified_by": actor()})


def check_servable(client: redis.Redis, *, prefix: str, version: str) -> list[str]:
    """Why ``version`` cannot take traffic; empty when it can."""
    problems = []
    workers = worker_details(client, prefix=prefix, version=version)
    if not workers:
        problems.append(f"version {version} has no ready workers (start them and wait for their heartbeat)")
    raw = client.hgetall(verified_key(prefix, version))
    verified = raw.get(b"manifest_sha256", b"").decode()
    if not verified:
        problems.append(f"version {version} has not passed `verify` (run: python -m models_registry verify {version})")
    else:
        # What a worker *checked* at load (every file against the manifest), not only what
        # manifest it read: a worker that skipped or failed the check does not count.
        checked = {w.get("checked_manifest_sha256") for w in workers}
        stale = sorted(w["id"] for w in workers if w.get("checked_manifest_sha256") != verified)
        if workers and checked != {verified}:
            problems.append(
                f"workers {', '.join(stale)} did not check, at load, a volume of version {version} whose "
                "manifest is the one that passed verification"
            )
    return problems


def _change(client: redis.Redis, *, prefix: str, event: dict[str, Any], update) -> RolloutState:  # type: ignore[no-untyped-def]
    """Apply ``update(current) -> dict`` atomically (optimistic WATCH/MULTI)."""
    key = rollout_key(prefix)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                current = decode_hash(pipe.hgetall(key))
                changes = update(current)
                pipe.multi()
                changes.update({"updated_by": event["by"], "updated_at": repr(event["at"])})
                for field, value in changes.items():
                    if value is None:
                        pipe.hdel(key, field)
                    else:
                        pipe.hset(key, field, value)
                pipe.lpush(history_key(prefix), json.dumps({**event, "before": current}))
                pipe.ltrim(history_key(prefix), 0, 199)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    return rollout_state(client, prefix=prefix)


def model_version_promote(
    client: redis.Redis, *, prefix: str, version: str, default_version: str | None = None,
    force: bool = False, by: str | None = None, baseline_window_seconds: float = 1800.0,
) -> RolloutState:
    """Make ``version`` active. The outgoing version's figures over the last
    ``baseline_window_seconds`` are kept as the yardstick of the guard (``models_registry.guard``)."""
    problems = check_servable(client, prefix=prefix, version=version)
    if problems and not force:
        raise RolloutRefused("; ".join(problems))
    event = {"action": "promote", "version": version, "forced": bool(problems), "problems": problems,
             "by": by or actor(), "at": time.time()}
    outgoing = rollout_state(client, prefix=prefix, default_version=default_version).active
    if outgoing and outgoing != version:
        figures = version_figures(client, prefix=prefix, version=outgoing, window_seconds=baseline_window_seconds)
        client.set(baseline_key(prefix, outgoing), json.dumps({**figures.to_json(), "recorded_at": time.time(),
                                                               "window_seconds": baseline_window_seconds}))

    def update(current: dict[str, str]) -> dict[str, Any]:
        active = current.get("active") or default_version
        if active == version:
            return {}
        changes: dict[str, Any] = {"active": version, "previous": active}
        if current.get(CANARY) == version:
            changes.update(canary=None, canary_weight=None)
        if current.get(SHADOW) == version:  # its jobs are live now; no copies of them
            changes.update(shadow=None, shadow_fraction=None)
        return changes

    return _change(client, prefix=prefix, event=event, update=update)


def baseline_figures(client: redis.Redis, *, prefix: str, version: str) -> Figures | None:
    raw = client.get(baseline_key(prefix, version))
    return Figures.from_json(json.loads(raw)) if raw else None


def model_version_rollback(
    client: redis.Redis, *, prefix: str, default_version: str | None = None, force: bool = False,
    by: str | None = None, reason: str | None = None,
) -> RolloutState:
    state = rollout_state(client, prefix=prefix, default_version=default_version)
    if not state.previous:
        raise RolloutRefused("there is no previous version to roll back to")
    problems = check_servable(client, prefix=prefix, version=state.previous)
    if problems and not force:
        raise RolloutRefused("; ".join(problems))
    event = {"action": "rollback", "version": state.previous, "from": state.active, "forced": bool(problems),
             "problems": problems, "by": by or actor(), "at": time.time()}
    if reason:
        event["reason"] = reason

    def update(current: dict[str, str]) -> dict[str, Any]:
        if current.get("previous") != state.previous:
            raise RolloutRefused("the rollout state changed meanwhile; look at `status` and retry")
        return {"active": state.previous, "previous": current.get("active") or default_version}

    return _change(client, prefix=prefix, event=event, update=update)


def model_version_canary(
    client: redis.Redis, *, prefix: str, version: str | None, weight: float = 0.0,
    force: bool = False, by: str | None = None,
) -> RolloutState:
    """Send ``weight`` (0..1) of new jobs to ``version``; ``version=None`` turns the canary off."""
    if version is None:
        event = {"action": "canary-off", "by": by or actor(), "at": time.time()}
        return _change(client, prefix=prefix, event=event,
                       update=lambda current: {"canary": None, "canary_weight": None})
    if not 0.0 < weight < 1.0:
        raise RolloutRefused("the canary weight must be between 0 and 1 (exclusive)")
    problems = check_servable(client, prefix=prefix, version=version)
    if problems and not force:
        raise RolloutRefused("; ".join(problems))
    event = {"action": "canary", "version": version, "weight": weight, "forced": bool(problems),
             "problems": problems, "by": by or actor(), "at": time.time()}
    return _change(client, prefix=prefix, event=event,
                   update=lambda current: {"canary": version, "canary_weight": repr(weight)})


def model_version_shadow(
    client: redis.Redis, *, prefix: str, version: str | None, fraction: float = 0.1,
    force: bool = False, by: str | None = None,
) -> RolloutState:
    """Copy ``fraction`` (0..1] of new jobs to ``version`` as shadow jobs (computed, never shown);
    ``version=None`` stops it."""
    if version is None:
        event = {"action": "shadow-off", "by": by or actor(), "at": time.time()}
        return _change(client, prefix=prefix, event=event,
                       update=lambda current: {"shadow": None, "shadow_fraction": None})
    if not 0.0 < fraction <= 1.0:
        raise RolloutRefused("the shadow fraction must be above 0 and at most 1")
    problems = check_servable(client, prefix=prefix, version=version)
    if problems and not force:
        raise RolloutRefused("; ".join(problems))
    event = {"action": "shadow", "version": version, "fraction": fraction, "forced": bool(problems),
             "problems": problems, "by": by or actor(), "at": time.time()}

    def update(current: dict[str, str]) -> dict[str, Any]:
        if current.get("active") == version:
            raise RolloutRefused(f"version {version} is active; shadow a candidate, not the active version")
        return {"shadow": version, "shadow_fraction": repr(fraction)}

    return _change(client, prefix=prefix, event=event, update=update)


def model_version_abort(
    client: redis.Redis, *, prefix: str, version: str, reason: str = "", by: str | None = None,
) -> RolloutState:
    """Take a candidate out of the rollout: its canary weight and shadow copies stop (the active
    version is untouched). Refuses for the active version: that is a rollback."""
    event = {"action": "abort", "version": version, "by": by or actor(), "at": time.time()}
    if reason:
        event["reason"] = reason

    def update(current: dict[str, str]) -> dict[str, Any]:
        if current.get("active") == version:
            raise RolloutRefused(f"version {version} is active; use rollback")
        changes: dict[str, Any] = {}
        if current.get(CANARY) == version:
            changes.update(canary=None, canary_weight=None)
        if current.get(SHADOW) == version:
            changes.update(shadow=None, shadow_fraction=None)
        return changes

    return _change(client, prefix=prefix, event=event, update=update)


def rollout_history(client: redis.Redis, *, prefix: str, limit: int = 20) -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.lrange(history_key(prefix), 0, limit - 1)]
