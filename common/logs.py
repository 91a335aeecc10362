"""Request ids carried through logs, from the HTTP request into the task."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def clean_request_id(value: str | None) -> str:
    """Use the caller's X-Request-ID when it is sane, otherwise make one."""
    if value and _VALID.match(value):
        return value
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get()
        return True


class Throttle(logging.Filter):
    """Lets a logger's first record through, then at most one per ``seconds``, saying how many were
    held back: a metrics agent that is not listening (a laptop) is reported, not repeated every
    few seconds."""

    def __init__(self, seconds: float = 600.0) -> None:
        super().__init__()
        self.seconds = seconds
        self._next = 0.0
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.created < self._next:
            self._held += 1
            return False
        if self._held:
            record.msg = f"{record.msg} ({self._held} like it in the last {self.seconds:g} s not logged)"
        self._held = 0
        self._next = record.created + self.seconds
        return True


class QuietReadiness(logging.Filter):
    """Drops Django's error record of a 503 from /readyz: not being ready yet (starting up, Redis
    away) is what the endpoint reports to its poller, not an error of the server."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        return not (getattr(record, "status_code", None) == 503 and getattr(request, "path", "") == "/readyz")
