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
import os
import socket
import uuid
from typing import Any, Protocol

import redis

TASK_NAME = "recognition.recognize"  # never rename: workers of the old image consume it
QUEUE_PREFIX = "recognize."
# Where kombu's Redis transport keeps the messages workers took and have not acknowledged
# (its defaults; config.settings does not change them): a hash by delivery tag, and a sorted
# set of delivery tags by the time they were taken.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"


def taking_key(prefix: str, worker_id: str) -> str:
    """The list that worker ``worker_id`` takes its messages into (``config.broker``): a message
    moves there from its queue in one atomic step and leaves it in the step that records it as
    unacknowledged, so that a worker killed between the two leaves it here, never nowhere."""
    return f"{prefix}taking:{worker_id}"


def takers_key(prefix: str) -> str:
    """A hash: each worker that takes messages into its own list, and the queue it takes from."""
    return f"{prefix}takers"


# Every message of a taking list back to the right end of its queue (the end workers take
# from: they were the oldest), the newest first so that the oldest is taken first; then the
# worker is registered as a taker of the queue, or forgotten as one. One step: a message is
# always in exactly one list. Nothing (-1) when ARGV[3] names a key that exists: the
# worker's heartbeat, checked here so that a worker that beats meanwhile keeps its list.
_RETURN_TAKEN = """
if ARGV[3] ~= '' and redis.call('EXISTS', ARGV[3]) == 1 then
  return -1
end
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
if ARGV[2] == 'register' then
  redis.call('HSET', KEYS[3], ARGV[1], KEYS[2])
else
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return moved
"""


def takers(client: redis.Redis, prefix: str) -> dict[str, str]:
    """Each registered taker's worker id and the queue it takes from."""
    return {_text(worker): _text(queue) for worker, queue in client.hgetall(takers_key(prefix)).items()}


def return_taken(client: redis.Redis, *, prefix: str, worker_id: str, queue: str, register: bool = False,
                 unless_exists: str = "") -> int:
    """Put the messages left in ``worker_id``'s taking list back on ``queue``; then forget the
    worker as a taker, or with ``register`` register it as the taker of ``queue`` (a consumer
    that starts to take: what an earlier connection of its worker took and may never have
    delivered goes back first). Returns how many went back; -1, and nothing done, when the key
    ``unless_exists`` (the worker's heartbeat) exists."""
    return int(client.eval(_RETURN_TAKEN, 3, taking_key(prefix, worker_id), queue, takers_key(prefix), worker_id,
                           "register" if register else "forget", unless_exists))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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


# Where a message names its queue before the job-creation script has chosen it (common.jobstore
# puts the queue's name in its place: the script routes the job and pushes its message at once).
QUEUE_PLACEHOLDER = "@queue@"
_HOST = socket.gethostname()
_REPLY_TO = str(uuid.uuid4())
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def recognition_message(*, job_id: str, request_id: str | None, queue: str = QUEUE_PLACEHOLDER) -> str:
    """One job's message exactly as Celery's ``send_task`` and kombu's Redis transport write it
    (Celery's task protocol 2, JSON body, base64 body encoding): what a worker takes off
    ``queue``'s list. Built here so that the job-creation script can push it in the same atomic
    step that creates and routes the job (one round trip, and no job without its message);
    ``tests/common/test_queues.py`` compares it, key by key, with what ``send_task`` writes."""
    task_id = str(uuid.uuid4())
    kwargs = {"job_id": job_id, "request_id": request_id}
    body = json.dumps([[], kwargs, _EMBED])
    return json.dumps({
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": TASK_NAME, "id": task_id, "shadow": None, "eta": None, "expires": None,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
            "parent_id": None, "argsrepr": "()", "kwargsrepr": repr(kwargs), "origin": f"gen{os.getpid()}@{_HOST}",
            "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
        },
        "properties": {
            "correlation_id": task_id, "reply_to": _REPLY_TO, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })


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
            out.append((_text(tag), kwargs))
    return out

