"""Entry module of a worker process: ``celery -A workers.worker worker ...``.

See ``scripts/start-worker`` for the options we run it with. Celery's signals drive the
one ``WorkerProcess`` of this process: load before the consumer starts (no message is
taken before the model is loaded and warmed up), ready once consuming, withdraw when
shutdown starts, unload when it ends.
"""

from __future__ import annotations

import logging
import logging.config

from celery import signals
from django.conf import settings

from common.membudget import fix_mmap_threshold
from config import broker
from config.celery_app import app
from workers import process, tasks  # noqa: F401  (tasks: registers the task)

logger = logging.getLogger(__name__)


@signals.setup_logging.connect
def _setup_logging(**kwargs) -> None:  # type: ignore[no-untyped-def]
    logging.config.dictConfig(settings.LOGGING)


@signals.worker_init.connect
def _load_model(**kwargs) -> None:  # type: ignore[no-untyped-def]
    if settings.WORKER_MALLOC_MMAP_THRESHOLD:
        fix_mmap_threshold(settings.WORKER_MALLOC_MMAP_THRESHOLD)
    try:
        worker = process.install(process.WorkerProcess.from_settings(settings))
        # Before the consumer starts: every message it takes goes into this worker's own list.
        broker.take_into(prefix=settings.REDIS_KEY_PREFIX, worker_id=worker.worker_id)
        worker.load()
    except Exception:
        logger.exception("model load failed; exiting")
        raise SystemExit(3) from None  # a worker without its model must not consume


@signals.worker_ready.connect
def _ready(**kwargs) -> None:  # type: ignore[no-untyped-def]
    process.current().start()


@signals.worker_shutting_down.connect
def _draining(**kwargs) -> None:  # type: ignore[no-untyped-def]
    process.current().withdraw()


@signals.worker_shutdown.connect
def _stopped(**kwargs) -> None:  # type: ignore[no-untyped-def]
    process.current().unload()


__all__ = ["app"]
