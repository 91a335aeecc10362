"""What a worker does with one job, as small steps the tests can call one at a time."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import redis

from common import livestats
from common.errors import DeadlineExceeded, DecodeBusy, DeliveryLimitExceeded, InferenceFailed, JobFailure
from common.imagestore import ImageStore
from common.imaging import decode_rgb
from common.jobstore import SUCCEEDED, TERMINAL, JobStore
from common.membudget import DecodeBudget
from common.metrics import statsd, version_tags
from common.queues import queue_for
from workers.batching import Batcher
from workers.preparepool import PreparePool, PrepareUnavailable
from workers.runtime import ModelRuntime

logger = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """Everything a worker process loads once and shares between its task threads."""

    worker_id: str
    runtime: ModelRuntime
    batcher: Batcher
    jobs: JobStore
    images: ImageStore
    max_deliveries: int
    # How long a claim lasts unless the heartbeat renews it (None: the job store's lease).
    claim_lease_seconds: float | None = None
    # Decoded pixels in flight in this process, and how long a decode may wait for its share.
    decode_budget: DecodeBudget | None = None
    decode_wait_seconds: float = 30.0
    # Decode + prepare in child processes (PREPARE_PROCESSES > 0); None: on the task thread.
    prepare_pool: PreparePool | None = None
    _held: set[str] = field(default_factory=set)
    _to_resend: dict[str, str | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def holding(self, job_id: str) -> Iterator[None]:
        """The job is this process's while the block runs: the heartbeat renews its lease."""
        with self._lock:
            self._held.add(job_id)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(job_id)

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def resend_later(self, job_id: str, request_id: str | None) -> None:
        """The job's message could not go back to the broker (Redis away): send it again once
        Redis answers (``WorkerProcess.resend``) rather than after the visibility timeout."""
        with self._lock:
            self._to_resend[job_id] = request_id

    def take_resends(self) -> dict[str, str | None]:
        with self._lock:
            taken, self._to_resend = self._to_resend, {}
            return taken

    @property
    def model_name(self) -> str:
        return self.runtime.volume.name

    @property
    def model_version(self) -> str:
        return self.runtime.volume.version


class TransientError(Exception):
    """Infrastructure failed (Redis, the image store); the job should be delivered again.

    ``component`` names what failed: "redis" (the message cannot go back either) or
    "image store"."""

    def __init__(self, component: str, error: Exception) -> None:
        super().__init__(f"{component}: {type(error).__name__}: {error}")
        self.component = component


def recognition_job_process(*, job_id: str, context: WorkerContext) -> str:
    """Claim, compute and record one job. Returns the job's outcome for logging.

    Failures of the job itself end it ``failed`` with a code; failures of the
    infrastructure raise TransientError so that the message is delivered again.
    """
    try:
        claim = context.jobs.claim(job_id, worker=context.worker_id, max_deliveries=context.max_deliveries,
                                   lease_seconds=context.claim_lease_seconds)
    except redis.RedisError as exc:
        raise TransientError("redis", exc) from exc
    if claim.outcome in ("missing", "done", "busy"):
        # Expired; finished by an earlier delivery; or a duplicate delivery of a job that
        # another worker is computing under a live lease: nothing to do.
        return claim.outcome
    if claim.outcome == "exhausted":
        _record_failure(context, job_id, _delivery_limit(claim.deliveries))
        return "failed"
    if _past_deadline(claim.record):
        # A result nobody waits for is not worth the model's time; the next job is.
        _record_failure(context, job_id, DeadlineExceeded(), claim.record)
        return "failed"
    with context.holding(job_id):
        try:
            return _compute_and_record(job_id=job_id, record=claim.record, context=context)
        except TransientError as exc:
            _give_back(context, job_id, exc)
            raise


def _past_deadline(record: dict[str, str]) -> bool:
    try:
        return time.time() > float(record["deadline"])
    except (KeyError, ValueError):  # a job created before deadlines: none
        return False


