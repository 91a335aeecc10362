"""The per-process finish listener against a real Redis: woken by the finish script,
robust to lost notifications and to a dropped subscription."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from common.jobstore import TERMINAL, JobStore
from common.waiting import FinishListener


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> JobStore:
    return JobStore(redis_client, key_prefix, ttl_seconds=60)


@pytest.fixture
def listener(redis_url: str, key_prefix: str) -> Iterator[FinishListener]:
    # Its own client, as in the API process; recheck far beyond the tests' timeouts, so
    # only a notification (or a re-subscription) can end a wait early.
    client = redis.Redis.from_url(redis_url)
    listener = FinishListener.for_process(client, key_prefix, recheck_seconds=60).start(ready_timeout=10)
    assert listener.subscribed
    yield listener
    listener.stop()
    client.close()


def create(store: JobStore, listener: FinishListener | None) -> str:
    job_id = store.new_id()
    fields = {"image_key": job_id}
    if listener is not None:
        fields["notify"] = listener.channel
    store.create(job_id=job_id, fields=fields, default_version="1", max_queue_depth=0, canary_draw=0.5)
    return job_id


def wait(listener: FinishListener, store: JobStore, job_id: str, event: threading.Event,
         timeout: float) -> dict[str, str] | None:
    return listener.wait(event, lambda: store.get(job_id), lambda r: r.get("status") in TERMINAL, timeout)


def finish_in(seconds: float, store: JobStore, job_id: str) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        store.succeed(job_id, result={"ok": True}, timings={})

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_waiter_is_woken_by_the_finish_of_its_job(store: JobStore, listener: FinishListener) -> None:
    job_id = create(store, listener)
    with listener.registered(job_id) as event:
        finisher = finish_in(0.2, store, job_id)
        record = wait(listener, store, job_id, event, timeout=30)
    finisher.join()
    assert record is not None and record["status"] == "succeeded"
    assert "notify" in record  # the channel rides in the record; clients never see it


def test_a_job_finished_before_the_wait_is_returned_at_once(store: JobStore, listener: FinishListener) -> None:
    job_id = create(store, listener)
    with listener.registered(job_id) as event:
        store.succeed(job_id, result={}, timings={})
        record = wait(listener, store, job_id, event, timeout=30)
    assert record is not None and record["status"] == "succeeded"


def test_only_the_job_s_own_waiter_is_woken(store: JobStore, listener: FinishListener) -> None:
    mine, other = create(store, listener), create(store, listener)
    with listener.registered(mine) as my_event, listener.registered(other) as other_event:
        store.succeed(other, result={}, timings={})
        assert other_event.wait(10)
        assert not my_event.is_set()


def test_a_wait_ends_at_its_timeout_with_the_job_as_it_is(store: JobStore, listener: FinishListener) -> None:
    job_id = create(store, listener)
    with listener.registered(job_id) as event:
        record = wait(listener, store, job_id, event, timeout=0.3)
    assert record is not None and record["status"] == "queued"


def test_a_wait_ends_at_the_first_recheck_its_stop_test_says_so(redis_url: str, store: JobStore,
                                                                key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    listener = FinishListener.for_process(client, key_prefix, recheck_seconds=0.1).start(ready_timeout=10)
    job_id = create(store, listener)
    asked: list[float] = []
    gone_at = time.monotonic() + 0.3

    def stop() -> bool:
        asked.append(time.monotonic())
        return asked[-1] >= gone_at

    with listener.registered(job_id) as event:
        record = listener.wait(event, lambda: store.get(job_id), lambda r: r.get("status") in TERMINAL, 30,
                               stop=stop)
    listener.stop()
    client.close()
    assert record is not None and record["status"] == "queued"  # as it is: the job goes on
    assert len(asked) >= 2 and asked[-1] - gone_at < 0.5  # asked at each recheck, ended at the first "stop"


def test_a_lost_notification_costs_at_most_the_recheck_interval(redis_url: str, store: JobStore,
                                                                key_prefix: str) -> None:
    # A job finished by a worker that predates the notify channel publishes nothing there.
    client = redis.Redis.from_url(redis_url)
    listener = FinishListener.for_process(client, key_prefix, recheck_seconds=0.1).start(ready_timeout=10)
    job_id = create(store, None)
    with listener.registered(job_id) as event:
        finisher = finish_in(0.2, store, job_id)
        record = wait(listener, store, job_id, event, timeout=30)
    finisher.join()
    listener.stop()
    client.close()
    assert record is not None and record["status"] == "succeeded"


def test_it_resubscribes_after_its_connection_is_killed(store: JobStore, listener: FinishListener) -> None:
    admin = store.client
    job_id = create(store, listener)
    with listener.registered(job_id) as event:
        killed = admin.client_kill_filter(_type="pubsub", skipme=True)
        assert killed >= 1
        deadline = time.monotonic() + 20
        while admin.pubsub_numsub(listener.channel)[0][1] != 1:
            assert time.monotonic() < deadline, "the listener never subscribed again"
            time.sleep(0.05)
        store.succeed(job_id, result={}, timings={})
        record = wait(listener, store, job_id, event, timeout=30)
    assert record is not None and record["status"] == "succeeded"


def test_a_listener_of_each_process_has_its_own_channel(redis_client: redis.Redis, key_prefix: str) -> None:
    a = FinishListener.for_process(redis_client, key_prefix)
    b = FinishListener.for_process(redis_client, key_prefix)
    assert a.channel != b.channel and a.channel.startswith(f"{key_prefix}notify:")


def test_a_waiter_registered_before_its_job_existed_reads_the_record_once(
    store: JobStore, listener: FinishListener
) -> None:
    reads: list[float] = []

    def read() -> dict[str, str] | None:
        reads.append(time.monotonic())
        return store.get(job_id)

    job_id = store.new_id()
    with listener.registered(job_id) as event:
        create_fields = {"image_key": job_id, "notify": listener.channel}
        store.create(job_id=job_id, fields=create_fields, default_version="1", max_queue_depth=0, canary_draw=0.5)
        finisher = finish_in(0.2, store, job_id)
        started = time.monotonic()
        record = listener.wait(event, read, lambda r: r.get("status") in TERMINAL, 30, read_first=False)
    finisher.join()
    assert record is not None and record["status"] == "succeeded"
    assert len(reads) == 1 and reads[0] - started >= 0.15  # after the wake-up, not before


def test_without_the_first_read_a_job_already_finished_or_a_timeout_still_answers_at_once(
    store: JobStore, listener: FinishListener
) -> None:
    job_id = create(store, listener)
    with listener.registered(job_id) as event:
        store.succeed(job_id, result={}, timings={})
        started = time.monotonic()
        record = listener.wait(event, lambda: store.get(job_id), lambda r: r.get("status") in TERMINAL, 30,
                               read_first=False)
        assert record is not None and record["status"] == "succeeded" and time.monotonic() - started < 5
    other = create(store, listener)
    with listener.registered(other) as event:
        record = listener.wait(event, lambda: store.get(other), lambda r: r.get("status") in TERMINAL, 0.3,
                               read_first=False)
    assert record is not None and record["status"] == "queued"
