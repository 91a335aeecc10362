"""One job through the worker's steps, with a real Redis and the null model."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from common.imagestore import LocalImageStore
from common.jobstore import JobStore
from models_registry.build import build_null
from tests.conftest import unreachable_redis
from workers.batching import Batcher
from workers.runtime import runtime_for
from workers.service import TransientError, WorkerContext, recognition_job_process


@pytest.fixture
def context(tmp_path: Path, redis_client: redis.Redis, key_prefix: str) -> Iterator[WorkerContext]:
    runtime = runtime_for(build_null(tmp_path / "models", "n1"))
    runtime.load()
    batcher = Batcher(runtime.predict, max_batch=4, max_wait_s=0.01)
    batcher.start()
    yield WorkerContext("test-worker:1", runtime, batcher, JobStore(redis_client, key_prefix, 60),
                        LocalImageStore(tmp_path / "images"), max_deliveries=2)
    batcher.stop(5)


def queue_job(context: WorkerContext, data: bytes) -> str:
    job_id = context.jobs.new_id()
    context.images.put(job_id, data, "image/png")
    context.jobs.create(job_id=job_id, fields={"image_key": job_id}, default_version="n1",
                        max_queue_depth=0, canary_draw=0.5)
    return job_id


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_job_is_computed_and_recorded_with_its_timings(context: WorkerContext) -> None:
    job_id = queue_job(context, png((255, 0, 0)))
    assert recognition_job_process(job_id=job_id, context=context) == "succeeded"
    record = context.jobs.get(job_id)
    assert record["status"] == "succeeded" and record["model_version"] == "n1"
    assert json.loads(record["result"])["color"]["value"] == "#ff0000"
    timings = json.loads(record["timings"])
    assert {"queue_wait", "decode", "prepare", "batch_wait", "inference", "batch_size"} <= set(timings)


def test_a_second_delivery_of_a_finished_job_changes_nothing(context: WorkerContext) -> None:
    job_id = queue_job(context, png((0, 255, 0)))
    recognition_job_process(job_id=job_id, context=context)
    before = context.jobs.get(job_id)
    assert recognition_job_process(job_id=job_id, context=context) == "done"
    assert context.jobs.get(job_id) == before


def test_an_undecodable_image_fails_its_job_with_a_code(context: WorkerContext) -> None:
    job_id = queue_job(context, b"\x89PNG\r\n\x1a\n broken")
    assert recognition_job_process(job_id=job_id, context=context) == "failed"
    record = context.jobs.get(job_id)
    assert (record["status"], record["error_code"]) == ("failed", "image_decode_failed")


def test_a_missing_image_fails_its_job_with_a_code(context: WorkerContext) -> None:
    job_id = queue_job(context, png((1, 2, 3)))
    context.images.delete(job_id)
    recognition_job_process(job_id=job_id, context=context)
    assert context.jobs.get(job_id)["error_code"] == "image_unavailable"


def test_a_job_past_its_delivery_limit_is_failed_not_run_again(context: WorkerContext) -> None:
    job_id = queue_job(context, png((1, 2, 3)))
    lapsed = JobStore(context.jobs.client, context.jobs.prefix, 60, lease_seconds=0.0)
    for _ in range(2):  # two deliveries whose workers died after claiming (leases over)
        lapsed.claim(job_id, worker="lost", max_deliveries=2)
    assert recognition_job_process(job_id=job_id, context=context) == "failed"
    assert context.jobs.get(job_id)["error_code"] == "delivery_limit_exceeded"


def test_a_job_past_its_deadline_is_failed_without_being_computed(
    context: WorkerContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = context.jobs.new_id()
    context.images.put(job_id, png((1, 2, 3)), "image/png")
    context.jobs.create(job_id=job_id, fields={"image_key": job_id, "deadline": repr(time.time() - 1)},
                        default_version="n1", max_queue_depth=0, canary_draw=0.5)
    monkeypatch.setattr(context.batcher, "arrival", lambda: pytest.fail("a late job reached the model"))
    assert recognition_job_process(job_id=job_id, context=context) == "failed"
    record = context.jobs.get(job_id)
    assert (record["status"], record["error_code"]) == ("failed", "deadline_exceeded")


def test_a_job_before_its_deadline_is_computed(context: WorkerContext) -> None:
    job_id = context.jobs.new_id()
    context.images.put(job_id, png((1, 2, 3)), "image/png")
    context.jobs.create(job_id=job_id, fields={"image_key": job_id, "deadline": repr(time.time() + 30)},
                        default_version="n1", max_queue_depth=0, canary_draw=0.5)
    assert recognition_job_process(job_id=job_id, context=context) == "succeeded"


def test_an_expired_job_is_skipped(context: WorkerContext) -> None:
    assert recognition_job_process(job_id="f" * 32, context=context) == "missing"


def test_a_redis_outage_is_transient_so_the_message_is_redelivered(context: WorkerContext) -> None:
    context.jobs = JobStore(unreachable_redis(), "x:", 60)
    with pytest.raises(TransientError):
        recognition_job_process(job_id="a" * 32, context=context)


def test_an_image_store_failure_after_the_claim_gives_the_job_back_at_once(context: WorkerContext) -> None:
    class FlakyStore:
        def get(self, key: str) -> bytes:
            raise TimeoutError("the image store timed out")

    job_id = queue_job(context, png((1, 2, 3)))
    context.images = FlakyStore()  # type: ignore[assignment]
    with pytest.raises(TransientError, match="image store: TimeoutError: the image store timed out"):
        recognition_job_process(job_id=job_id, context=context)
    record = context.jobs.get(job_id)
    assert (record["status"], record["deliveries"]) == ("queued", "0"), "the failure counted as a lost worker"
    assert record["last_error"].startswith("image store: TimeoutError")
    assert context.held() == []


def test_a_shadowed_job_is_counted_per_version_and_compared_once(
    context: WorkerContext, tmp_path: Path, redis_client: redis.Redis, key_prefix: str,
) -> None:
    from common import livestats
    from common.rollout import rollout_key

    runtime = runtime_for(build_null(tmp_path / "models", "n2"))
    runtime.load()
    batcher = Batcher(runtime.predict, max_batch=4, max_wait_s=0.01)
    batcher.start()
    shadow_context = WorkerContext("test-worker:2", runtime, batcher, context.jobs, context.images, max_deliveries=2)
    try:
        redis_client.hset(rollout_key(key_prefix), mapping={"shadow": "n2", "shadow_fraction": "1"})
        job_id = context.jobs.new_id()
        context.images.put(job_id, png((255, 0, 0)), "image/png")
        routed = context.jobs.create(job_id=job_id, fields={"image_key": job_id}, default_version="n1",
                                     max_queue_depth=0, canary_draw=0.5, shadow_draw=0.0, shadow_max_depth=5)
        assert routed.shadow_id and routed.shadow_queue == "recognize.n2"
        # The shadow copy finishes first; the comparison is made when the live job finishes.
        assert recognition_job_process(job_id=routed.shadow_id, context=shadow_context) == "succeeded"
        assert recognition_job_process(job_id=job_id, context=context) == "succeeded"
        assert recognition_job_process(job_id=job_id, context=context) == "done"  # counted once
        live = livestats.version_figures(redis_client, prefix=key_prefix, version="n1", window_seconds=600)
        shadow = livestats.version_figures(redis_client, prefix=key_prefix, version="n2", window_seconds=600)
        assert (live.jobs, live.shadow_jobs, shadow.jobs, shadow.shadow_jobs) == (1, 0, 1, 1)
        comparison = livestats.shadow_comparison(redis_client, prefix=key_prefix, candidate="n2", active="n1",
                                                 window_seconds=600)
        assert comparison.n == 1 and comparison.agreement("color") == 1.0
    finally:
        batcher.stop(5)
