"""The worker process's steps, called one at a time in-process: a real Redis, a real Celery
app sending to it, the null model, and a local image store."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from celery import Celery

from common import heartbeat
from common.imagestore import LocalImageStore
from common.queues import (
    TASK_NAME,
    UNACKED_INDEX_KEY,
    UNACKED_KEY,
    queue_for,
    recognition_message,
    recognition_send,
    takers,
    taking_key,
)
from common.rollout import rollout_key
from common.volume import VolumeError
from models_registry.build import build_null
from tests.conftest import queued_tasks, unreachable_redis
from workers.process import WorkerConfig, WorkerProcess


@pytest.fixture
def version() -> str:
    """A version of each test's own: queue names are not prefixed, so tests must not share them."""
    return f"p{uuid.uuid4().hex[:8]}"


@pytest.fixture
def config(tmp_path: Path, key_prefix: str, version: str) -> WorkerConfig:
    build_null(tmp_path / "models", version)
    return WorkerConfig(
        model_root=tmp_path / "models", model_name="reference", version=version, default_version=version,
        key_prefix=key_prefix, ready_file=tmp_path / "ready", heartbeat_seconds=1.0,
        reaper_interval_seconds=10.0, job_ttl_seconds=7200, image_ttl_seconds=3600, job_lease_seconds=0.05,
        claim_lease_seconds=0.05, max_deliveries=3, batch_max_size=4, batch_max_wait_ms=1.0,
    )


