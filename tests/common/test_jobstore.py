"""Job records against a real Redis: routing, claims, idempotent finishes, waiting."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from common.jobstore import JobStore
from harness import start_redis


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> JobStore:
    return JobStore(redis_client, key_prefix, ttl_seconds=60)


def create(store: JobStore, draw: float = 0.5, max_depth: int = 0, default: str = "1"):  # type: ignore[no-untyped-def]
    job_id = store.new_id()
    return job_id, store.create(job_id=job_id, fields={"image_key": job_id}, default_version=default,
                                max_queue_depth=max_depth, canary_draw=draw)


def test_it_routes_to_the_default_version_without_rollout_state(store: JobStore) -> None:
    job_id, routed = create(store)
    assert (routed.outcome, routed.version, routed.queue) == ("ok", "1", "recognize.1")
    record = store.get(job_id)
    assert record is not None
    assert record["status"] == "queued" and record["model_version"] == "1"
    assert 0 < store.client.ttl(store.job_key(job_id)) <= 60


def test_it_routes_to_the_active_and_canary_versions(store: JobStore) -> None:
    store.client.hset(store.rollout_key, mapping={"active": "2", "canary": "3", "canary_weight": "0.2"})
    assert create(store, draw=0.5)[1].version == "2"
    assert create(store, draw=0.1)[1].version == "3"


def test_it_refuses_when_no_version_is_active(store: JobStore) -> None:
    assert create(store, default="")[1].outcome == "no_model"


def test_it_refuses_when_the_queue_is_at_its_bound(store: JobStore) -> None:
    store.client.rpush("recognize.9", "a", "b")
    try:
        job_id, routed = create(store, max_depth=2, default="9")
        assert (routed.outcome, routed.depth) == ("full", 2)
        assert store.get(job_id) is None
    finally:
        store.client.delete("recognize.9")


def test_a_job_whose_estimated_wait_is_over_its_budget_is_refused_as_late(store: JobStore) -> None:
    jobs = [create(store)[0] for _ in range(30)]
    # No completion yet: no estimate, so no budget refuses anything.
    job_id = store.new_id()
    assert store.create(job_id=job_id, fields={}, default_version="1", max_queue_depth=0, canary_draw=0.5,
                        budget_seconds=0.001).outcome == "ok"
    for done in jobs[:10]:
        assert store.succeed(done, result={}, timings={}, model_version="1")
    store.fail(jobs[10], "image_decode_failed", "x", model_version="1")  # leaves the backlog, not the rate
    time.sleep(1.1)  # the rate counts whole seconds
    # 20 unfinished jobs at 10 finished in the last 1-2 s: a wait of 2-4 s.
    late = store.create(job_id=store.new_id(), fields={}, default_version="1", max_queue_depth=0,
                        canary_draw=0.5, budget_seconds=1.0)
    assert late.outcome == "late" and late.version == "1" and late.backlog == 20
    assert 5.0 <= late.rate <= 10.0 and late.wait_seconds == pytest.approx(late.backlog / late.rate)
    fits = store.create(job_id=store.new_id(), fields={}, default_version="1", max_queue_depth=0,
                        canary_draw=0.5, budget_seconds=10.0)
    assert fits.outcome == "ok"


def test_a_pace_from_fewer_than_five_completions_refuses_nothing(store: JobStore) -> None:
    jobs = [create(store)[0] for _ in range(30)]
    for done in jobs[:4]:  # workers just started (or a burst after a quiet spell): 4 done in the window
        assert store.succeed(done, result={}, timings={}, model_version="1")
    time.sleep(1.1)
    admitted = store.create(job_id=store.new_id(), fields={}, default_version="1", max_queue_depth=0,
                            canary_draw=0.5, budget_seconds=0.001)
    assert admitted.outcome == "ok"


def test_a_withdrawn_job_leaves_no_trace_in_the_backlogs(store: JobStore, redis_client: redis.Redis) -> None:
    job_id = store.new_id()
    store.create(job_id=job_id, fields={"client": "app"}, default_version="1", max_queue_depth=0,
                 canary_draw=0.5, client="app", client_max_jobs=5)
    prefix = store.prefix
    assert redis_client.zcard(f"{prefix}backlog:1") == redis_client.zcard(f"{prefix}keyjobs:app") == 1
    store.delete(job_id)
    assert store.get(job_id) is None
    assert redis_client.zcard(f"{prefix}backlog:1") == redis_client.zcard(f"{prefix}keyjobs:app") == 0
    assert redis_client.zscore(store.pending_key, job_id) is None


def test_each_claim_counts_a_delivery_and_the_limit_ends_it(redis_client: redis.Redis, key_prefix: str) -> None:
    store = JobStore(redis_client, key_prefix, ttl_seconds=60, lease_seconds=0.0)  # every lease already over
    job_id, _ = create(store)
    first = store.claim(job_id, worker="w1", max_deliveries=2)
    assert (first.outcome, first.deliveries, first.record["status"]) == ("claimed", 1, "running")
    assert store.claim(job_id, worker="w2", max_deliveries=2).deliveries == 2
    assert store.claim(job_id, worker="w3", max_deliveries=2).outcome == "exhausted"
    assert store.fail(job_id, "delivery_limit_exceeded", "stopped")
    assert store.get(job_id)["status"] == "failed"


def test_the_first_terminal_write_wins(store: JobStore) -> None:
    job_id, _ = create(store)
    store.claim(job_id, worker="w1", max_deliveries=3)
    assert store.succeed(job_id, result={"x": 1}, timings={}) is True
    assert store.fail(job_id, "late", "a redelivered copy failed") is False
    assert store.succeed(job_id, result={"x": 2}, timings={}) is False
    record = store.get(job_id)
    assert record["status"] == "succeeded" and record["result"] == '{"x":1}'
    assert store.claim(job_id, worker="w2", max_deliveries=3).outcome == "done"


def test_it_never_resurrects_an_expired_job(store: JobStore) -> None:
    job_id, _ = create(store)
    store.delete(job_id)
    assert store.claim(job_id, worker="w1", max_deliveries=3).outcome == "missing"
    assert store.succeed(job_id, result={}, timings={}) is False
    assert store.get(job_id) is None


def test_a_waiting_reader_wakes_when_the_job_finishes(store: JobStore) -> None:
    job_id, _ = create(store)

    def finish_later() -> None:
        time.sleep(0.3)
        store.succeed(job_id, result={"ok": True}, timings={})

    threading.Thread(target=finish_later).start()
    started = time.monotonic()
    record = store.wait(job_id, timeout=10)
    elapsed = time.monotonic() - started
    assert record["status"] == "succeeded"
    assert elapsed < 5  # woken by the notification, not by the timeout


def test_a_wait_ends_at_its_timeout_with_the_job_as_it_is(store: JobStore) -> None:
    job_id, _ = create(store)
    started = time.monotonic()
    record = store.wait(job_id, timeout=0.3)
    assert record["status"] == "queued"
    assert 0.25 < time.monotonic() - started < 5


def test_a_waiting_reader_whose_stop_test_says_so_stops_at_a_recheck_with_the_record_as_it_is(
    store: JobStore,
) -> None:
    job_id, _ = create(store)
    asked: list[float] = []
    started = time.monotonic()

    def stop() -> bool:
        asked.append(time.monotonic())
        if len(asked) == 2:  # the job starts while its client waits: a claim publishes nothing
            store.claim(job_id, worker="w1", max_deliveries=3)
        return asked[-1] - started >= 0.3

    record = store.wait(job_id, timeout=30, stop=stop, recheck_seconds=0.1)
    assert record["status"] == "running"  # read again after each re-check: as it is now
    assert 3 <= len(asked) <= 8 and time.monotonic() - started < 5  # asked about every 0.1 s: no busy loop


def test_a_waiting_reader_still_wakes_at_the_finish_while_its_client_is_asked_after(store: JobStore) -> None:
    job_id, _ = create(store)
    threading.Timer(0.3, lambda: store.succeed(job_id, result={}, timings={})).start()
    started = time.monotonic()
    record = store.wait(job_id, timeout=30, stop=lambda: False, recheck_seconds=10)
    assert record["status"] == "succeeded" and time.monotonic() - started < 5


def test_finishing_many_jobs_takes_one_round_trip(store: JobStore) -> None:
    ids = [create(store)[0] for _ in range(5)]
    from common.jobstore import failed_fields, succeeded_fields

    finishes = [(i, succeeded_fields(result={"n": n}, timings={})) for n, i in enumerate(ids[:4])]
    finishes.append((ids[4], failed_fields("image_decode_failed", "bad")))
    assert store.finish_many(finishes) == [True] * 5
    assert [store.get(i)["status"] for i in ids] == ["succeeded"] * 4 + ["failed"]


def test_a_canary_at_weight_0_2_gets_a_fifth_of_new_jobs(store: JobStore) -> None:
    """2000 jobs routed by the real script with seeded draws: within 4 standard deviations."""
    import random

    store.client.hset(store.rollout_key, mapping={"active": "1", "canary": "2", "canary_weight": "0.2"})
    draws = random.Random(20261129)
    n = 2000
    canary = sum(
        store.create(job_id=store.new_id(), fields={}, default_version="1", max_queue_depth=0,
                     canary_draw=draws.random()).version == "2"
        for _ in range(n)
    )
    sd = (n * 0.2 * 0.8) ** 0.5
    assert abs(canary - 0.2 * n) <= 4 * sd, canary


def test_a_duplicate_delivery_during_a_live_lease_is_turned_away(store: JobStore) -> None:
    job_id, _ = create(store)
    assert store.claim(job_id, worker="w1", max_deliveries=3).outcome == "claimed"
    assert store.claim(job_id, worker="w2", max_deliveries=3).outcome == "busy"
    assert store.get(job_id)["deliveries"] == "1"


def test_overdue_unfinished_jobs_are_reaped_once_and_finished_ones_never(redis_client: redis.Redis,
                                                                        key_prefix: str) -> None:
    store = JobStore(redis_client, key_prefix, ttl_seconds=60, lease_seconds=0.2)
    lost, _ = create(store)  # its message vanished: nobody ever claims it
    done, _ = create(store)
    store.claim(done, worker="w1", max_deliveries=3)
    store.succeed(done, result={}, timings={})
    crashed, _ = create(store)
    store.claim(crashed, worker="w1", max_deliveries=3)  # and the worker died
    assert store.reap() == []  # nothing is overdue yet
    time.sleep(0.3)
    reaped = store.reap()
    assert sorted(job for job, _, _ in reaped) == sorted([lost, crashed])
    assert all(version == "1" for _, version, _ in reaped)
    assert store.reap() == []  # each got a new deadline
    assert store.client.zscore(store.pending_key, done) is None


def test_a_short_claim_is_kept_alive_by_its_workers_renewals_only(redis_client: redis.Redis, key_prefix: str) -> None:
    store = JobStore(redis_client, key_prefix, ttl_seconds=60, lease_seconds=60)
    held, _ = create(store)
    other, _ = create(store)
    store.claim(held, worker="w1", max_deliveries=3, lease_seconds=0.3)
    store.claim(other, worker="w2", max_deliveries=3, lease_seconds=0.3)
    for _ in range(3):
        time.sleep(0.15)
        assert store.renew([held, other], worker="w1", lease_seconds=0.3) == 1  # w2's job is not w1's to renew
    reaped = [job for job, _, _ in store.reap()]
    assert reaped == [other], "the renewed claim was reaped, or the abandoned one was not"
    store.succeed(held, result={}, timings={})
    assert store.renew([held], worker="w1", lease_seconds=0.3) == 0  # a finished job is left alone
    assert store.client.zscore(store.pending_key, held) is None


def test_a_queued_job_is_sent_again_at_its_deadline_when_that_comes_before_the_lease(
        redis_client: redis.Redis, key_prefix: str) -> None:
    """A message lost in a failover leaves its job queued with no message anywhere: it is sent
    again (and then skipped as past its deadline) when its client stops waiting, not after a
    lease of minutes."""
    store = JobStore(redis_client, key_prefix, ttl_seconds=60, lease_seconds=300)
    now = time.time()

    def job(deadline: float | None) -> str:
        job_id = store.new_id()
        fields = {"image_key": job_id} | ({"deadline": repr(deadline)} if deadline is not None else {})
        store.create(job_id=job_id, fields=fields, default_version="1", max_queue_depth=0, canary_draw=0.5)
        return job_id

    soon, late, undated = job(now + 0.2), job(now + 3600), job(None)
    assert store.client.zscore(store.pending_key, soon) == pytest.approx(now + 0.2, abs=1e-3)
    assert store.client.zscore(store.pending_key, late) == pytest.approx(now + 300, abs=2)
    assert store.client.zscore(store.pending_key, undated) == pytest.approx(now + 300, abs=2)
    assert store.reap() == []
    time.sleep(0.3)
    assert [job_id for job_id, _, _ in store.reap()] == [soon]


def test_a_released_claim_is_queued_again_without_counting_a_delivery(store: JobStore) -> None:
    job_id, _ = create(store)
    store.claim(job_id, worker="w1", max_deliveries=3)
    assert not store.release(job_id, worker="w2", reason="not w2's")
    assert store.release(job_id, worker="w1", reason="image store: ConnectionError: timed out")
    record = store.get(job_id)
    assert (record["status"], record["deliveries"]) == ("queued", "0")
    assert record["last_error"] == "image store: ConnectionError: timed out"
    assert "worker" not in record
    assert store.claim(job_id, worker="w2", max_deliveries=3).outcome == "claimed", "the next delivery runs at once"
    assert not store.release(job_id, worker="w1", reason="late")


def test_a_full_redis_refuses_the_whole_creation_and_it_leaves_nothing(tmp_path: Path) -> None:
    process, url = start_redis(tmp_path)
    client = redis.Redis.from_url(url)
    try:
        store = JobStore(client, "full:", 3600, 60)
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 512 * 1024)
        created = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for _ in range(10_000):
                store.create(job_id=store.new_id(), fields={"image_key": "k" * 64}, default_version="1",
                             max_queue_depth=0, canary_draw=0.5, enqueue=True, request_id="r")
                created += 1
        # Every job created has its message, and the refused one left neither.
        assert 0 < created == client.llen("recognize.1") == len(client.keys("full:job:*"))
    finally:
        process.kill()
