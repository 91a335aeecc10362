"""Celery tasks: thin interfaces that take ids and call a service."""

from __future__ import annotations

import logging
import time

from celery.exceptions import Reject

from common.logs import request_id_var
from common.queues import TASK_NAME
from config.celery_app import app
from workers import process
from workers.service import TransientError, recognition_job_process

logger = logging.getLogger(__name__)


@app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def recognize(job_id: str, request_id: str | None = None) -> str:
    token = request_id_var.set(request_id)
    try:
        context = process.current().context
        outcome = recognition_job_process(job_id=job_id, context=context)
        logger.info("job processed", extra={"job_id": job_id, "outcome": outcome})
        return outcome
    except TransientError as exc:
        # Put the message back rather than ack it: the job is not lost, and the pause keeps
        # an outage from turning into a hot redelivery loop. With Redis away the message
        # cannot go back now either: the worker sends the job again once Redis answers.
        logger.warning("transient failure, requeueing", extra={"job_id": job_id, "error": str(exc)})
        if exc.component == "redis":
            context.resend_later(job_id, request_id)
        time.sleep(0.5)
        raise Reject(str(exc), requeue=True) from exc
    finally:
        request_id_var.reset(token)
