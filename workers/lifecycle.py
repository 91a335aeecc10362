"""A worker process's life: load the model once, warm up, report ready, drain, exit.

Start-up runs in Celery's ``worker_init`` signal, before the consumer starts, so
no message is taken before the model is loaded and warmed up. Readiness is a
heartbeat in Redis (for routing and ``promote``) and a file (for the Kubernetes
probe), both renewed by their own thread: a long inference never makes a live
worker look dead.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import redis
from django.conf import settings

from common import heartbeat
from common.imagestore import image_store_from_url
from common.jobstore import JobStore
from common.metrics import statsd, version_tags
from models_registry.volume import ModelVolume, version_dir
from workers.batching import Batcher
from workers.runtime import runtime_for
from workers.service import WorkerContext

logger = logging.getLogger(__name__)

_context: WorkerContext | None = None
_stop = threading.Event()
_heartbeat_thread: threading.Thread | None = None
_IMAGE_SWEEP_SECONDS = 300
_manifest_sha256 = ""
_load_seconds = 0.0


def context() -> WorkerContext:
    if _context is None:
        raise RuntimeError("the worker has not loaded its model")
    return _context


def load(version: str | None = None) -> WorkerContext:
    """Open the volume, load the model, warm it up. Called once per process."""
    global _context, _manifest_sha256, _load_seconds
    version = version or settings.WORKER_MODEL_VERSION
    path = version_dir(settings.MODEL_ROOT, settings.MODEL_NAME, version)
    started = time.perf_counter()
    volume = ModelVolume.open(path)
    _manifest_sha256 = volume.manifest_sha256
    runtime = runtime_for(volume)
    runtime.load()
    load_s = time.perf_counter() - started
    _load_seconds = load_s
    warm = _warm_up(runtime)
    tags = version_tags(volume.version, f"recognize.{volume.version}")

    def on_batch(size: int, inference_ms: float) -> None:
        statsd().distribution("worker.batch_size", size, tags=tags)
        statsd().distribution("worker.inference_time", inference_ms, tags=tags)

    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
    )
    batcher = Batcher(
        runtime.predict,
        max_batch=settings.BATCH_MAX_SIZE,
        max_wait_s=settings.BATCH_MAX_WAIT_MS / 1000,
        on_batch=on_batch,
    )
    batcher.start()
    _context = WorkerContext(
        worker_id=f"{socket.gethostname()}:{os.getpid()}",
        runtime=runtime,
        batcher=batcher,
        jobs=JobStore(client, settings.REDIS_KEY_PREFIX, settings.JOB_TTL_SECONDS, settings.JOB_LEASE_SECONDS),
        images=image_store_from_url(settings.IMAGE_STORE_URL, s3_endpoint_url=settings.S3_ENDPOINT_URL),
        max_deliveries=settings.WORKER_MAX_DELIVERIES,
    )
    logger.info(
        "model loaded",
        extra={"model_version": volume.version, "load_s": round(load_s, 3), "warm_up_s": round(warm, 3),
               "model_bytes": volume.total_bytes},
    )
    return _context


def _warm_up(runtime) -> float:  # type: ignore[no-untyped-def]
    """Run the whole path once on a synthetic photo so the first job is not slow."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    runtime.predict([runtime.prepare(rgb)])
    return time.perf_counter() - started


def mark_ready() -> None:
    global _heartbeat_thread
    _stop.clear()
    _beat()
    _heartbeat_thread = threading.Thread(target=_heartbeat_loop, name="heartbeat", daemon=True)
    _heartbeat_thread.start()
    logger.info("worker ready", extra={"model_version": context().model_version})


def _beat() -> None:
    # The file first: it is the Kubernetes liveness/readiness signal of this process,
    # and a Redis outage must not get a healthy worker (and its model load) restarted.
    Path(settings.WORKER_READY_FILE).parent.mkdir(parents=True, exist_ok=True)
    Path(settings.WORKER_READY_FILE).write_text(f"{time.time()}\n")
    ctx = context()
    heartbeat.beat(
        ctx.jobs.client,
        prefix=settings.REDIS_KEY_PREFIX,
        version=ctx.model_version,
        worker_id=ctx.worker_id,
        ttl_seconds=settings.WORKER_HEARTBEAT_SECONDS * 3,
        info={"model_name": ctx.model_name, "pid": os.getpid(), "host": socket.gethostname(),
              "manifest_sha256": _manifest_sha256},
    )
    queue = f"recognize.{ctx.model_version}"
    tags = version_tags(ctx.model_version, queue)
    client = statsd()
    client.gauge("worker.model_load_time", _load_seconds, tags=tags)
    client.gauge("queue.depth", ctx.jobs.client.llen(queue), tags=tags)
    ready = heartbeat.ready_workers(ctx.jobs.client, prefix=settings.REDIS_KEY_PREFIX, version=ctx.model_version)
    client.gauge("workers.ready", len(ready), tags=tags[:1])