@pytest.fixture
def sender(redis_url: str) -> Iterator[Celery]:
    app = Celery("tests", broker=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    yield app
    app.close()


@pytest.fixture
def make_process(tmp_path: Path, redis_client: redis.Redis, sender: Celery) -> Iterator:
    made: list[WorkerProcess] = []

    def make(config: WorkerConfig, worker_id: str = "host:1", *, load: bool = True) -> WorkerProcess:
        process = WorkerProcess(config, client=redis_client, images=LocalImageStore(tmp_path / "images"),
                                sender=sender, worker_id=worker_id)
        if load:
            process.load()
        made.append(process)
        return process

    yield make
    for process in made:
        process.unload()


@pytest.fixture
def process(make_process, config: WorkerConfig) -> WorkerProcess:  # type: ignore[no-untyped-def]
    return make_process(config)


def overdue_job(process: WorkerProcess, version: str) -> str:
    """A job created for ``version`` whose lease has run out."""
    job_id = process.jobs.new_id()
    process.jobs.create(job_id=job_id, fields={"request_id": "req-1"}, default_version=version,
                        max_queue_depth=0, canary_draw=0.5)
    time.sleep(process.config.job_lease_seconds * 2)
    return job_id


def test_it_loads_the_volume_and_reports_ready_with_a_file_and_a_heartbeat(
    process: WorkerProcess, redis_client: redis.Redis, config: WorkerConfig,
) -> None:
    assert process.context.model_version == config.version
    process.beat()
    assert float(config.ready_file.read_text()) == pytest.approx(time.time(), abs=5)
    assert heartbeat.ready_workers(redis_client, prefix=config.key_prefix, version=config.version) == ["host:1"]
    details = json.loads(redis_client.get(heartbeat.worker_key(config.key_prefix, "host:1")))
    assert details["manifest_sha256"] == process.context.runtime.volume.manifest_sha256
    assert details["pid"] == os.getpid()


def test_withdraw_removes_the_ready_file_and_the_heartbeat(
    process: WorkerProcess, redis_client: redis.Redis, config: WorkerConfig,
) -> None:
    process.beat()
    process.withdraw()
    assert not config.ready_file.exists()
    assert heartbeat.ready_workers(redis_client, prefix=config.key_prefix, version=config.version) == []


def test_the_housekeeping_thread_beats_until_withdrawn(process: WorkerProcess, config: WorkerConfig) -> None:
    process.start()
    first = float(config.ready_file.read_text())
    deadline = time.monotonic() + 10
    while float(config.ready_file.read_text()) == first:
        assert time.monotonic() < deadline, "the housekeeping thread did not beat again"
        time.sleep(0.1)
    process.withdraw()
    assert len(process._threads) == 2
    for thread in process._threads:
        thread.join(5)
        assert not thread.is_alive()


def test_it_sends_an_overdue_job_again_to_its_own_versions_queue(
    process: WorkerProcess, redis_client: redis.Redis, version: str,
) -> None:
    job_id = overdue_job(process, version)
    assert process.reap() == 1
    assert queued_tasks(redis_client, queue_for(version)) == [
        (TASK_NAME, {"job_id": job_id, "request_id": "req-1"})]


def test_an_overdue_job_of_a_retired_version_goes_to_the_active_versions_queue(
    process: WorkerProcess, redis_client: redis.Redis, version: str, config: WorkerConfig,
) -> None:
    job_id = overdue_job(process, version)
    active = f"{version}-new"
    redis_client.hset(rollout_key(config.key_prefix), mapping={"active": active, "previous": version})
    assert process.reap() == 1  # no ready worker of `version` (this one never beat)
    assert queued_tasks(redis_client, queue_for(version)) == []
    assert queued_tasks(redis_client, queue_for(active)) == [
        (TASK_NAME, {"job_id": job_id, "request_id": "req-1"})]
    redis_client.delete(queue_for(active))


def test_only_one_worker_reaps_in_an_interval(
    make_process, process: WorkerProcess, redis_client: redis.Redis, version: str, config: WorkerConfig,
) -> None:  # type: ignore[no-untyped-def]
    other = make_process(config, "host:2", load=False)
    overdue_job(process, version)
    assert process.reap() == 1
    overdue_job(process, version)
    assert other.reap() == 0, "the second worker reaped while the first one's lock held"
    assert len(queued_tasks(redis_client, queue_for(version))) == 1


def test_the_sweep_removes_images_older_than_the_image_ttl(process: WorkerProcess, config: WorkerConfig) -> None:
    process.images.put("old", b"x", "image/jpeg")
    process.images.put("new", b"y", "image/jpeg")
    stale = time.time() - config.image_ttl_seconds - 60
    os.utime(process.images.root / "old", (stale, stale))
    assert process.sweep() == 1
    assert process.images.get("new") == b"y"
    assert not (process.images.root / "old").exists()


def test_a_retired_versions_last_worker_hands_its_queue_to_the_active_version_in_order(
    process: WorkerProcess, redis_client: redis.Redis, version: str, config: WorkerConfig,
) -> None:
    active = f"{version}-new"
    redis_client.rpush(queue_for(active), "waiting")
    redis_client.rpush(queue_for(version), "m3", "m2", "m1")  # kombu pops from the right: m1 first
    redis_client.hset(rollout_key(config.key_prefix), mapping={"active": active, "previous": version})
    process.withdraw()
    assert process.hand_off() == 3
    assert redis_client.llen(queue_for(version)) == 0
    assert [m.decode() for m in redis_client.lrange(queue_for(active), 0, -1)] == ["waiting", "m3", "m2", "m1"]
    redis_client.delete(queue_for(active))


def test_a_version_keeps_its_queue_while_it_serves_or_another_of_its_workers_is_ready(
    make_process, process: WorkerProcess, redis_client: redis.Redis, version: str, config: WorkerConfig,
) -> None:  # type: ignore[no-untyped-def]
    redis_client.rpush(queue_for(version), "m1")
    assert process.hand_off() == 0  # still the active version (the default)
    redis_client.hset(rollout_key(config.key_prefix), mapping={"active": f"{version}-new"})
    make_process(config, "host:2").beat()
    assert process.hand_off() == 0
    assert redis_client.llen(queue_for(version)) == 1
    redis_client.delete(queue_for(version))


def test_housekeeping_reaps_and_sweeps_only_when_due(process: WorkerProcess, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []
    monkeypatch.setattr(process, "reap", lambda: calls.append("reap"))
    monkeypatch.setattr(process, "sweep", lambda: calls.append("sweep"))
    process.tick(now=1000.0)
    process.tick(now=1005.0)
    process.tick(now=1010.0)
    process.tick(now=1300.0)
    assert calls == ["reap", "sweep", "reap", "reap", "sweep"]


def test_housekeeping_survives_an_unreachable_redis_and_keeps_the_ready_file_fresh(
    process: WorkerProcess, config: WorkerConfig, caplog: pytest.LogCaptureFixture,
) -> None:
    process.beat()
    reached = float(config.ready_file.read_text())
    reachable = process.client
    process.client = unreachable_redis()
    before = time.time()
    try:
        with caplog.at_level(logging.WARNING, logger="workers.process"):
            process.tick()
    finally:
        process.client = reachable  # for the fixture's unload
    assert config.ready_file.stat().st_mtime >= before - 1, "the liveness signal went stale"
    assert float(config.ready_file.read_text()) == reached, "it still says when Redis last took a heartbeat"
    failed = {r.getMessage().split(" failed")[0] for r in caplog.records if r.name == "workers.process"}
    assert failed == {"heartbeat", "reaping overdue jobs"}
    assert process.context.model_version == config.version  # the model stays loaded


def test_the_config_is_read_from_the_settings(settings) -> None:  # type: ignore[no-untyped-def]
    settings.WORKER_MODEL_VERSION = "7"
    settings.REAPER_INTERVAL_SECONDS = 3.0
    config = WorkerConfig.from_settings(settings)
    assert (config.version, config.reaper_interval_seconds) == ("7", 3.0)


def test_the_heartbeat_renews_the_claims_of_the_jobs_it_computes(
    process: WorkerProcess, version: str, config: WorkerConfig,
) -> None:
    job_id = process.jobs.new_id()
    process.jobs.create(job_id=job_id, fields={}, default_version=version, max_queue_depth=0, canary_draw=0.5)
    process.jobs.claim(job_id, worker=process.worker_id, max_deliveries=3, lease_seconds=config.claim_lease_seconds)
    with process.context.holding(job_id):
        for _ in range(3):
            time.sleep(config.claim_lease_seconds)
            process.beat()
            assert process.jobs.reap() == [], "a job this live worker computes was taken as abandoned"
    time.sleep(config.claim_lease_seconds * 2)
    assert [job for job, _, _ in process.jobs.reap()] == [job_id], "the claim outlived its worker"


def test_jobs_whose_messages_could_not_go_back_are_sent_again_once_redis_answers(
    process: WorkerProcess, redis_client: redis.Redis, version: str,
) -> None:
    queued, finished = process.jobs.new_id(), process.jobs.new_id()
    for job_id in (queued, finished):
        process.jobs.create(job_id=job_id, fields={}, default_version=version, max_queue_depth=0, canary_draw=0.5)
    process.jobs.succeed(finished, result={}, timings={})
    process.context.resend_later(queued, "req-9")
    process.context.resend_later(finished, "req-10")
    reachable = process.client
    process.client = unreachable_redis()
    process.jobs.client = process.client
    with pytest.raises(redis.ConnectionError):
        process.resend()
    process.client = process.jobs.client = reachable
    assert process.resend() == 1
    assert queued_tasks(redis_client, queue_for(version)) == [(TASK_NAME, {"job_id": queued, "request_id": "req-9"})]
    assert process.resend() == 0, "sent twice"


def test_a_batch_hung_in_the_model_withdraws_the_worker_and_ends_its_process(
    tmp_path: Path, redis_client: redis.Redis, sender: Celery, config: WorkerConfig,
) -> None:
    release = threading.Event()

    class HangingRuntime:
        def __init__(self, volume) -> None:  # type: ignore[no-untyped-def]
            self.volume, self.decode_max_side, self.warm = volume, 64, True

        def load(self) -> None: ...

        def prepare(self, rgb):  # type: ignore[no-untyped-def]
            return rgb

        def predict(self, batch):  # type: ignore[no-untyped-def]
            if not self.warm:
                release.wait(30)  # the model never answers
            self.warm = False
            return [{} for _ in batch]

        def unload(self) -> None: ...

    exits: list[int] = []
    process = WorkerProcess(replace(config, max_batch_seconds=0.3), client=redis_client,
                            images=LocalImageStore(tmp_path / "images"), sender=sender, worker_id="host:9",
                            load_runtime=HangingRuntime, exit_process=exits.append)
    process.load()
    process.start()
    try:
        process.context.batcher.submit("a photo")
        process.tick()
        assert exits == [], "a batch just started was taken as hung"
        time.sleep(0.5)
        process.tick()
        assert exits == [4]
        assert not config.ready_file.exists()
        assert heartbeat.ready_workers(redis_client, prefix=config.key_prefix, version=config.version) == []
    finally:
        release.set()
        process.unload()


def test_a_job_whose_message_was_taken_by_a_worker_that_died_before_claiming_it_is_sent_again(
    make_process, redis_client: redis.Redis, sender: Celery, version: str, config: WorkerConfig,  # type: ignore[no-untyped-def]
) -> None:
    process = make_process(replace(config, job_lease_seconds=60))  # a queued job is not overdue here
    job_id = process.jobs.new_id()
    process.jobs.create(job_id=job_id, fields={"request_id": "req-3"}, default_version=version,
                        max_queue_depth=0, canary_draw=0.5)
    recognition_send(sender, job_id=job_id, request_id="req-3", queue=queue_for(version))
    # A worker takes the message, as kombu does (into "unacked"), and dies before claiming the job.
    raw = redis_client.rpop(queue_for(version))
    tag = f"tag-{uuid.uuid4().hex}"
    redis_client.hset(UNACKED_KEY, tag, json.dumps([json.loads(raw), "", queue_for(version)]))
    redis_client.zadd(UNACKED_INDEX_KEY, {tag: time.time()})
    try:
        assert process.reap() == 0, "a message taken just now was taken as abandoned"
        redis_client.delete(f"{config.key_prefix}reaper")
        redis_client.zadd(UNACKED_INDEX_KEY, {tag: time.time() - config.claim_lease_seconds - 1})
        assert process.reap() == 1
        expected = [(TASK_NAME, {"job_id": job_id, "request_id": "req-3"})]
        assert queued_tasks(redis_client, queue_for(version)) == expected
        redis_client.delete(f"{config.key_prefix}reaper")
        assert process.reap() == 0, "sent twice for the same message"
    finally:
        redis_client.hdel(UNACKED_KEY, tag)
        redis_client.zrem(UNACKED_INDEX_KEY, tag)


def test_the_messages_a_dead_worker_had_taken_and_not_recorded_go_back_to_their_queue(
    make_process, redis_client: redis.Redis, version: str, config: WorkerConfig,  # type: ignore[no-untyped-def]
) -> None:
    """What ``config.broker`` leaves in a worker's taking list when the worker is killed between
    taking a message and recording it: the reaper returns it once the worker's heartbeat has run
    out, never while the worker lives."""
    reaper, other = make_process(config, "host:1"), make_process(config, "host:2")
    reaper.beat()
    other.beat()
    assert takers(redis_client, config.key_prefix) == {"host:1": queue_for(version), "host:2": queue_for(version)}
    job_id = reaper.jobs.new_id()
    message = recognition_message(job_id=job_id, request_id="req-4", queue=queue_for(version))
    redis_client.lpush(taking_key(config.key_prefix, "host:2"), message)  # its BLMOVE, then nothing

    assert reaper.reap() == 0, "a live worker's message was taken from it"
    assert redis_client.llen(taking_key(config.key_prefix, "host:2")) == 1
    redis_client.delete(f"{config.key_prefix}reaper", heartbeat.worker_key(config.key_prefix, "host:2"))  # dead
    assert reaper.reap() == 1
    assert queued_tasks(redis_client, queue_for(version)) == [(TASK_NAME, {"job_id": job_id, "request_id": "req-4"})]
    assert redis_client.llen(taking_key(config.key_prefix, "host:2")) == 0
    assert takers(redis_client, config.key_prefix) == {"host:1": queue_for(version)}  # forgotten once dead


def test_what_a_dead_worker_of_a_retired_version_had_taken_goes_to_the_active_versions_queue(
    make_process, redis_client: redis.Redis, version: str, config: WorkerConfig,  # type: ignore[no-untyped-def]
) -> None:
    reaper = make_process(config, "host:1")
    redis_client.hset(f"{config.key_prefix}takers", "gone:7", queue_for("retired"))
    redis_client.lpush(taking_key(config.key_prefix, "gone:7"), "a message of the retired version")
    assert reaper.reap() == 1
    assert redis_client.lrange(queue_for(version), 0, -1) == [b"a message of the retired version"]
    assert redis_client.llen(queue_for("retired")) == 0


def test_a_worker_that_stops_puts_back_what_its_consumer_took_last(
    make_process, redis_client: redis.Redis, version: str, config: WorkerConfig,  # type: ignore[no-untyped-def]
) -> None:
    process = make_process(config, "host:3")
    process.beat()
    redis_client.lpush(taking_key(config.key_prefix, "host:3"), "a message taken as the consumer stopped")
    process.unload()
    assert redis_client.lrange(queue_for(version), 0, -1) == [b"a message taken as the consumer stopped"]
    assert takers(redis_client, config.key_prefix) == {}


def test_it_checks_every_file_of_the_volume_while_loading_and_says_so_in_its_heartbeat(
    process: WorkerProcess, redis_client: redis.Redis, config: WorkerConfig,
) -> None:
    process.beat()
    details = json.loads(redis_client.get(heartbeat.worker_key(config.key_prefix, "host:1")))
    assert details["checked_manifest_sha256"] == process.context.runtime.volume.manifest_sha256


def test_a_tampered_volume_is_never_served(make_process, config: WorkerConfig) -> None:  # type: ignore[no-untyped-def]
    readme = config.model_root / "reference" / config.version / "README"
    readme.chmod(0o644)
    readme.write_text("not what the manifest says\n")
    with pytest.raises(VolumeError, match="README: (size|sha256)"):
        make_process(config)
    unchecked = make_process(replace(config, check_volume=False), "host:2")  # what the check is for
    assert unchecked.context is not None


def test_a_rescue_that_could_not_send_is_tried_again_and_an_unreadable_message_is_skipped(
    make_process, redis_client: redis.Redis, sender: Celery, version: str, config: WorkerConfig,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    process = make_process(replace(config, job_lease_seconds=60))
    job_id = process.jobs.new_id()
    process.jobs.create(job_id=job_id, fields={}, default_version=version, max_queue_depth=0, canary_draw=0.5)
    recognition_send(sender, job_id=job_id, request_id=None, queue=queue_for(version))
    raw = redis_client.rpop(queue_for(version))
    tag, junk = f"tag-{uuid.uuid4().hex}", f"junk-{uuid.uuid4().hex}"
    old = time.time() - config.claim_lease_seconds - 1
    redis_client.hset(UNACKED_KEY, mapping={tag: json.dumps([json.loads(raw), "", queue_for(version)]),
                                            junk: "not a kombu message"})
    redis_client.zadd(UNACKED_INDEX_KEY, {junk: old - 1, tag: old})
    try:
        def broker_away(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise ConnectionError("broker away")

        monkeypatch.setattr(process, "_send_again", broker_away)
        assert process.reap() == 0
        monkeypatch.undo()
        redis_client.delete(f"{config.key_prefix}reaper")
        assert process.reap() == 1, "the failed rescue was not tried again"
        assert [kwargs["job_id"] for _, kwargs in queued_tasks(redis_client, queue_for(version))] == [job_id]
    finally:
        redis_client.hdel(UNACKED_KEY, tag, junk)
        redis_client.zrem(UNACKED_INDEX_KEY, tag, junk)


def test_the_warm_up_compiles_every_batch_size_of_a_backbone_that_compiles_per_size() -> None:
    from workers.process import _warm_up

    compiled: list[list[int]] = []

    class Backbone:  # JaxBackbone's compile(sizes, threads)
        def compile(self, sizes, threads: int = 1) -> float:  # type: ignore[no-untyped-def]
            compiled.append(list(sizes))
            return 0.0

    class Runtime:
        _backbone = Backbone()

        def prepare(self, rgb):  # type: ignore[no-untyped-def]
            return rgb.mean()

        def predict(self, batch):  # type: ignore[no-untyped-def]
            return [{} for _ in batch]

    _warm_up(Runtime(), 16)  # type: ignore[arg-type]
    assert compiled == [list(range(1, 17))]
    _warm_up(Runtime(), 1)  # type: ignore[arg-type]
    assert len(compiled) == 1  # batch 1 ran in the warm-up itself
