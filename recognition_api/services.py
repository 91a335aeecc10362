"""Services (writes) and selectors (reads) for recognition jobs.

Views call exactly one of these. Connections are made once per process and
shared by all threads (redis-py pools are thread-safe).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings

from common import livestats
from common.apikeys import KeyPolicy
from common.errors import (
    FeedbackExists,
    JobNotFound,
    JobNotSucceeded,
    NoActiveModel,
    NotReplicated,
    QueueFull,
    RateLimited,
    ServiceUnavailable,
)
from common.heartbeat import ready_workers
from common.imagestore import ImageStore, image_store_from_url
from common.imageurl import S3ObjectReader, image_url_location, parse_image_url_allowed
from common.imaging import ImageInfo, inspect_image
from common.jobstore import SUCCEEDED, TERMINAL, JobStore, Routed
from common.membudget import DecodeBudget, budget_bytes
from common.metrics import statsd
from common.ratelimit import Bucket, RateLimiter, retry_after_seconds
from common.redisconn import RedisTarget
from common.rollout import rollout_state
from common.rolloutreport import rollout_report
from common.waiting import FinishListener

logger = logging.getLogger(__name__)

@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return RedisTarget.from_settings(settings).client(
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
        max_connections=256,
    )


@lru_cache(maxsize=1)
def job_store() -> JobStore:
    return JobStore(redis_client(), settings.REDIS_KEY_PREFIX, settings.JOB_TTL_SECONDS,
                    settings.JOB_LEASE_SECONDS)


@lru_cache(maxsize=1)
def image_store() -> ImageStore:
    return image_store_from_url(settings.IMAGE_STORE_URL, s3_endpoint_url=settings.S3_ENDPOINT_URL)


_listener_lock = threading.Lock()
_listener: FinishListener | None = None


def finish_listener() -> FinishListener:
    """This process's listener for the jobs it creates (started on first use, per process:
    Gunicorn forks its workers, and a thread does not survive a fork)."""
    global _listener
    with _listener_lock:
        if _listener is None or _listener.pid != os.getpid():
            _listener = FinishListener.for_process(redis_client(), settings.REDIS_KEY_PREFIX)
            # The first waiting request waits for the subscription briefly; if Redis is slow
            # to answer it falls back to a subscription of its own.
            _listener.start(ready_timeout=1.0)
        return _listener


@lru_cache(maxsize=1)
def decode_budget() -> DecodeBudget:
    return DecodeBudget(budget_bytes(settings.DECODE_BUDGET_BYTES, settings.DECODE_BUDGET_FRACTION))


@lru_cache(maxsize=1)
def image_url_reader() -> S3ObjectReader:
    return S3ObjectReader(endpoint_url=settings.S3_ENDPOINT_URL, timeout_seconds=settings.IMAGE_URL_TIMEOUT_SECONDS)


def image_url_read(*, image_url: object) -> bytes:
    """The photo at ``image_url`` (s3://bucket/key under IMAGE_URL_ALLOWED), read within
    MAX_UPLOAD_BYTES and IMAGE_URL_TIMEOUT_SECONDS; it is then checked like an upload."""
    location = image_url_location(image_url, allowed=parse_image_url_allowed(settings.IMAGE_URL_ALLOWED))
    started = time.perf_counter()
    data = image_url_reader().read(location, max_bytes=settings.MAX_UPLOAD_BYTES)
    statsd().distribution("api.image_url_read", (time.perf_counter() - started) * 1000)
    return data


def image_validate(*, data: bytes) -> ImageInfo:
    return inspect_image(
        data,
        max_bytes=settings.MAX_UPLOAD_BYTES,
        max_pixels=settings.MAX_IMAGE_PIXELS,
        min_side=settings.MIN_IMAGE_SIDE,
        budget=decode_budget(),
        budget_wait=settings.API_DECODE_WAIT_SECONDS,
    )


def recognition_job_create(
    *, data: bytes, client: KeyPolicy, request_id: str, wait_seconds: float = 0.0,
    wait_cut: Callable[[], str | None] | None = None,
) -> dict[str, str]:
    """Store the image, create and enqueue the job; return its record, after waiting up to
    ``wait_seconds`` for it to finish, or until ``wait_cut`` names a reason to stop waiting."""
    info = image_validate(data=data)
    store = job_store()
    job_id = store.new_id()
    listener = finish_listener() if wait_seconds > 0 else None
    if listener is not None and not listener.subscribed:
        listener = None
    fields = {
        "image_key": job_id,
        "image_format": info.format,
        "image_width": info.width,
        "image_height": info.height,
        "image_bytes": len(data),
        "client": client.name,
        "request_id": request_id,
        "model_name": settings.MODEL_NAME,
    }
    # The job's budget (what the estimated wait must fit in) and its deadline (after which a
    # worker skips it): a waiting client's wait, or the horizon of an asynchronous job.
    budget = _budget(wait_seconds)
    grace = settings.WAIT_GRACE_SECONDS if wait_seconds > 0 else 0.0
    fields["deadline"] = repr(time.time() + budget + grace)
    if listener is not None:
        fields["notify"] = listener.channel
    # Registered before the job exists, so that its finish cannot come before we listen.
    with listener.registered(job_id) if listener is not None else nullcontext() as woken:
        routed = _job_enqueue(store=store, job_id=job_id, data=data, content_type=info.content_type,
                              fields=fields, client=client, budget_seconds=budget)
        stop = _wait_stopper(wait_cut, job_id=job_id)
        if wait_seconds <= 0 or (stop is not None and stop()):
            record = routed.record  # as written: no second round trip to read it back
        elif listener is not None and woken is not None:
            record = listener.wait(woken, lambda: store.get(job_id), lambda r: r.get("status") in TERMINAL,
                                   wait_seconds, read_first=False, stop=stop)
        else:
            record = store.wait(job_id, wait_seconds, stop=stop)
    if record is None:  # expired already: only with a TTL shorter than the wait
        raise JobNotFound()
    return record


_WAIT_CUT_MESSAGES = {
    "client_gone": "client hung up while waiting; the job goes on",
    "threads_busy": "wait cut short to make way for a request queued for a thread; the job goes on",
}


def _wait_stopper(wait_cut: Callable[[], str | None] | None, *, job_id: str) -> Callable[[], bool] | None:
    """``wait_cut`` as the wait's stop test, logging and counting the reason when it stops it."""
    if wait_cut is None:
        return None

    def stop() -> bool:
        reason = wait_cut()
        if reason is None:
            return False
        logger.info(_WAIT_CUT_MESSAGES.get(reason, reason), extra={"job_id": job_id, "reason": reason})
        statsd().increment("api.wait_cut", tags=[f"reason:{reason}"])
        return True

    return stop


def _job_enqueue(
    *, store: JobStore, job_id: str, data: bytes, content_type: str, fields: dict[str, object],
    client: KeyPolicy, budget_seconds: float,
) -> Routed:
    """Store the photo, then create, route and enqueue the job (and its shadow copy) in one
    atomic script: there is no job without its message, nor a message without its job."""
    image_store().put(job_id, data, content_type)
    try:
        try:
            routed = _admit(store=store, job_id=job_id, fields=fields, client=client, budget_seconds=budget_seconds,
                            request_id=str(fields["request_id"]))
        except redis.RedisError as exc:
            logger.warning("enqueue failed: %s: %s", type(exc).__name__, exc)
            if _redis_full(exc):
                raise ServiceUnavailable("The job store is full; retry later.") from exc
            raise ServiceUnavailable("The job queue is unavailable; retry shortly.") from exc
        if settings.REDIS_WAIT_REPLICAS:
            _job_replicate(store=store, job_id=job_id)
    except BaseException:
        _forget_image(job_id)
        raise
    logger.info(
        "job queued",
        extra={"job_id": job_id, "model_version": routed.version, "client": client.name},
    )
    return routed


@dataclass(frozen=True)
class Precheck:
    """What a new job would meet, asked of Redis in one round trip before its upload is read: its
    key's (and device's) rate, and admission (its key's share of the queue, the estimated wait
    against what its client waits). Nothing is created; the job's creation checks again,
    atomically. Each ``raise_*`` raises the refusal it found, so that the view can answer them in
    its own order."""

    rate_wait: float
    admission: Routed
    budget_seconds: float

    def raise_if_rate_limited(self) -> None:
        if self.rate_wait:
            retry_after = retry_after_seconds(self.rate_wait)
            raise RateLimited(f"This API key (or this device) is over its rate of new jobs; retry in {retry_after} s.",
                              retry_after=retry_after)

    def raise_if_not_admitted(self) -> None:
        _raise_refusal(self.admission, self.budget_seconds)


def recognition_precheck(*, client: KeyPolicy, device_id: str | None, wait_seconds: float) -> Precheck:
    """Take a token from the key's bucket (and its device's, for a key with a per-device rate) and
    ask whether the job would be admitted now: two scripts, one round trip."""
    budget = _budget(wait_seconds)
    pipe = redis_client().pipeline(transaction=False)
    read_rate = rate_limiter().take_in(pipe, _buckets(client, device_id))
    read_admission = job_store().create_in(pipe, **_create_kwargs(
        job_id=JobStore.new_id(), fields={}, client=client, budget_seconds=budget, dry_run=True))
    replies = pipe.execute()
    rate_wait = read_rate(replies[0]) if read_rate is not None else 0.0
    return Precheck(rate_wait, read_admission(replies[-1]), budget)


def _budget(wait_seconds: float) -> float:
    return wait_seconds if wait_seconds > 0 else settings.JOB_DEADLINE_SECONDS


def _admit(
    *, store: JobStore, job_id: str, fields: dict[str, object], client: KeyPolicy, budget_seconds: float,
    request_id: str,
) -> Routed:
    """Create, route and enqueue the job, or raise what its refusal answers."""
    routed = store.create(**_create_kwargs(job_id=job_id, fields=fields, client=client, budget_seconds=budget_seconds,
                                           dry_run=False, enqueue=True, request_id=request_id))
    _raise_refusal(routed, budget_seconds)
    return routed


def _create_kwargs(
    *, job_id: str, fields: dict[str, object], client: KeyPolicy, budget_seconds: float, dry_run: bool,
    enqueue: bool = False, request_id: str | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "fields": fields,
        "default_version": settings.DEFAULT_MODEL_VERSION,
        "max_queue_depth": settings.MAX_QUEUE_DEPTH,
        "canary_draw": random.random(),
        "budget_seconds": budget_seconds * settings.ADMISSION_TARGET,
        "rate_window_seconds": settings.ADMISSION_WINDOW_SECONDS,
        "client": client.name,
        "client_max_jobs": client.max_jobs,
        "dry_run": dry_run,
        "shadow_draw": random.random(),
        "shadow_max_depth": settings.SHADOW_MAX_QUEUE_DEPTH,
        "enqueue": enqueue,
        "request_id": request_id,
    }


def _raise_refusal(routed: Routed, budget_seconds: float) -> None:
    if routed.outcome == "key_full":
        raise RateLimited(
            f"This API key already has {routed.backlog} unfinished jobs, its share of the queue; "
            "retry when some have finished.",
            retry_after=settings.RETRY_AFTER_SECONDS,
        )
    if routed.outcome == "full":
        raise QueueFull(
            f"{routed.depth} photos are already waiting for model version "
            f"{routed.version}; retry shortly."
        )
    if routed.outcome == "late":
        # The wait that would fit: the backlog drained to what the budget allows.
        retry_after = max(1, math.ceil(routed.wait_seconds - budget_seconds * settings.ADMISSION_TARGET))
        raise QueueFull(
            f"About {routed.wait_seconds:.0f} s of work ({routed.backlog} photos at "
            f"{routed.rate:.1f}/s) is ahead for model version {routed.version}, more than the "
            f"{budget_seconds:g} s this request allows; retry in {retry_after} s.",
            retry_after=retry_after,
        )
    if routed.outcome != "ok":
        raise NoActiveModel()


def _job_replicate(*, store: JobStore, job_id: str) -> None:
    """Answer for the job only once REDIS_WAIT_REPLICAS replicas hold it (a failover then keeps it)."""
    wanted = settings.REDIS_WAIT_REPLICAS
    held = store.replicate(job_id, replicas=wanted, timeout_ms=settings.REDIS_WAIT_TIMEOUT_MS)
    if held < wanted:
        # Not acknowledged, so not promised: the client retries. Its message, already queued,
        # finds no record and is dropped by the worker.
        store.delete(job_id)
        logger.warning("job not replicated", extra={"job_id": job_id, "replicas": held, "wanted": wanted})
        raise NotReplicated(f"The job reached {held} of {wanted} Redis replicas in time; retry shortly.")


def _redis_full(exc: BaseException | None) -> bool:
    """Whether Redis refused a write for want of memory (maxmemory, noeviction), through whatever
    kombu or redis-py wrapped it in (a pipeline's error names the command that failed)."""
    while exc is not None:
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or "used memory > 'maxmemory'" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _forget_image(job_id: str) -> None:
    try:
        image_store().delete(job_id)
    except Exception:  # best effort: the TTL sweep removes it anyway
        logger.warning("could not delete image of rejected job %s", job_id)


def recognition_job_get(
    *, job_id: str, client: KeyPolicy, wait_seconds: float = 0.0, wait_cut: Callable[[], str | None] | None = None,
) -> dict[str, str]:
    """The job, for the key that created it (or one that reads all jobs); to any other key it
    does not exist. With ``wait_seconds``, read once it is finished, that long at most, or until
    ``wait_cut`` names a reason to stop waiting."""
    if not _valid_id(job_id):
        raise JobNotFound()
    store = job_store()
    record = store.get(job_id)
    if record is None or (record.get("client") != client.name and not client.reads_all_jobs):
        raise JobNotFound()
    if wait_seconds > 0 and record.get("status") not in TERMINAL:
        record = store.wait(job_id, wait_seconds, stop=_wait_stopper(wait_cut, job_id=job_id))
        if record is None:
            raise JobNotFound()
    return record


def recognition_feedback_create(
    *, job_id: str, client: KeyPolicy, feedback: dict[str, str | None]
) -> dict[str, Any]:
    """Keep what the seller finally listed with the job (once), and count, per model version and
    field, whether the suggestion was accepted, changed or filled in. A job that had a shadow copy
    scores the shadow version too: a candidate's live accuracy before it takes any traffic."""
    store = job_store()
    record = store.get(job_id) if _valid_id(job_id) else None
    # Only the key that created the job; a shadow copy is nobody's job.
    if record is None or record.get("client") != client.name or record.get("shadow_of"):
        raise JobNotFound()
    if record.get("status") != SUCCEEDED:
        raise JobNotSucceeded(f"The job is {record.get('status', 'unknown')}; feedback is taken only for a job "
                              "that succeeded.")
    given = store.add_feedback(job_id, feedback)
    if given == "exists":
        raise FeedbackExists()
    if given == "missing":
        raise JobNotFound()
    version = record.get("model_version", "")
    outcomes = livestats.feedback_outcomes(_result(record), feedback)
    scored = [(version, "live", outcomes)]
    shadow = store.get(record["shadow_id"]) if record.get("shadow_id") else None
    if shadow is not None and shadow.get("status") == SUCCEEDED:
        scored.append((shadow.get("model_version", ""), "shadow",
                       livestats.feedback_outcomes(_result(shadow), feedback)))
    prefix = settings.REDIS_KEY_PREFIX
    pipe = redis_client().pipeline(transaction=False)
    for scored_version, source, counted in scored:
        livestats.record_feedback(pipe, prefix=prefix, version=scored_version, source=source, outcomes=counted)
    pipe.execute()
    for scored_version, source, counted in scored:
        for name, outcome in counted.items():
            statsd().increment(f"feedback.{outcome}", tags=[
                f"model_version:{scored_version}", f"field:{name}", f"source:{source}"])
    return {"id": job_id, "model": {"name": record.get("model_name", ""), "version": version},
            "outcomes": outcomes}


def _result(record: dict[str, str]) -> dict[str, Any]:
    try:
        return json.loads(record.get("result") or "{}")
    except ValueError:
        return {}


# A device may send this many photos in a row before its rate applies (a seller lists in bursts).
DEVICE_BURST = 3


@lru_cache(maxsize=1)
def rate_limiter() -> RateLimiter:
    return RateLimiter(redis_client())


def _buckets(client: KeyPolicy, device_id: str | None) -> list[Bucket]:
    prefix = settings.REDIS_KEY_PREFIX
    buckets = [Bucket(f"{prefix}ratelimit:{client.name}", client.rate, client.burst)]
    if device_id and client.device_rate > 0:
        device = hashlib.sha256(device_id.encode(errors="replace")).hexdigest()[:32]
        buckets.append(Bucket(f"{prefix}ratelimit:{client.name}:device:{device}", client.device_rate,
                              max(DEVICE_BURST, math.ceil(2 * client.device_rate))))
    return buckets


def _valid_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


def readiness() -> dict[str, Any]:
    """Redis reachable, and the version new jobs go to has ready workers."""
    client = redis_client()
    started = time.perf_counter()
    client.ping()
    ping_ms = (time.perf_counter() - started) * 1000
    state = rollout_state(client, prefix=settings.REDIS_KEY_PREFIX,
                          default_version=settings.DEFAULT_MODEL_VERSION)
    active = state.active
    workers = ready_workers(client, prefix=settings.REDIS_KEY_PREFIX, version=active)
    report: dict[str, Any] = {
        "redis": {"ok": True, "ping_ms": round(ping_ms, 2)},
        "active_version": active,
        "ready_workers": len(workers),
    }
    if state.canary:
        report["canary_version"] = state.canary
        report["canary_ready_workers"] = len(
            ready_workers(client, prefix=settings.REDIS_KEY_PREFIX, version=state.canary)
        )
    report["ready"] = bool(workers)
    return report


def rollout_report_get(*, window_seconds: float) -> dict[str, Any]:
    """The rollout state and each version's workers, queue and live figures: what
    ``python -m models_registry status --json`` prints."""
    return rollout_report(redis_client(), prefix=settings.REDIS_KEY_PREFIX,
                          default_version=settings.DEFAULT_MODEL_VERSION, window_seconds=window_seconds)
