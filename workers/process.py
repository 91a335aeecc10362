"""A worker process's life: load the model once, warm up, report ready, keep house, drain.

``WorkerProcess`` receives its settings (``WorkerConfig``) and its clients (Redis, the image
store, the Celery app it sends with) and is made of small steps that the tests call
in-process, one at a time:

- ``load``: open the volume, load the model while another thread checks every file of it against
  the manifest (size, hash, no symlink, nothing outside), warm it up, start the batcher (once a
  process); a volume that fails the check is never served;
- ``beat``: the heartbeat in Redis, the ready file (the Kubernetes probes), the gauges;
- ``reap``: send again the jobs whose lease ran out unfinished (one worker at a time); the
  heartbeat renews the short leases of the jobs this process computes, so a dead worker's jobs
  are sent again within seconds;
- ``resend``: send again the jobs whose messages could not go back to a broker that was away;
- ``sweep``: remove expired images from a local image store;
- ``check_inference``: a batch hung in the model withdraws the worker and ends its process
  (non-zero), so that Kubernetes starts a new one and the jobs go elsewhere;
- ``withdraw``: stop advertising readiness, before draining;
- ``hand_off``: move a retired version's leftover messages to the active version's queue;
- ``unload``: all of the above undone, in order.

``start`` runs ``tick`` (beat, and reap and sweep when they are due) on a thread of its own,
so a long inference never makes a live worker look dead. Celery's signals drive the
process (``workers.worker``); the task finds it through ``current()``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from common import heartbeat
from common.imagestore import ImageStore, image_store_from_url
from common.jobstore import JobStore
from common.membudget import DecodeBudget, budget_bytes
from common.metrics import statsd, version_tags
from common.queues import (
    QUEUE_PREFIX,
    TaskSender,
    queue_depth,
    queue_for,
    recognition_send,
    return_taken,
    taken_before,
    takers,
)
from common.redisconn import RedisTarget
from common.rollout import rollout_state
from common.volume import ModelVolume, VolumeError, version_dir
from workers.batching import Batcher
from workers.preparepool import PreparePool
from workers.runtime import ModelRuntime, runtime_for
from workers.service import WorkerContext

logger = logging.getLogger(__name__)



# After a decode that held this many bytes, the worker gives freed memory back to the system.
TRIM_AFTER_DECODE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to know; ``from_settings`` reads it from ``config.settings``."""

    model_root: Path
    model_name: str
    version: str
    default_version: str
    key_prefix: str
    ready_file: Path
    heartbeat_seconds: float
    reaper_interval_seconds: float
    job_ttl_seconds: int
    job_lease_seconds: float
    claim_lease_seconds: float
    max_deliveries: int
    batch_max_size: int
    batch_max_wait_ms: float
    max_batch_seconds: float = 120.0
    check_volume: bool = True
    sweep_interval_seconds: float = 300.0
    image_ttl_seconds: int = 86400
    decode_budget_bytes: int = 0  # 0: decode_budget_fraction of the memory limit
    decode_budget_fraction: float = 0.25
    decode_wait_seconds: float = 30.0
    prepare_processes: int = 0  # decode + prepare in this many child processes (0: on the task threads)

    @classmethod
    def from_settings(cls, settings: Any) -> WorkerConfig:
        return cls(
            model_root=Path(settings.MODEL_ROOT),
            model_name=settings.MODEL_NAME,
            version=settings.WORKER_MODEL_VERSION,
            default_version=settings.DEFAULT_MODEL_VERSION,
            key_prefix=settings.REDIS_KEY_PREFIX,
            ready_file=Path(settings.WORKER_READY_FILE),
            heartbeat_seconds=settings.WORKER_HEARTBEAT_SECONDS,
            reaper_interval_seconds=settings.REAPER_INTERVAL_SECONDS,
            job_ttl_seconds=settings.JOB_TTL_SECONDS,
            job_lease_seconds=settings.JOB_LEASE_SECONDS,
            claim_lease_seconds=settings.WORKER_CLAIM_LEASE_SECONDS,
            max_deliveries=settings.WORKER_MAX_DELIVERIES,
            batch_max_size=settings.BATCH_MAX_SIZE,
            batch_max_wait_ms=settings.BATCH_MAX_WAIT_MS,
            max_batch_seconds=settings.WORKER_MAX_BATCH_SECONDS,
            check_volume=settings.WORKER_CHECK_VOLUME,
            image_ttl_seconds=settings.IMAGE_TTL_SECONDS,
            decode_budget_bytes=settings.DECODE_BUDGET_BYTES,
            decode_budget_fraction=settings.DECODE_BUDGET_FRACTION,
            decode_wait_seconds=settings.WORKER_DECODE_WAIT_SECONDS,
            prepare_processes=settings.PREPARE_PROCESSES,
        )


