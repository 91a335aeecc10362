"""The API's views and services in-process (DRF's APIClient): a real Redis, a real Celery app
sending to it, a local image store. Gunicorn-level tests (tests/integration) keep what only
real sockets show: slow clients, chunked bodies, process-wide listeners, real workers."""

from __future__ import annotations

import io
import threading
import uuid

import pytest
import redis

from common import heartbeat
from common.apikeys import KeyPolicy
from common.errors import ServiceUnavailable
from common.queues import TASK_NAME, message_task
from recognition_api import services
from tests.recognition_api.conftest import Api, photo, post, reset_services


def test_a_photo_is_stored_recorded_and_queued_for_the_active_version(api: Api) -> None:
    response = post(api)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["model"]["version"] == api.version
    assert response["Location"].endswith(f"/v1/recognitions/{body['id']}")
    assert api.messages() == [{"task": TASK_NAME, "job_id": body["id"], "request_id": response["X-Request-ID"]}]
    record = api.jobs().get(body["id"])
    assert (record["queue"], record["client"], record["image_format"]) == (api.queue, "app", "jpeg")
    assert api.stored_images() == [body["id"]]


def test_the_unversioned_path_is_the_same_endpoint(api: Api) -> None:
    assert post(api, "/recognize").status_code == 202
    assert len(api.messages()) == 1


def test_a_request_without_a_key_is_refused_and_leaves_nothing(api: Api) -> None:
    api.client.credentials()
    response = post(api)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert api.messages() == [] and api.stored_images() == []


def test_a_wrong_key_is_refused(api: Api) -> None:
    api.client.credentials(HTTP_AUTHORIZATION="Bearer rk_not-a-key")
    response = post(api)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_api_key")


def test_a_file_that_is_not_an_image_is_refused_and_leaves_nothing(api: Api) -> None:
    text = io.BytesIO(b"not an image")
    text.name = "photo.jpg"
    response = api.client.post("/v1/recognize", {"image": text}, format="multipart")
    assert (response.status_code, response.json()["error"]["code"]) == (415, "image_not_an_image")
    assert api.messages() == [] and api.stored_images() == []