def _give_back(context: WorkerContext, job_id: str, error: TransientError) -> None:
    """Release the claim, so the next delivery runs at once and is not counted as one that
    lost its worker; with Redis away the claim's lease runs out instead (the reaper)."""
    with suppress(redis.RedisError):
        context.jobs.release(job_id, worker=context.worker_id, reason=str(error))


def _compute_and_record(*, job_id: str, record: dict[str, str], context: WorkerContext) -> str:
    timings: dict[str, float] = {}
    started_at = float(record["started_at"])
    timings["queue_wait"] = round((started_at - float(record["created_at"])) * 1000, 2)
    tags = version_tags(context.model_version, queue_for(context.model_version))
    statsd().distribution("job.queue_wait", timings["queue_wait"], tags=tags)
    try:
        # Announced from here, so that a batch forming meanwhile waits for this image
        # only while it is being fetched and decoded, and not at all on an idle worker.
        with context.batcher.arrival() as arrival:
            try:
                data = context.images.get(record["image_key"])
            except JobFailure:
                raise
            except Exception as exc:
                raise TransientError("image store", exc) from exc
            t0 = time.perf_counter()
            if context.prepare_pool is not None:  # decode + prepare in a child process
                prepared, t1 = _prepare_in_pool(context, data, t0)
            else:
                try:
                    rgb = decode_rgb(data, max_side=context.runtime.decode_max_side, budget=context.decode_budget,
                                     budget_wait=context.decode_wait_seconds)
                except DecodeBusy as exc:
                    raise TransientError("memory", exc) from exc
                t1 = time.perf_counter()
                try:
                    prepared = context.runtime.prepare(rgb)
                except Exception as exc:
                    logger.exception("prepare failed", extra={"job_id": job_id})
                    raise InferenceFailed(f"Preparing the image failed: {type(exc).__name__}") from exc
            t2 = time.perf_counter()
            future = arrival.submit(prepared)
        try:
            outcome = future.result()
        except Exception as exc:
            logger.exception("inference failed", extra={"job_id": job_id})
            raise InferenceFailed(f"The model failed on this image: {type(exc).__name__}") from exc
    except JobFailure as failure:
        _record_failure(context, job_id, failure, record)
        return "failed"
    timings.update(
        decode=round((t1 - t0) * 1000, 2),
        prepare=round((t2 - t1) * 1000, 2),
        batch_wait=round(outcome.batch_wait_ms, 2),
        inference=round(outcome.inference_ms, 2),
        batch_size=outcome.batch_size,
    )
    latency_ms = _latency_ms(record)
    try:
        first = context.jobs.succeed(
            job_id,
            counters=livestats.finish_counters(
                prefix=context.jobs.prefix, version=context.model_version, status="succeeded",
                shadow=bool(record.get("shadow_of")), latency_ms=latency_ms, result=outcome.output),
            result=outcome.output,
            timings=timings,
            model_name=context.model_name,
            model_version=context.model_version,
        )
    except redis.RedisError as exc:
        raise TransientError("redis", exc) from exc
    statsd().increment("job.completed", tags=[*tags, "status:succeeded"])
    if first:
        _after_finish(context, record, status="succeeded", latency_ms=latency_ms, result=outcome.output)
    return "succeeded"


def _prepare_in_pool(context: WorkerContext, data: bytes, t0: float) -> tuple[Any, float]:
    """Decode + prepare in one of the worker's prepare processes (``workers.preparepool``): the
    same prepared object and the same job failures as on the task thread. Returns it and when
    the decode would have ended (t0 + the child's decode time)."""
    assert context.prepare_pool is not None
    try:
        prepared, decode_s = context.prepare_pool.prepare(data, budget=context.decode_budget,
                                                          budget_wait=context.decode_wait_seconds)
    except DecodeBusy as exc:
        raise TransientError("memory", exc) from exc
    except PrepareUnavailable as exc:
        raise TransientError("prepare process", exc) from exc
    return prepared, t0 + decode_s


def _latency_ms(record: dict[str, str]) -> float | None:
    return (time.time() - float(record["created_at"])) * 1000 if record.get("created_at") else None


