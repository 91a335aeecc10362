"""A worker killed with SIGKILL while it holds jobs loses none of them."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
import redis

from common.heartbeat import ready_workers
from common.jobstore import JobStore
from common.queues import queue_for, takers, taking_key
from harness import Process, Stack, stack_env, start_redis, wait_until
from harness.chaos import Row, model_loads
from harness.load import Load
from models_registry.build import build_null
from tests.conftest import jpeg_bytes, solid


@pytest.fixture
def crash_stack(tmp_path: Path, reference_model_root: Path) -> Iterator[Stack]:
    redis_process, url = start_redis(tmp_path)
    # A short visibility timeout so that a dead worker's messages come back within
    # the test; production keeps it well above the slowest batch.
    env, key = stack_env(tmp_path, url, model_root=reference_model_root, default_version="1",
                         BROKER_VISIBILITY_TIMEOUT="6", BROKER_RESTORE_INTERVAL="1",
                         BROKER_RESTORE_LOCK_SECONDS="3", JOB_LEASE_SECONDS="5",
                         REAPER_INTERVAL_SECONDS="1")
    running = Stack(tmp_path, env, key, url)
    try:
        running.start_api()
        yield running
    finally:
        running.stop()
        redis_process.kill()


def test_jobs_held_by_a_killed_worker_are_redelivered_and_finish(crash_stack: Stack, coffee) -> None:  # type: ignore[no-untyped-def]
    stack = crash_stack
    first = stack.start_worker("1", name="doomed")
    stack.wait_worker_ready(first, "1")
    with stack.client() as client:
        ids = [
            client.post("/recognize", files={
                "image": (f"{i}.jpg", jpeg_bytes(coffee.rotate(i * 7)), "image/jpeg")}).json()["id"]
            for i in range(12)
        ]
    store = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    prefix = stack.env["REDIS_KEY_PREFIX"]

    def statuses() -> list[str]:
        return [store.hget(f"{prefix}job:{i}", "status") for i in ids]

    wait_until(lambda: "running" in statuses(), 60, "a job to start", interval=0.01)
    first.stop(signal.SIGKILL)
    at_kill = statuses()
    held = [i for i, s in zip(ids, at_kill, strict=True) if s not in ("succeeded", "failed")]
    interrupted = [i for i, s in zip(ids, at_kill, strict=True) if s == "running"]
    assert held, "the worker finished everything before it was killed; the test proved nothing"
    unacked = store.hlen("unacked")
    assert unacked >= 1  # the broker still holds the killed worker's messages

    second = stack.start_worker("1", name="rescuer")
    stack.wait_worker_ready(second, "1")
    try:
        wait_until(lambda: all(s in ("succeeded", "failed") for s in statuses()), 120, "all jobs to finish")
    except TimeoutError:
        raise AssertionError(
            f"statuses {statuses()}; unacked {store.hgetall('unacked')}; "
            f"index {store.zrange('unacked_index', 0, -1, withscores=True)}; "
            f"queue {store.lrange(queue_for('1'), 0, -1)}; "
            f"mutex {store.get('unacked_mutex')} ttl {store.ttl('unacked_mutex')}; "
            f"keys {store.keys('*')}; rescuer log: {second.output()[-3000:]}"
        ) from None
    assert statuses() == ["succeeded"] * len(ids)
    # A job that was running when the worker died ran again, on the new worker.
    for job_id in interrupted:
        assert int(store.hget(f"{prefix}job:{job_id}", "deliveries")) >= 2
        assert store.hget(f"{prefix}job:{job_id}", "worker").endswith(f":{second.popen.pid}")
    # Acks follow the result writes closely, but not atomically.
    wait_until(lambda: store.hlen("unacked") == 0 and store.llen(queue_for("1")) == 0, 30,
               "the broker to hold no message")


def test_a_job_whose_message_vanished_is_sent_again_and_finishes(crash_stack: Stack, coffee) -> None:  # type: ignore[no-untyped-def]
    """The window kombu leaves open (a worker killed between taking a message and
    recording it) is closed by the job-level reaper: here the message is simply deleted."""
    stack = crash_stack
    with stack.client() as client:
        job_id = client.post("/recognize", files={"image": ("c.jpg", jpeg_bytes(coffee), "image/jpeg")}).json()["id"]
    store = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    assert store.delete(queue_for("1")) == 1  # the only message, gone
    worker = stack.start_worker("1", name="reaper")
    stack.wait_worker_ready(worker, "1")
    with stack.client() as client:
        job = client.get(f"/v1/recognitions/{job_id}?wait=30").json()
    assert job["status"] == "succeeded"
    assert "overdue job sent again" in worker.output()


def test_a_job_whose_message_vanished_ends_at_its_deadline_not_after_the_lease(
        tmp_path: Path, reference_model_root: Path, coffee) -> None:  # type: ignore[no-untyped-def]
    """The production lease (JOB_LEASE_SECONDS, 270 s): a waiting client's job whose message was
    lost is sent again at its deadline and ends ``deadline_exceeded`` then, so that a poller gets
    an answer within its wait and the grace, not a queued job for minutes."""
    redis_process, url = start_redis(tmp_path)
    env, key = stack_env(tmp_path, url, model_root=reference_model_root, default_version="1",
                         METRICS_ENABLED="false", WAIT_GRACE_SECONDS="2", REAPER_INTERVAL_SECONDS="1")
    stack = Stack(tmp_path, env, key, url)
    try:
        stack.start_api()
        with stack.client() as client:
            job = client.post("/recognize?wait=1", files={"image": ("c.jpg", jpeg_bytes(coffee), "image/jpeg")}).json()
        assert job["status"] == "queued"  # no worker yet
        store = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        record = JobStore(store, stack.env["REDIS_KEY_PREFIX"]).get(job["id"])
        assert store.delete(queue_for("1")) == 1  # the only message, gone
        worker = stack.start_worker("1", name="reaper")
        stack.wait_worker_ready(worker, "1")
        with stack.client() as client:
            ended = client.get(f"/v1/recognitions/{job['id']}?wait=30").json()
        assert ended["status"] == "failed" and ended["error"]["code"] == "deadline_exceeded", ended
        finished = float(JobStore(store, stack.env["REDIS_KEY_PREFIX"]).get(job["id"])["finished_at"])
        # Ended once a worker was there to skip it (the model load takes longer than the 3 s to the
        # deadline), minutes before the 270 s lease.
        assert finished - float(record["created_at"]) < 120
        assert "overdue job sent again" in worker.output()
    finally:
        stack.stop()
        redis_process.kill()


@pytest.fixture
def two_workers(tmp_path: Path, reference_model_root: Path) -> Iterator[tuple[Stack, Process, Process]]:
    """Production claim settings (the claim lease, the visibility timeout): what a SIGKILL costs.
    Only the backstop is shorter (JOB_LEASE_SECONDS 30 s, 270 s in production). A message the worker
    had taken but not yet recorded when it died waits in its taking list for the rescuer's reaper;
    before the taking lists, such a job was skipped at its deadline (1 of ~200, in 2 of 3 runs)."""
    redis_process, url = start_redis(tmp_path)
    env, key = stack_env(tmp_path, url, model_root=reference_model_root, default_version="1",
                         METRICS_ENABLED="false", JOB_LEASE_SECONDS="30")
    stack = Stack(tmp_path, env, key, url)
    try:
        stack.start_api()
        doomed, rescuer = stack.start_worker("1", name="doomed"), stack.start_worker("1", name="rescuer")
        stack.wait_worker_ready(doomed, "1")
        stack.wait_worker_ready(rescuer, "1")
        yield stack, doomed, rescuer
    finally:
        stack.stop()
        redis_process.kill()


@pytest.mark.chaos
def test_a_killed_workers_jobs_finish_elsewhere_within_seconds(
    two_workers: tuple[Stack, Process, Process], coffee, chaos_rows: list[Row],  # type: ignore[no-untyped-def]
) -> None:
    stack, doomed, rescuer = two_workers
    store = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    prefix = stack.env["REDIS_KEY_PREFIX"]
    load = Load(stack, jpeg_bytes(coffee), clients=8, wait_seconds=20).start()

    def held_by_doomed() -> list[str]:
        """Unfinished jobs (the pending index) that the doomed worker is computing."""
        mine = f":{doomed.popen.pid}"
        return [j for j in store.zrange(f"{prefix}pending", 0, -1)
                if store.hget(f"{prefix}job:{j}", "status") == "running"
                and (store.hget(f"{prefix}job:{j}", "worker") or "").endswith(mine)]

    wait_until(lambda: len(held_by_doomed()) >= 2, 60, "the doomed worker to hold jobs", interval=0.01)
    doomed.stop(signal.SIGKILL)
    killed_at = time.time()
    held = held_by_doomed()
    assert held, "the worker held nothing when it was killed; the test proved nothing"
    wait_until(lambda: all(store.hget(f"{prefix}job:{j}", "status") == "succeeded" for j in held), 60,
               "the killed worker's jobs to finish elsewhere")
    finished = max(float(store.hget(f"{prefix}job:{j}", "finished_at")) for j in held)
    time.sleep(2)
    load.stop()
    outcome = load.outcome(store, prefix, within=90)
    chaos_rows.append(Row.of(f"worker SIGKILL holding {len(held)} jobs, 8 clients", outcome,
                             recover_s=finished - killed_at, model_reloads=model_loads(rescuer.output()) - 1))
    assert finished - killed_at <= 20, f"the held jobs finished {finished - killed_at:.1f}s after the kill"
    for job_id in held:
        assert store.hget(f"{prefix}job:{job_id}", "worker").endswith(f":{rescuer.popen.pid}")
    assert outcome.lost == 0 and outcome.failed == 0 and outcome.skipped == 0, outcome


def test_a_message_redis_handed_to_a_worker_that_died_before_reading_it_runs_elsewhere(tmp_path: Path) -> None:
    """The window kombu's BRPOP leaves open, made wide: the worker is stopped (SIGSTOP) while its
    blocking take waits in Redis, a job comes, Redis hands its message over, and the worker is
    killed before it reads the reply. With BRPOP the message was gone (popped, then the process);
    here it waits in the worker's taking list and another worker's reaper puts it back on the
    queue once the dead worker's heartbeat has run out. The production job lease (270 s) and the
    deadline of a job nobody waits for (600 s) are far beyond the test: only that return can save it."""
    models = tmp_path / "models"
    build_null(models, "1")
    redis_process, url = start_redis(tmp_path)
    env, key = stack_env(tmp_path, url, model_root=models, default_version="1", METRICS_ENABLED="false",
                         WORKER_HEARTBEAT_SECONDS="0.5", REAPER_INTERVAL_SECONDS="0.5")
    stack = Stack(tmp_path, env, key, url)
    store = redis.Redis.from_url(url, decode_responses=True)
    prefix = env["REDIS_KEY_PREFIX"]
    try:
        stack.start_api()
        doomed = stack.start_worker("1", name="doomed")
        stack.wait_worker_ready(doomed, "1")
        taking = taking_key(prefix, f"{socket.gethostname()}:{doomed.popen.pid}")
        job_id = ""
        with stack.client() as client:
            for _attempt in range(5):
                os.kill(doomed.popen.pid, signal.SIGSTOP)
                job_id = client.post("/recognize", files={"image": ("a.jpg", jpeg_bytes(solid((200, 30, 30))),
                                                                      "image/jpeg")}).json()["id"]
                with suppress(TimeoutError):
                    wait_until(lambda: store.llen(queue_for("1")) == 0, 0.5, "Redis to hand the message over",
                               interval=0.01)
                    break
                # The worker's take had timed out just then (it renews it every second): again.
                os.kill(doomed.popen.pid, signal.SIGCONT)
                done = f"{prefix}job:{job_id}"
                wait_until(lambda done=done: store.hget(done, "status") == "succeeded", 30, "the job")
            else:
                raise AssertionError("Redis never handed a message to the stopped worker")
        doomed.stop(signal.SIGKILL)
        in_taking_list = store.llen(taking)
        assert store.hget(f"{prefix}job:{job_id}", "status") == "queued"

        rescuer = stack.start_worker("1", name="rescuer")
        stack.wait_worker_ready(rescuer, "1")
        with stack.client() as client:
            job = client.get(f"/v1/recognitions/{job_id}?wait=30").json()
        assert job["status"] == "succeeded", job
        assert in_taking_list == 1  # where it waited: not in the queue, not in "unacked"
        assert store.hget(f"{prefix}job:{job_id}", "worker").endswith(f":{rescuer.popen.pid}")
        assert "messages a dead worker had taken and not recorded sent back to their queue" in rescuer.output()
        assert store.llen(taking) == 0 and takers(store, prefix) == {
            f"{socket.gethostname()}:{rescuer.popen.pid}": queue_for("1")}
        wait_until(lambda: store.hlen("unacked") == 0, 10, "the rescuer's ack")
    finally:
        stack.stop()
        redis_process.kill()


@pytest.mark.chaos
def test_a_worker_whose_model_hangs_withdraws_and_exits_non_zero(tmp_path: Path, chaos_rows: list[Row]) -> None:
    models = tmp_path / "models"
    build_null(models, "1", stall_ms=600_000)  # once warmed up, the model never answers
    redis_process, url = start_redis(tmp_path)
    env, key = stack_env(tmp_path, url, model_root=models, default_version="1", METRICS_ENABLED="false",
                         WORKER_MAX_BATCH_SECONDS="2", WORKER_HEARTBEAT_SECONDS="0.5")
    stack = Stack(tmp_path, env, key, url)
    try:
        stack.start_api()
        worker = stack.start_worker("1")
        stack.wait_worker_ready(worker, "1")
        with stack.client() as client:
            response = client.post("/recognize", files={"image": ("a.jpg", jpeg_bytes(solid((1, 2, 3))), "image/jpeg")})
        assert response.status_code == 202
        posted = time.monotonic()
        worker.popen.wait(30)
        exited_after = time.monotonic() - posted
        assert worker.popen.returncode == 4, worker.output()[-2000:]
        assert "a batch has been in the model for" in worker.output()
        assert not (tmp_path / "ready-1").exists()
        store = redis.Redis.from_url(url)
        assert not ready_workers(store, prefix=env["REDIS_KEY_PREFIX"], version="1")
        job = JobStore(store, env["REDIS_KEY_PREFIX"]).get(response.json()["id"])
        # Its only worker is gone: the job waits, claimed until its lease runs out, then queued again.
        assert job is not None and job["status"] in ("running", "queued")
        chaos_rows.append(Row("model hangs (WORKER_MAX_BATCH_SECONDS=2): worker exits 4", 1, 0, 0, 0, 0.0,
                              round(exited_after, 2), 0))
    finally:
        stack.stop()
        redis_process.kill()