class WorkerProcess:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        client: redis.Redis,
        images: ImageStore,
        sender: TaskSender,
        worker_id: str | None = None,
        load_runtime: Callable[[ModelVolume], ModelRuntime] = runtime_for,
        exit_process: Callable[[int], object] = os._exit,
    ) -> None:
        self.config = config
        self.client = client
        self.images = images
        self.sender = sender
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.jobs = JobStore(client, config.key_prefix, config.job_ttl_seconds, config.job_lease_seconds)
        self._load_runtime = load_runtime
        self._exit_process = exit_process
        self._context: WorkerContext | None = None
        self._manifest_sha256 = ""
        self._checked_manifest_sha256 = ""  # set once every file matched the manifest
        self._load_seconds = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_reap = self._last_sweep = float("-inf")
        self._redis_took_beat_at = 0.0

    @classmethod
    def from_settings(cls, settings: Any) -> WorkerProcess:
        """The production wiring: clients from ``config.settings``; connects on first use."""
        from config.celery_app import app

        client = RedisTarget.from_settings(settings).client(
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
            health_check_interval=30,
        )
        images = image_store_from_url(settings.IMAGE_STORE_URL, s3_endpoint_url=settings.S3_ENDPOINT_URL)
        return cls(WorkerConfig.from_settings(settings), client=client, images=images, sender=app)

    @property
    def context(self) -> WorkerContext:
        if self._context is None:
            raise RuntimeError("the worker has not loaded its model")
        return self._context

    @property
    def queue(self) -> str:
        return queue_for(self.config.version)

    # --- start-up -----------------------------------------------------------------------

    def load(self) -> WorkerContext:
        """Open the volume, load the model, warm it up. Once per process."""
        started = time.perf_counter()
        volume = ModelVolume.open(version_dir(self.config.model_root, self.config.model_name,
                                              self.config.version))
        self._manifest_sha256 = volume.manifest_sha256
        check = _VolumeCheck(volume) if self.config.check_volume else None
        runtime = self._load_runtime(volume)
        try:
            runtime.load()
            self._load_seconds = time.perf_counter() - started
            warm_s = _warm_up(runtime, self.config.batch_max_size)
        except Exception:
            if check is not None:
                check.raise_if_failed()  # a file that fails the check is the better reason
            raise
        if check is not None:
            # After the warm-up (one synthetic photo), so that the check's reads overlap the load's
            # and the warm-up's; before the batcher and the heartbeat: a volume that fails the
            # check never computes a job and never reports ready.
            check.raise_if_failed()
        tags = version_tags(volume.version, queue_for(volume.version))

        def on_batch(size: int, inference_ms: float) -> None:
            statsd().distribution("worker.batch_size", size, tags=tags)
            statsd().distribution("worker.inference_time", inference_ms, tags=tags)

        batcher = Batcher(runtime.predict, max_batch=self.config.batch_max_size,
                          max_wait_s=self.config.batch_max_wait_ms / 1000, on_batch=on_batch)
        # After the check (a volume that fails it is never served), before the first job.
        pool = PreparePool(runtime, self.config.prepare_processes).start() if self.config.prepare_processes else None
        batcher.start()
        self._context = WorkerContext(worker_id=self.worker_id, runtime=runtime, batcher=batcher,
                                      jobs=self.jobs, images=self.images,
                                      max_deliveries=self.config.max_deliveries,
                                      claim_lease_seconds=self.config.claim_lease_seconds,
                                      decode_budget=DecodeBudget(
                                          budget_bytes(self.config.decode_budget_bytes,
                                                       self.config.decode_budget_fraction),
                                          trim_after_bytes=TRIM_AFTER_DECODE_BYTES),
                                      decode_wait_seconds=self.config.decode_wait_seconds,
                                      prepare_pool=pool)
        logger.info("model loaded", extra={
            "model_version": volume.version, "load_s": round(self._load_seconds, 3),
            "warm_up_s": round(warm_s, 3), "model_bytes": volume.total_bytes,
            "volume_checked": check is not None})
        self._checked_manifest_sha256 = self._manifest_sha256 if check is not None else ""
        return self._context

    def start(self) -> None:
        """Report ready now, then keep house until ``withdraw``, on two threads of its own: the
        heartbeat (which renews the claims, so nothing slow may delay it) and the chores."""
        self._stop.clear()
        self._run_step("heartbeat", self.beat)  # Redis may be away now: the thread tries again
        self._threads = [threading.Thread(target=self._loop, args=(tick,), name=name, daemon=True)
                         for name, tick in (("heartbeat", self.tick_heartbeat), ("chores", self.tick_chores))]
        for thread in self._threads:
            thread.start()
        logger.info("worker ready", extra={"model_version": self.context.model_version})

    # --- housekeeping steps -------------------------------------------------------------

    def beat(self) -> None:
        """The heartbeat in Redis, then the ready file, whether Redis answered or not.

        The file's age is the liveness signal (this process and its housekeeping thread are
        alive): a Redis outage must never get a healthy worker, and its model load, restarted.
        Its content is when Redis last took the heartbeat: the readiness signal, so that a
        worker cut off from Redis reports not-ready (``probe-worker-ready --reaching-redis``).
        """
        ctx = self.context
        try:
            heartbeat.beat(
                self.client, prefix=self.config.key_prefix, version=ctx.model_version,
                worker_id=self.worker_id, ttl_seconds=self.config.heartbeat_seconds * 3,
                info={"model_name": ctx.model_name, "pid": os.getpid(), "host": socket.gethostname(),
                      "manifest_sha256": self._manifest_sha256,
                      "checked_manifest_sha256": self._checked_manifest_sha256},
                queue=self.queue,
            )
            self.jobs.renew(ctx.held(), worker=self.worker_id, lease_seconds=self.config.claim_lease_seconds)
            self._redis_took_beat_at = time.time()
        finally:
            # Written aside and renamed over the file: a probe never reads it half-written.
            ready_file = self.config.ready_file
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            partial = ready_file.with_name(f".{ready_file.name}.{os.getpid()}")
            partial.write_text(f"{self._redis_took_beat_at}\n")
            os.replace(partial, ready_file)
        tags = version_tags(ctx.model_version, queue_for(ctx.model_version))
        metrics = statsd()
        metrics.gauge("worker.model_load_time", self._load_seconds, tags=tags)
        metrics.gauge("queue.depth", queue_depth(self.client, ctx.model_version), tags=tags)
        ready = heartbeat.ready_workers(self.client, prefix=self.config.key_prefix,
                                        version=ctx.model_version)
        metrics.gauge("workers.ready", len(ready), tags=tags[:1])

    def reap(self) -> int:
        """Send again the jobs whose lease ran out unfinished; returns how many.

        One worker at a time does it (a lock in Redis that expires with the interval).
        A job goes back to its own version's queue while that version serves or has ready
        workers, else to the active version's queue.
        """
        lock = f"{self.config.key_prefix}reaper"
        if not self.client.set(lock, self.worker_id, nx=True,
                               px=int(self.config.reaper_interval_seconds * 1000)):
            return 0
        sent = 0
        for job_id, version, request_id in self.jobs.reap():
            try:
                queue = self._send_again(job_id, version, request_id or None)
            except Exception as exc:  # the reap gave it a new deadline: bring it back to now
                logger.warning("could not send an overdue job again: %s", exc, extra={"job_id": job_id})
                with suppress(Exception):
                    self.jobs.retry_soon(job_id)
                continue
            logger.warning("overdue job sent again", extra={"job_id": job_id, "queue": queue})
            sent += 1
        return sent + self._rescue_taken_unclaimed() + self._return_taken_of_dead()

    def _return_taken_of_dead(self) -> int:
        """Put back on its queue each message that a dead worker (no heartbeat) had taken into its
        own list (``config.broker``) and not yet recorded as unacknowledged: it was killed between
        the two; to the active version's queue if the worker's version no longer serves and has no
        ready worker. The worker is then forgotten as a taker (a live one registers again with its
        next heartbeat). A worker that only looked dead gets a duplicate of a message it is
        delivering; the job's claim drops one of the two."""
        prefix = self.config.key_prefix
        others = {worker: queue for worker, queue in takers(self.client, prefix).items() if worker != self.worker_id}
        if not others:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for worker in others:
            pipe.exists(heartbeat.worker_key(prefix, worker))
        returned = 0
        for (worker, queue), alive in zip(others.items(), pipe.execute(), strict=True):
            if alive:
                continue
            if queue.startswith(QUEUE_PREFIX):  # a retired version's queue would keep them forever
                queue = self._queue_serving(queue.removeprefix(QUEUE_PREFIX))
            count = return_taken(self.client, prefix=prefix, worker_id=worker, queue=queue,
                                 unless_exists=heartbeat.worker_key(prefix, worker))  # beat since?
            if count > 0:
                logger.warning("messages a dead worker had taken and not recorded sent back to their queue",
                               extra={"worker": worker, "queue": queue, "count": count})
            returned += max(count, 0)
        return returned

    def _rescue_taken_unclaimed(self) -> int:
        """Send again the queued jobs whose message a worker took a claim lease ago without
        claiming the job: that worker died between taking the message and starting the task
        (a live one claims at once: it takes no more messages than it has free threads). The
        message itself comes back only with the visibility timeout, and is dropped then."""
        taken = [(str(kwargs.get("job_id", "")), tag, kwargs.get("request_id"))
                 for tag, kwargs in taken_before(self.client, time.time() - self.config.claim_lease_seconds)]
        taken = [entry for entry in taken if entry[0]]
        rescued = 0
        marks = self.jobs.rescue_many([(job_id, tag) for job_id, tag, _ in taken])
        for (job_id, tag, request_id), marked in zip(taken, marks, strict=True):
            if not marked:
                continue
            try:
                record = self.jobs.get(job_id) or {}
                queue = self._send_again(job_id, record.get("model_version", self.config.version), request_id)
            except Exception as exc:
                logger.warning("could not send a job again: %s", exc, extra={"job_id": job_id})
                with suppress(Exception):
                    self.jobs.unrescue(job_id, delivery_tag=tag)
                continue
            logger.warning("job of a message taken and never started sent again",
                           extra={"job_id": job_id, "queue": queue})
            rescued += 1
        return rescued

    def resend(self) -> int:
        """Send again the jobs whose messages could not go back to the broker (it was away),
        once Redis answers; returns how many. A job already finished, running or expired is
        left alone; a duplicate message of a queued job is dropped by its claim."""
        pending = self.context.take_resends()
        sent = 0
        try:
            while pending:
                job_id, request_id = next(iter(pending.items()))
                record = self.jobs.get(job_id)
                if record is not None and record.get("status") == "queued":
                    self._send_again(job_id, record.get("model_version", self.config.version), request_id)
                    sent += 1
                del pending[job_id]
        finally:
            for job_id, request_id in pending.items():  # Redis still away: next round
                self.context.resend_later(job_id, request_id)
        if sent:
            logger.warning("jobs sent again after a broker outage", extra={"count": sent})
        return sent

    def _queue_serving(self, version: str) -> str:
        """``version``'s queue while that version serves or has ready workers, else the active
        version's."""
        state = rollout_state(self.client, prefix=self.config.key_prefix,
                              default_version=self.config.default_version)
        serving = state.serves(version) or heartbeat.ready_workers(
            self.client, prefix=self.config.key_prefix, version=version)
        return queue_for(version if serving or not state.active else state.active)

    def _send_again(self, job_id: str, version: str, request_id: str | None) -> str:
        """Send a job again: to its version's queue while that version serves or has ready
        workers, else to the active version's. Returns the queue."""
        queue = self._queue_serving(version)
        recognition_send(self.sender, job_id=job_id, request_id=request_id, queue=queue)
        statsd().increment("job.requeued", tags=version_tags(version, queue))
        return queue

    def sweep(self) -> int:
        """Remove a local store's images older than IMAGE_TTL_SECONDS; returns how many."""
        removed = self.images.purge_expired(self.config.image_ttl_seconds)
        if removed:
            logger.info("expired images removed", extra={"count": removed})
        return removed

    def check_inference(self) -> bool:
        """End the process if a batch has been in the model for longer than it ever should.

        The inference thread cannot be interrupted, and the process cannot drain around it, so
        it withdraws (not ready: no new jobs, the ready file gone) and exits at once with status
        4; its claims are no longer renewed, so its jobs are sent again within the claim lease.
        Returns whether the model is healthy.
        """
        stuck = self.context.batcher.predicting_for()
        if stuck <= self.config.max_batch_seconds:
            return True
        logger.critical("a batch has been in the model for %.0f s (limit %.0f s): the worker exits",
                        stuck, self.config.max_batch_seconds)
        try:
            self.withdraw()
        finally:
            self._exit_process(4)
        return False

    def tick(self, now: float | None = None) -> None:
        """One round of housekeeping, as the two threads do it (for the tests)."""
        self.tick_heartbeat()
        self.tick_chores(now)

    def tick_heartbeat(self) -> None:
        """The model is not hung, and the heartbeat (with the claims' renewal) is renewed."""
        if self.check_inference():
            self._run_step("heartbeat", self.beat)

    def tick_chores(self, now: float | None = None) -> None:
        """Resend; reap and sweep when they are due.

        A failing step is logged and retried next round: with Redis away the heartbeat's
        TTL tells readers, and the process (with its loaded model) stays up.
        """
        now = time.monotonic() if now is None else now
        steps: list[tuple[str, Callable[[], object]]] = [("resending jobs", self.resend)]
        if now - self._last_reap >= self.config.reaper_interval_seconds:
            self._last_reap = now
            steps.append(("reaping overdue jobs", self.reap))
        if now - self._last_sweep >= self.config.sweep_interval_seconds:
            self._last_sweep = now
            steps.append(("image sweep", self.sweep))
        for what, step in steps:
            self._run_step(what, step)

    @staticmethod
    def _run_step(what: str, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as exc:
            logger.warning("%s failed: %s", what, exc)

    def _loop(self, tick: Callable[[], None]) -> None:
        while not self._stop.wait(self.config.heartbeat_seconds):
            tick()

    # --- shutdown -----------------------------------------------------------------------

    def withdraw(self) -> None:
        """Stop advertising readiness (when shutdown starts, before draining)."""
        self._stop.set()
        self.config.ready_file.unlink(missing_ok=True)
        if self._context is None:
            return
        try:
            heartbeat.withdraw(self.client, prefix=self.config.key_prefix,
                               version=self._context.model_version, worker_id=self.worker_id)
        except Exception as exc:
            logger.warning("could not withdraw heartbeat: %s", exc)

    def hand_off(self) -> int:
        """Move this version's leftover messages to the active version's queue.

        Runs when a worker has drained and stopped. If it was the last ready worker of a
        version that no longer receives new jobs (after a promote or rollback), messages
        still on its queue would wait forever for a consumer; they move to the queue of the
        version that is active now and are computed there (the job records the version
        that computed it). Returns how many moved.
        """
        if self._context is None:
            return 0
        version = self._context.model_version
        state = rollout_state(self.client, prefix=self.config.key_prefix,
                              default_version=self.config.default_version)
        if state.serves(version) or not state.active:
            return 0
        if heartbeat.ready_workers(self.client, prefix=self.config.key_prefix, version=version):
            return 0  # other workers of this version are still draining it
        source, target = queue_for(version), queue_for(state.active)
        moved = 0
        # Newest first onto the consuming end: the handed-off jobs keep their order and go
        # ahead of the jobs already waiting there (they have waited longer).
        while self.client.lmove(source, target, "LEFT", "RIGHT") is not None:
            moved += 1
        if moved:
            logger.warning("handed off queued jobs", extra={"count": moved, "from": source, "to": target})
        return moved

    def unload(self) -> None:
        self.withdraw()
        try:
            # A message the consumer took as it stopped, never delivered: back on the queue
            # (before the hand-off, which may move it on).
            return_taken(self.client, prefix=self.config.key_prefix, worker_id=self.worker_id, queue=self.queue)
        except Exception as exc:
            logger.warning("could not return taken messages: %s", exc)
        try:
            self.hand_off()
        except Exception as exc:
            logger.warning("could not hand off the queue: %s", exc)
        if self._context is not None:
            self._context.batcher.stop(timeout=30)
            if self._context.prepare_pool is not None:
                self._context.prepare_pool.stop()
            self._context.runtime.unload()
            self._context = None


class _VolumeCheck:
    """Every file of a volume checked against its manifest on a thread of its own, while the
    model loads: both read the same files, so the check mostly reads from the page cache the
    load fills (or fills it for the load), and costs little more than the load alone."""

    def __init__(self, volume: ModelVolume) -> None:
        self.volume = volume
        self.problems: list[str] = []
        self._thread = threading.Thread(target=self._run, name="volume-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.problems = self.volume.verify_checksums()
        except Exception as exc:  # an unreadable volume is a failed check, never a passed one
            self.problems = [f"the check failed: {type(exc).__name__}: {exc}"]

    def raise_if_failed(self) -> None:
        self._thread.join()
        if self.problems:
            raise VolumeError(f"{self.volume.path} does not match its manifest: " + "; ".join(self.problems[:5]))


def _warm_up(runtime: ModelRuntime, max_batch: int = 1) -> float:
    """Run the whole path once on a synthetic photo so the first job is not slow. A backbone that
    compiles a program per batch size (JAX's) compiles every size up to ``max_batch`` now, before
    the worker reports ready, rather than stalling the first batch of each size."""
    started = time.perf_counter()
    rgb = np.random.default_rng(0).integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    runtime.predict([runtime.prepare(rgb)])
    compile_sizes = getattr(getattr(runtime, "_backbone", None), "compile", None)
    if callable(compile_sizes) and max_batch > 1:
        compile_sizes(range(1, max_batch + 1), threads=os.cpu_count() or 1)
    return time.perf_counter() - started


# Celery's task functions are module-level, so the one process object of a worker is found
# here; ``workers.worker`` installs it when the process starts.
_current: WorkerProcess | None = None


def install(process: WorkerProcess) -> WorkerProcess:
    global _current
    _current = process
    return process


def current() -> WorkerProcess:
    if _current is None:
        raise RuntimeError("no worker process is installed (start workers with celery -A workers.worker)")
    return _current
