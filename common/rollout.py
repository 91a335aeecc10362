"""The rollout state: which model version serves new jobs. Read here, changed by the registry.

One Redis hash, ``<prefix>rollout``, with the fields ``active``, ``previous``, ``canary``,
``canary_weight``, ``shadow``, ``shadow_fraction``, ``updated_by`` and ``updated_at``. The API
reads it atomically with each job's creation (the script in ``common.jobstore`` reads the same fields); the
workers read it to decide where an overdue or left-over job goes; only
``models_registry.rollout`` changes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

ACTIVE = "active"
PREVIOUS = "previous"
CANARY = "canary"
CANARY_WEIGHT = "canary_weight"
SHADOW = "shadow"
SHADOW_FRACTION = "shadow_fraction"


@dataclass(frozen=True)
class RolloutState:
    active: str | None
    previous: str | None
    canary: str | None
    canary_weight: float
    updated_by: str | None
    updated_at: float | None
    # A version that gets shadow copies of a share of new jobs (computed, never shown).
    shadow: str | None = None
    shadow_fraction: float = 0.0

    def serves(self, version: str) -> bool:
        """Whether ``version`` gets new jobs (as the active or the canary version)."""
        return version in (self.active, self.canary)


def rollout_key(prefix: str) -> str:
    return f"{prefix}rollout"


def history_key(prefix: str) -> str:
    return f"{prefix}rollout:history"


def baseline_key(prefix: str, version: str) -> str:
    """The figures ``version`` had when another version replaced it (the guard's yardstick)."""
    return f"{prefix}baseline:{version}"


def verified_key(prefix: str, version: str) -> str:
    return f"{prefix}verified:{version}"


def decode_hash(raw: dict) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def rollout_state(client: redis.Redis, *, prefix: str, default_version: str | None = None) -> RolloutState:
    """The state as stored; ``default_version`` is active while the registry has set none."""
    raw = decode_hash(client.hgetall(rollout_key(prefix)))
    return RolloutState(
        active=raw.get(ACTIVE) or default_version,
        previous=raw.get(PREVIOUS) or None,
        canary=raw.get(CANARY) or None,
        canary_weight=float(raw.get(CANARY_WEIGHT) or 0.0),
        updated_by=raw.get("updated_by"),
        updated_at=float(raw["updated_at"]) if raw.get("updated_at") else None,
        shadow=raw.get(SHADOW) or None,
        shadow_fraction=float(raw.get(SHADOW_FRACTION) or 0.0),
    )


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
