"""Worker heartbeats in Redis: who is ready to serve which model version.

Each ready worker keeps a member in the sorted set ``<prefix>workers:<version>``
whose score is the time its heartbeat expires, plus a small JSON record with its
details. A worker that dies simply stops renewing; readers count only members
whose expiry lies in the future, so no cleanup is needed for correctness.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from common.queues import takers_key


def workers_key(prefix: str, version: str) -> str:
    return f"{prefix}workers:{version}"


def worker_key(prefix: str, worker_id: str) -> str:
    return f"{prefix}worker:{worker_id}"


def beat(
    client: redis.Redis,
    *,
    prefix: str,
    version: str,
    worker_id: str,
    ttl_seconds: float,
    info: dict[str, Any],
    queue: str | None = None,
) -> None:
    """Renew ``worker_id``'s heartbeat; with ``queue``, also (again) register it as a worker that
    takes the messages of ``queue`` into its own list (``common.queues.takers``)."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.zadd(workers_key(prefix, version), {worker_id: now + ttl_seconds})
    if queue is not None:
        pipe.hset(takers_key(prefix), worker_id, queue)
    pipe.zremrangebyscore(workers_key(prefix, version), "-inf", now)
    pipe.set(
        worker_key(prefix, worker_id),
        json.dumps({**info, "version": version, "beat_at": now}),
        px=int(ttl_seconds * 1000),
    )
    pipe.execute()


def withdraw(client: redis.Redis, *, prefix: str, version: str, worker_id: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.zrem(workers_key(prefix, version), worker_id)
    pipe.delete(worker_key(prefix, worker_id))
    pipe.execute()


def ready_workers(client: redis.Redis, *, prefix: str, version: str) -> list[str]:
    members = client.zrangebyscore(workers_key(prefix, version), time.time(), "+inf")
    return [m.decode() if isinstance(m, bytes) else m for m in members]


def worker_details(client: redis.Redis, *, prefix: str, version: str) -> list[dict[str, Any]]:
    """Each ready worker of ``version`` with the details of its last heartbeat."""
    details = []
    for worker_id in ready_workers(client, prefix=prefix, version=version):
        raw = client.get(worker_key(prefix, worker_id))
        if raw:
            details.append({"id": worker_id, **json.loads(raw)})
    return details


def known_versions(client: redis.Redis, *, prefix: str) -> list[str]:
    """The versions that have (or had) workers announcing themselves."""
    versions = set()
    start = len(workers_key(prefix, ""))
    for key in client.scan_iter(match=workers_key(prefix, "*"), count=500):
        versions.add(key.decode()[start:])
    return sorted(versions)
