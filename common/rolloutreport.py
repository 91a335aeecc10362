"""The rollout report: what ``python -m models_registry status --json`` prints and
``GET /v1/rollout`` answers, built in one place.

Read-only: the rollout state (``common.rollout``), each version's ready workers
(``common.heartbeat``), queue depth, whether ``verify`` passed, and its live figures over a
window (``common.livestats``): jobs, accuracy and feedback per field, and for the shadow
version its agreement with the active version.
"""

from __future__ import annotations

from typing import Any

import redis

from common.heartbeat import known_versions, worker_details
from common.livestats import FIELDS, shadow_comparison, version_figures
from common.queues import queue_depth, queue_for
from common.rollout import rollout_state, verified_key

DEFAULT_WINDOW_SECONDS = 86400.0


def rollout_report(
    client: redis.Redis, *, prefix: str, default_version: str | None,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
) -> dict[str, Any]:
    """Active, previous, canary (+ weight) and shadow (+ fraction) versions, and per version
    (every one with workers, and each the state names): role, ready workers, queue and its
    depth, verified, and its live figures over the last ``window_seconds``."""
    state = rollout_state(client, prefix=prefix, default_version=default_version)
    versions = set(known_versions(client, prefix=prefix))
    versions |= {v for v in (state.active, state.previous, state.canary) if v}
    rows = []
    for version in sorted(versions):
        workers = worker_details(client, prefix=prefix, version=version)
        verified = client.hget(verified_key(prefix, version), "manifest_sha256")
        rows.append({"version": version, "ready_workers": len(workers),
                     "queue": queue_for(version), "queue_depth": queue_depth(client, version),
                     "verified": bool(verified),
                     "role": ("active" if version == state.active else "canary" if version == state.canary
                              else "previous" if version == state.previous else "")})
    for row in rows:
        figures = version_figures(client, prefix=prefix, version=row["version"], window_seconds=window_seconds)
        row["jobs"] = figures.jobs
        row["accuracy"] = {name: figures.accuracy(name) for name in FIELDS}
        row["feedback"] = {name: figures.feedback_count(name) for name in FIELDS}
        if state.shadow == row["version"] and state.active:
            comparison = shadow_comparison(client, prefix=prefix, candidate=row["version"], active=state.active,
                                           window_seconds=window_seconds)
            row["shadow_agreement"] = {name: comparison.agreement(name) for name in FIELDS}
            row["shadow_compared"] = comparison.n
    return {"active": state.active, "previous": state.previous, "canary": state.canary,
            "canary_weight": state.canary_weight, "shadow": state.shadow,
            "shadow_fraction": state.shadow_fraction, "updated_by": state.updated_by,
            "updated_at": state.updated_at, "window_seconds": window_seconds, "versions": rows}
