"""The queue contract between the API and the workers: task name, queue names, messages.

One Celery task, ``recognition.recognize``, with JSON keyword arguments ``job_id`` and
``request_id``; one queue per model version, ``recognize.<version>``. Both are the
contract between two images, spelled here and nowhere else.

The queues live in the Redis database that holds the job records (``REDIS_URL``):
the job-creation script checks a queue's depth atomically with routing the job, and a
draining worker moves leftover messages from one queue to another, so the broker and
the job store are one Redis by design (``config.settings`` refuses a different
``CELERY_BROKER_URL``).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

import redis

TASK_NAME = "recognition.recognize"  # never rename: workers of the old image consume it
QUEUE_PREFIX = "recognize."
# Where kombu's Redis transport keeps the messages workers took and have not acknowledged
# (its defaults; config.settings does not change them): a hash by delivery tag, and a sorted
# set of delivery tags by the time they were taken.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"


class TaskSender(Protocol):
    """What a Celery app offers to enqueue (``app.send_task``)."""

    def send_task(self, name: str, *, kwargs: dict[str, Any], queue: str, routing_key: str) -> Any: ...


def queue_for(version: str) -> str:
    """The queue that the workers of model ``version`` consume."""
    return f"{QUEUE_PREFIX}{version}"


def queue_depth(client: redis.Redis, version: str) -> int:
    """Messages waiting on ``version``'s queue (kombu's Redis transport keeps a list)."""
    return int(client.llen(queue_for(version)))


def recognition_send(app: TaskSender, *, job_id: str, request_id: str | None, queue: str) -> None:
    """Put one job's message on ``queue``."""
    app.send_task(TASK_NAME, kwargs={"job_id": job_id, "request_id": request_id},
                  queue=queue, routing_key=queue)


def message_task(raw: bytes | str) -> tuple[str, dict[str, Any]]:
    """(task name, kwargs) of one message as kombu's Redis transport stores it."""
    message = json.loads(raw)
    _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return message["headers"]["task"], kwargs


def taken_before(client: redis.Redis, cutoff: float, *, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
    """(delivery tag, kwargs) of recognition messages that a worker took before ``cutoff`` (epoch
    seconds) and has not acknowledged yet, oldest first, at most ``limit``; two round trips.
    A message that cannot be read is skipped (it is not ours to judge)."""
    tags = client.zrangebyscore(UNACKED_INDEX_KEY, "-inf", cutoff, start=0, num=limit)
    if not tags:
        return []
    out = []
    for tag, raw in zip(tags, client.hmget(UNACKED_KEY, tags), strict=True):
        if raw is None:
            continue  # acknowledged meanwhile
        try:
            message, _exchange, _routing_key = json.loads(raw)
            task, kwargs = message_task(json.dumps(message))
        except (ValueError, TypeError, KeyError):
            continue
        if task == TASK_NAME and isinstance(kwargs, dict):
            out.append((tag.decode() if isinstance(tag, bytes) else tag, kwargs))
    return out