def reap_overdue_jobs() -> int:
    """Send again the jobs whose deadline passed unfinished (one worker at a time does it).

    A job goes back to its own version's queue while that version serves or has ready
    workers, else to the active version's queue.
    """
    from models_registry.rollout import rollout_state
    from workers.celery_app import app

    ctx = context()
    client = ctx.jobs.client
    if not client.set(f"{settings.REDIS_KEY_PREFIX}reaper", ctx.worker_id, nx=True,
                      px=int(settings.REAPER_INTERVAL_SECONDS * 1000)):
        return 0
    overdue = ctx.jobs.reap()
    if not overdue:
        return 0
    state = rollout_state(client, prefix=settings.REDIS_KEY_PREFIX, default_version=settings.DEFAULT_MODEL_VERSION)
    for job_id, version, request_id in overdue:
        serving = version in (state.active, state.canary) or heartbeat.ready_workers(
            client, prefix=settings.REDIS_KEY_PREFIX, version=version)
        queue = f"recognize.{version if serving or not state.active else state.active}"
        app.send_task("recognition.recognize", kwargs={"job_id": job_id, "request_id": request_id or None},
                      queue=queue, routing_key=queue)
        statsd().increment("job.requeued", tags=version_tags(version, queue))
        logger.warning("overdue job sent again", extra={"job_id": job_id, "queue": queue})
    return len(overdue)


def _heartbeat_loop() -> None:
    last_sweep = last_reap = 0.0
    while not _stop.wait(settings.WORKER_HEARTBEAT_SECONDS):
        try:
            _beat()
        except Exception as exc:  # Redis away: keep trying, the TTL tells readers
            logger.warning("heartbeat failed: %s", exc)
        if time.monotonic() - last_reap >= settings.REAPER_INTERVAL_SECONDS:
            last_reap = time.monotonic()
            try:
                reap_overdue_jobs()
            except Exception as exc:
                logger.warning("reaping overdue jobs failed: %s", exc)
        if time.monotonic() - last_sweep > _IMAGE_SWEEP_SECONDS:
            last_sweep = time.monotonic()
            try:
                removed = context().images.purge_expired(settings.JOB_TTL_SECONDS)
                if removed:
                    logger.info("expired images removed", extra={"count": removed})
            except Exception as exc:
                logger.warning("image sweep failed: %s", exc)


def withdraw() -> None:
    """Stop advertising readiness (called when shutdown starts, before draining)."""
    _stop.set()
    Path(settings.WORKER_READY_FILE).unlink(missing_ok=True)
    if _context is None:
        return
    try:
        heartbeat.withdraw(
            _context.jobs.client,
            prefix=settings.REDIS_KEY_PREFIX,
            version=_context.model_version,
            worker_id=_context.worker_id,
        )
    except Exception as exc:
        logger.warning("could not withdraw heartbeat: %s", exc)


def hand_off_queue() -> int:
    """Move this version's leftover messages to the active version's queue.

    Runs when a worker has drained and stopped. If it was the last ready worker of
    a version that no longer receives new jobs (after a promote or rollback),
    messages still on its queue would wait forever for a consumer; they move to
    the queue of the version that is active now and are computed there (the job
    records the version that computed it). Returns how many moved.
    """
    from models_registry.rollout import rollout_state

    ctx = _context
    if ctx is None:
        return 0
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=settings.REDIS_SOCKET_TIMEOUT)
    version = ctx.model_version
    state = rollout_state(client, prefix=settings.REDIS_KEY_PREFIX, default_version=settings.DEFAULT_MODEL_VERSION)
    if version in (state.active, state.canary) or not state.active:
        return 0
    if heartbeat.ready_workers(client, prefix=settings.REDIS_KEY_PREFIX, version=version):
        return 0  # other workers of this version are still draining it
    source, target = f"recognize.{version}", f"recognize.{state.active}"
    moved = 0
    # Newest first onto the consuming end: the handed-off jobs keep their order and go
    # ahead of the jobs already waiting there (they have waited longer).
    while client.lmove(source, target, "LEFT", "RIGHT") is not None:
        moved += 1
    if moved:
        logger.warning("handed off queued jobs", extra={"count": moved, "from": source, "to": target})
    return moved


def unload() -> None:
    global _context
    withdraw()
    try:
        hand_off_queue()
    except Exception as exc:
        logger.warning("could not hand off the queue: %s", exc)
    if _context is not None:
        _context.batcher.stop(timeout=30)
        _context.runtime.unload()
        _context = None
