"""The one place where errors become HTTP responses.

Every error body is ``{"error": {"code": ..., "message": ...}}`` with a stable
code. Unexpected exceptions are logged with their stack trace and answered as a
500 with code ``internal_error`` and no details.
"""

from __future__ import annotations

import logging

import redis
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from common.errors import JobFailure, RecognitionError, ServiceUnavailable

logger = logging.getLogger(__name__)

_DRF_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "invalid_api_key",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.ParseError: "malformed_request",
    exceptions.NotFound: "not_found",
    exceptions.Throttled: "rate_limited",
}


def error_response(
    code: str, message: str, http_status: int, *, retry_after: int | None = None
) -> Response:
    response = Response({"error": {"code": code, "message": message}}, status=http_status)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def exception_handler(exc: Exception, context: dict) -> Response:
    from django.conf import settings

    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        # maxmemory with noeviction: Redis refuses writes rather than drop queued jobs.
        logger.error("redis is full: %s", exc)
        exc = ServiceUnavailable("The job store is full; retry later.")
    elif isinstance(exc, redis.RedisError):
        logger.warning("redis unavailable: %s", exc)
        exc = ServiceUnavailable()
    if isinstance(exc, RecognitionError):
        retry_after = exc.retry_after
        if retry_after is None and exc.http_status in (429, 503):
            retry_after = settings.RETRY_AFTER_SECONDS
        return error_response(exc.code, exc.message, exc.http_status, retry_after=retry_after)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, exceptions.APIException):
        code = next((c for t, c in _DRF_CODES.items() if isinstance(exc, t)), "invalid_request")
        detail = exc.detail if isinstance(exc.detail, str) else _flatten(exc.detail)
        response = error_response(code, str(detail), exc.status_code)
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            response.status_code = status.HTTP_401_UNAUTHORIZED
            response["WWW-Authenticate"] = 'Bearer realm="recognition"'
        return response
    logger.exception("unhandled error", exc_info=exc)
    return error_response("internal_error", "Internal error; it has been logged.", 500)


def _flatten(detail: object) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten(v) for v in detail)
    return str(detail)


# What the codes answered outside the error hierarchy mean (DRF's exceptions by ``_DRF_CODES``,
# the catch-alls of this module and of recognition_api.views): the OpenAPI enum of codes.
_OTHER_MEANINGS = {
    "not_authenticated": "No `Authorization: Bearer <API key>` header.",
    "invalid_api_key": "The key is not one of the service's keys, or the header is not `Bearer <key>`.",
    "permission_denied": "The key lacks the scope this endpoint needs.",
    "method_not_allowed": "The endpoint does not take this HTTP method.",
    "unsupported_media_type": "The body's Content-Type is not one this endpoint takes.",
    "not_acceptable": "The Accept header asks for something other than JSON.",
    "malformed_request": "The body cannot be parsed as its Content-Type says.",
    "not_found": "No such endpoint.",
    "invalid_request": "The request is invalid in another way; the message says how.",
    "internal_error": "An unexpected error: it has been logged, and no details are shown.",
}
_CATCH_ALL = {"not_found": 404, "invalid_request": 400, "internal_error": 500}


def error_code_meaning(cls: type[RecognitionError]) -> str:
    """The class's own docstring (its first paragraph), else its own ``default_message``."""
    doc = cls.__dict__.get("__doc__") or cls.__dict__.get("default_message") or cls.default_message
    return " ".join(doc.strip().split("\n\n")[0].split())


def error_code_choices() -> list[tuple[str, str]]:
    """Every stable ``code`` a client can see, each with its HTTP status and meaning: first the
    error hierarchy's (walked, so a new RecognitionError subclass is listed by itself), then
    DRF's and the catch-alls. The choices of the OpenAPI document's ``ErrorCodeEnum``."""
    choices: dict[str, str] = {}
    pending = [RecognitionError]
    while pending:
        cls = pending.pop(0)
        where = "on a failed job" if issubclass(cls, JobFailure) else str(cls.http_status)
        choices.setdefault(cls.code, f"{where}: {error_code_meaning(cls)}")
        pending[:0] = cls.__subclasses__()  # depth first, in the order they are defined
    others = [(c, t.status_code) for t, c in _DRF_CODES.items()] + list(_CATCH_ALL.items())
    for code, http_status in others:
        meaning = _OTHER_MEANINGS.get(code) or next(str(t.default_detail) for t, c in _DRF_CODES.items() if c == code)
        choices.setdefault(code, f"{http_status}: {meaning}")
    return list(choices.items())