def test_a_full_queue_answers_429_with_retry_after_and_forgets_the_photo(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    settings.MAX_QUEUE_DEPTH = 1
    assert post(api).status_code == 202
    response = post(api)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "queue_full"
    assert int(response["Retry-After"]) >= 1
    assert len(api.messages()) == 1 and len(api.stored_images()) == 1


def test_a_failed_enqueue_answers_503_and_removes_the_photo(
    api: Api, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_create(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise redis.ConnectionError("redis away")

    monkeypatch.setattr(services.job_store(), "create", broken_create)
    with pytest.raises(ServiceUnavailable):
        services.recognition_job_create(data=photo().getvalue(), client=KeyPolicy("app"), request_id="r1")
    assert api.stored_images() == []
    assert not api.redis.keys(f"{api.prefix}job:*")


def test_the_job_and_its_message_are_made_in_one_step_as_celery_would_send_it(api: Api) -> None:
    job_id = post(api).json()["id"]
    (message,) = api.messages()
    request_id = api.jobs().get(job_id)["request_id"]
    assert message == {"task": "recognition.recognize", "job_id": job_id, "request_id": request_id}


def test_a_job_no_replica_acknowledged_answers_503_and_is_withdrawn(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    # The tests' Redis has no replica: WAIT answers 0 when its time is up.
    settings.REDIS_WAIT_REPLICAS = 1
    settings.REDIS_WAIT_TIMEOUT_MS = 20
    response = post(api)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_replicated"
    assert "0 of 1 Redis replicas" in response.json()["error"]["message"]
    assert int(response["Retry-After"]) >= 1
    assert api.stored_images() == []
    assert not api.redis.keys(f"{api.prefix}job:*")


def test_a_job_is_read_back_with_its_result(api: Api) -> None:
    job_id = post(api).json()["id"]
    field = {"value": "red", "confidence": 0.9, "alternatives": []}
    api.jobs().succeed(job_id, result={"color": field}, timings={"inference": 1.0}, model_version=api.version)
    response = api.client.get(f"/v1/recognitions/{job_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded" and body["result"]["color"]["value"] == "red"


def test_an_unknown_job_is_a_404_with_its_code(api: Api) -> None:
    for job_id in (uuid.uuid4().hex, "not-an-id"):
        response = api.client.get(f"/v1/recognitions/{job_id}")
        assert (response.status_code, response.json()["error"]["code"]) == (404, "job_not_found")


def test_a_waiting_request_gets_the_result_as_soon_as_a_worker_finishes_it(api: Api) -> None:
    def worker() -> None:  # takes the message off the queue and finishes the job, as a worker does
        _queue, raw = api.redis.brpop([api.queue], timeout=10)
        _task, kwargs = message_task(raw)
        api.jobs().succeed(kwargs["job_id"], result={}, timings={}, model_version=api.version)

    thread = threading.Thread(target=worker)
    thread.start()
    response = post(api, QUERY_STRING="wait=10")
    thread.join(10)
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "succeeded"


def test_an_invalid_wait_is_refused(api: Api) -> None:
    response = post(api, QUERY_STRING="wait=forever")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_parameter")
    assert api.messages() == []


def test_readiness_needs_a_ready_worker_of_the_active_version(api: Api) -> None:
    assert api.client.get("/healthz").status_code == 200
    response = api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["ready_workers"] == 0
    heartbeat.beat(api.redis, prefix=api.prefix, version=api.version, worker_id="w:1", ttl_seconds=30, info={})
    response = api.client.get("/readyz")
    assert response.status_code == 200
    assert (response.json()["active_version"], response.json()["ready_workers"]) == (api.version, 1)


def test_without_redis_it_answers_503_with_retry_after_not_a_500(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.REDIS_SOCKET_TIMEOUT = 0.2
    reset_services()
    response = post(api)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert response["Retry-After"]
    assert api.stored_images() == []
    assert api.client.get("/readyz").status_code == 503


def test_a_client_is_gone_once_it_has_closed_its_connection_or_its_side_of_it() -> None:
    import socket
    from types import SimpleNamespace

    from recognition_api.views import _client_gone

    assert _client_gone(SimpleNamespace(META={})) is None  # not under Gunicorn: nobody to ask
    for hang_up in (lambda peer: peer.close(), lambda peer: peer.shutdown(socket.SHUT_WR)):
        server, peer = socket.socketpair()
        with server, peer:
            gone = _client_gone(SimpleNamespace(META={"gunicorn.socket": server}))
            assert gone is not None and not gone()
            peer.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request is not a hang-up
            assert not gone()
            hang_up(peer)
            assert gone()


def test_a_queued_request_is_made_way_for_once_and_only_when_every_thread_is_busy() -> None:
    import socket

    from recognition_api.threadqueue import ThreadQueue

    queue = ThreadQueue()
    queue.threads = 2
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        (ours1, theirs1), (ours2, theirs2), (bare, _), (closed, closer) = pairs
        queue.started(100)  # a waiting request: one of two threads busy
        theirs1.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        queue.added(1, ours1.fileno())
        assert not queue.make_way()  # a thread is free: it takes the request in a moment
        queue.started(101)  # the other thread waits too
        assert [queue.make_way(), queue.make_way()] == [True, False]  # made way for once
        queue.added(3, bare.fileno())  # a connection without a request yet
        closer.close()
        queue.added(4, closed.fileno())  # a kept-alive connection its client closed
        assert not queue.make_way()
        theirs2.sendall(b"POST /recognize HTTP/1.1\r\n")
        queue.added(2, ours2.fileno())
        assert [queue.make_way(), queue.make_way()] == [True, False]
        queue.finished()  # the first waiter's thread is free
        queue.started(1)
        assert queue.queued == 3 and not queue.make_way()
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_waiting_request_makes_way_for_a_queued_one_only_after_a_while(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket
    import time
    from types import SimpleNamespace

    from recognition_api import threadqueue, views

    queue = threadqueue.ThreadQueue()
    queue.threads = 1
    monkeypatch.setattr(threadqueue, "QUEUE", queue)
    monkeypatch.setattr(views, "_MAKE_WAY_AFTER_SECONDS", 0.2)  # a second in production
    ours, theirs = socket.socketpair()
    with ours, theirs:
        queue.started(1)  # this request's thread: the only one
        cut = views._wait_cut(SimpleNamespace(META={}))
        theirs.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        queue.added(2, ours.fileno())
        assert cut() is None  # its job just queued: the wait starts now
        assert cut() is None  # a client polling with ?wait waits a while each time
        time.sleep(0.25)
        assert cut() == "threads_busy"
        assert cut() is None  # that request is made way for already
