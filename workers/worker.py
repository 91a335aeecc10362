"""Entry module of a worker process: ``celery -A workers.worker worker ...``.

See ``scripts/start-worker`` for the options we run it with.
"""

from __future__ import annotations

import logging
import logging.config

from celery import signals
from django.conf import settings

from workers import lifecycle, tasks  # noqa: F401  (registers the task)
from workers.celery_app import app

logger = logging.getLogger(__name__)


@signals.setup_logging.connect
def _setup_logging(**kwargs) -> None:  # type: ignore[no-untyped-def]
    logging.config.dictConfig(settings.LOGGING)


@signals.worker_init.connect
def _load_model(**kwargs) -> None:  # type: ignore[no-untyped-def]
    try:
        lifecycle.load()
    except Exception:
        logger.exception("model load failed; exiting")
        raise SystemExit(3) from None  # a worker without its model must not consume


@signals.worker_ready.connect
def _ready(**kwargs) -> None:  # type: ignore[no-untyped-def]
    lifecycle.mark_ready()


@signals.worker_shutting_down.connect
def _draining(**kwargs) -> None:  # type: ignore[no-untyped-def]
    lifecycle.withdraw()


@signals.worker_shutdown.connect
def _stopped(**kwargs) -> None:  # type: ignore[no-untyped-def]
    lifecycle.unload()


__all__ = ["app"]