def _after_finish(
    context: WorkerContext, record: dict[str, str], *, status: str, latency_ms: float | None = None,
    result: dict | None = None,
) -> None:
    """After a job's first terminal write (which counted it in its version's live figures): the
    shadow comparison once both copies of a shadowed job have finished, and the metrics. Best
    effort: the result is written already."""
    if record.get("shadow_of") or record.get("shadow_id"):
        try:
            _compare_shadow(context.jobs, primary_id=record.get("shadow_of") or record["id"],
                            shadow_id=record.get("shadow_id") or record["id"])
        except redis.RedisError as exc:
            logger.warning("shadow comparison not counted: %s: %s", type(exc).__name__, exc)
    if status != "succeeded" or latency_ms is None:
        return
    tags = [*version_tags(context.model_version), f"role:{'shadow' if record.get('shadow_of') else 'live'}"]
    statsd().distribution("job.latency", latency_ms, tags=tags)
    for name in livestats.FIELDS:
        if livestats.field_value(result, name)[0] is None:
            statsd().increment("job.field_null", tags=[*tags, f"field:{name}"])


def _compare_shadow(jobs: JobStore, *, primary_id: str, shadow_id: str) -> None:
    """Compare a shadowed job's two answers, by whichever of its two workers finishes second
    (each writes its result before it reads the other's, so one of them sees both; the flag on
    the job makes sure only one counts)."""
    pipe = jobs.client.pipeline(transaction=False)
    pipe.hgetall(jobs.job_key(primary_id))
    pipe.hgetall(jobs.job_key(shadow_id))
    primary, shadow = ({_text(k): _text(v) for k, v in raw.items()} for raw in pipe.execute())
    if primary.get("status") not in TERMINAL or shadow.get("status") not in TERMINAL:
        return
    if primary["status"] != SUCCEEDED:
        return  # nothing to compare the candidate with
    if not jobs.client.hsetnx(jobs.job_key(primary_id), "compared", "1"):
        return
    candidate, active = shadow.get("model_version", ""), primary.get("model_version", "")
    outcomes = None
    if shadow["status"] == SUCCEEDED:
        outcomes = livestats.compare_results(json.loads(primary.get("result") or "{}"),
                                             json.loads(shadow.get("result") or "{}"))
    pipe = jobs.client.pipeline(transaction=False)
    livestats.record_comparison(pipe, prefix=jobs.prefix, candidate=candidate, active=active, outcomes=outcomes,
                                active_ms=_total_ms(primary), candidate_ms=_total_ms(shadow))
    pipe.execute()
    for name, (outcome, _shift) in (outcomes or {}).items():
        statsd().increment("shadow.compared", tags=[f"model_version:{candidate}", f"against:{active}",
                                                    f"field:{name}", f"outcome:{outcome}"])


def _total_ms(record: dict[str, str]) -> float | None:
    try:
        return (float(record["finished_at"]) - float(record["created_at"])) * 1000
    except (KeyError, ValueError):
        return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _delivery_limit(deliveries: int) -> JobFailure:
    return DeliveryLimitExceeded(
        f"The job was delivered {deliveries} times without finishing (each attempt ended "
        "with a lost worker); it was stopped to protect the workers."
    )


def _record_failure(
    context: WorkerContext, job_id: str, failure: JobFailure, record: dict[str, str] | None = None,
) -> None:
    logger.warning("job failed", extra={"job_id": job_id, "code": failure.code})
    statsd().increment("job.completed", tags=[
        *version_tags(context.model_version, queue_for(context.model_version)),
        "status:failed", f"error_code:{failure.code}"])
    record = record or {"id": job_id}
    try:
        first = context.jobs.fail(
            job_id,
            failure.code,
            failure.message,
            counters=livestats.finish_counters(
                prefix=context.jobs.prefix, version=context.model_version, status="failed",
                shadow=bool(record.get("shadow_of")), error_code=failure.code),
            model_name=context.model_name,
            model_version=context.model_version,
        )
    except redis.RedisError as exc:
        raise TransientError("redis", exc) from exc
    if first:
        _after_finish(context, record, status="failed")

