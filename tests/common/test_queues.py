"""The job message the creation script pushes is the one Celery's ``send_task`` would send."""

from __future__ import annotations

import json

import redis
from celery import Celery

from common.queues import QUEUE_PLACEHOLDER, TASK_NAME, message_task, recognition_message, recognition_send


def test_a_built_message_has_every_field_of_celery_s_own(redis_url: str, redis_client: redis.Redis) -> None:
    queue = "recognize.test-message-shape"
    sender = Celery("tests", broker=redis_url)
    sender.conf.update(task_serializer="json", accept_content=["json"])
    try:
        recognition_send(sender, job_id="j1", request_id="r1", queue=queue)
        theirs = json.loads(redis_client.rpop(queue))
    finally:
        sender.close()
    ours = json.loads(recognition_message(job_id="j1", request_id="r1", queue=queue))
    assert set(ours) == set(theirs)
    assert set(ours["headers"]) == set(theirs["headers"]) and set(ours["properties"]) == set(theirs["properties"])
    for key in ("lang", "task", "retries", "timelimit", "argsrepr", "kwargsrepr", "parent_id", "eta", "expires"):
        assert ours["headers"][key] == theirs["headers"][key], key
    for key in ("delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert ours["properties"][key] == theirs["properties"][key], key
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    assert ours["body"] == theirs["body"]  # the same task arguments, byte for byte
    assert message_task(json.dumps(ours)) == (TASK_NAME, {"job_id": "j1", "request_id": "r1"})


def test_each_message_has_its_own_ids_and_a_placeholder_for_the_queue() -> None:
    a, b = (json.loads(recognition_message(job_id="j", request_id=None)) for _ in range(2))
    assert a["headers"]["id"] != b["headers"]["id"]
    assert a["properties"]["delivery_tag"] != b["properties"]["delivery_tag"]
    assert a["properties"]["delivery_info"]["routing_key"] == QUEUE_PLACEHOLDER
