"""What the OpenAPI document (/openapi.json, shown at /docs and /redoc) says beyond the views'
own code: the API key's security scheme, each endpoint's answers with the error codes each status
carries, the response headers, and an example of every request and response.

The views take their ``responses``, ``parameters`` and ``examples`` from here, so that a view's
code stays short; the error codes themselves (``ErrorCodeEnum``) come from the error hierarchy
(``recognition_api.errors.error_code_choices``), not from this module.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse

from recognition_api.serializers import (
    ErrorSerializer,
    FeedbackSerializer,
    HealthSerializer,
    JobSerializer,
    ReadinessSerializer,
    RolloutSerializer,
)


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """``recognition_api.auth.ApiKeyAuthentication`` as an HTTP bearer scheme: every operation of a
    view that authenticates with it lists it under ``security`` (a view without authentication,
    like /healthz, lists none), and Swagger UI's *Authorize* button sends the key it is given as
    ``Authorization: Bearer <key>`` with every "Try it out"."""

    target_class = "recognition_api.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key, sent as `Authorization: Bearer <key>`. Keys are issued by the operators "
                "(`python manage.py create_api_key <client-name>`); each has its own rate and share of "
                "the queue. Without it: 401 `not_authenticated`; with a wrong one: 401 `invalid_api_key`."
            ),
        }


# --- examples ---------------------------------------------------------------------------

JOB_ID = "6b4f2a1e9c0d4b7e8f3a2c1d0e9f8a7b"
_LOCATION = f"/v1/recognitions/{JOB_ID}"

# The real answer for scikit-image's `coffee` photo (README, "API"), timings of a 2-core CPU host.
SUCCEEDED_JOB: dict[str, Any] = {
    "id": JOB_ID,
    "status": "succeeded",
    "model": {"name": "reference", "version": "1"},
    "created_at": "2026-11-29T23:52:07.265+00:00",
    "started_at": "2026-11-29T23:52:07.270+00:00",
    "finished_at": "2026-11-29T23:52:07.590+00:00",
    "timings_ms": {"queue_wait": 4.6, "decode": 6.1, "prepare": 251.0, "batch_wait": 5.2, "inference": 30.3,
                   "batch_size": 1, "total": 325.0},
    "result": {
        "name": {"value": "Red espresso", "confidence": 0.9316, "threshold": 0.35, "alternatives": [
            {"value": "Red espresso", "confidence": 0.899}, {"value": "Red cup", "confidence": 0.0189},
            {"value": "Red coffee mug", "confidence": 0.0039}]},
        "category": {"value": "kitchen_tableware", "confidence": 0.9316, "threshold": 0.35, "alternatives": [
            {"value": "kitchen_tableware", "confidence": 0.9316}, {"value": "other", "confidence": 0.0622},
            {"value": "home", "confidence": 0.0019}]},
        "brand": {"value": None, "confidence": 0.0, "threshold": 0.6, "alternatives": []},
        "color": {"value": "red", "confidence": 0.4038, "threshold": 0.3, "alternatives": [
            {"value": "red", "confidence": 0.4038}, {"value": "beige", "confidence": 0.2125},
            {"value": "burgundy", "confidence": 0.1532}]},
    },
    "error": None,
    "request_id": "f3e1c2a4b5d6478899aabbccddeeff00",
    "location": _LOCATION,
}
QUEUED_JOB: dict[str, Any] = {
    **SUCCEEDED_JOB, "status": "queued", "started_at": None, "finished_at": None, "timings_ms": {},
    "result": None,
}
RUNNING_JOB: dict[str, Any] = {
    **QUEUED_JOB, "status": "running", "started_at": "2026-11-29T23:52:07.270+00:00",
    "timings_ms": {"queue_wait": 4.6},
}
FAILED_JOB: dict[str, Any] = {
    **SUCCEEDED_JOB, "status": "failed", "timings_ms": {"queue_wait": 4.6, "total": 325.0}, "result": None,
    "error": {"code": "image_decode_failed", "message": "The image could not be decoded."},
}

_MESSAGES = {
    "image_missing": "Send the photo as the multipart form field 'image', or where it is on S3 as JSON "
                     '{"image_url": "s3://bucket/key"}.',
    "image_empty": "The uploaded image is empty (0 bytes).",
    "image_url_not_allowed": "image_url is not an S3 location this service is configured to read.",
    "invalid_parameter": "wait must be at most 30 seconds.",
    "malformed_request": "Multipart form parse error - Invalid boundary in multipart: None",
    "not_authenticated": "Authentication credentials were not provided.",
    "invalid_api_key": "This API key is not valid.",
    "image_url_forbidden": "This service may not read the object at image_url.",
    "job_not_found": "No recognition job with this id (it may have expired).",
    "feedback_exists": "Feedback for this job was given already; it is kept once.",
    "job_not_succeeded": "The job is running; feedback is taken only for a job that succeeded.",
    "length_required": "Send the upload with a Content-Length header (chunked uploads are not accepted).",
    "image_too_large": "The upload is 12,582,912 bytes; the image limit is 10,485,760 bytes.",
    "unsupported_media_type": 'Unsupported media type "text/plain" in request.',
    "image_not_an_image": "The upload is not an image in a format we can read (send JPEG, PNG, WebP or HEIC).",
    "image_unsupported_format": "GIF images are not accepted; send JPEG, PNG, WebP or HEIC.",
    "image_corrupt": "The image is truncated or corrupt and cannot be decoded.",
    "image_too_many_pixels": "The image is 20000x20000 pixels; the limit is 50,000,000 pixels.",
    "image_too_many_scans": "The JPEG has too many progressive scans to decode at a bounded cost; re-encode it.",
    "image_too_small": "The image is 16x16; each side must be at least 32 pixels.",
    "image_url_not_found": "There is no object at image_url.",
    "rate_limited": "This API key (or this device) is over its rate of new jobs; retry in 1 s.",
    "queue_full": "Too many photos are waiting to be recognized; retry shortly.",
    "service_unavailable": "The recognition service is temporarily unavailable; retry shortly.",
    "no_active_model": "No model version is active; an operator must promote one.",
    "overloaded": "Too many large images are being decoded right now; retry shortly.",
    "not_replicated": "The job reached 0 of 1 Redis replicas in time; retry shortly.",
    "image_url_unavailable": "S3 did not answer in time for image_url; retry shortly.",
    "permission_denied": "This API key does not have the 'ops' scope, which the rollout state needs.",
}


def error_example(code: str) -> OpenApiExample:
    return OpenApiExample(code, value={"error": {"code": code, "message": _MESSAGES[code]}}, response_only=True)


def error(description: str, *codes: str) -> OpenApiResponse:
    """An error answer: its status's codes, each with an example body."""
    listed = ", ".join(f"`{code}`" for code in codes)
    return OpenApiResponse(ErrorSerializer, f"{description} ({listed})", [error_example(c) for c in codes])


def job(description: str, *examples: tuple[str, dict[str, Any]]) -> OpenApiResponse:
    return OpenApiResponse(JobSerializer, description,
                           [OpenApiExample(name, value=value, response_only=True) for name, value in examples])


# --- headers and parameters ---------------------------------------------------------------

# What recognition_api.errors.exception_handler adds to every error answer of these statuses.
_ERROR_HEADERS = {
    "401": {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True,
                                 "description": '`Bearer realm="recognition"`'}},
    "429": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "required": True,
                            "description": "Seconds to wait before sending the request again."}},
}
_ERROR_HEADERS["503"] = _ERROR_HEADERS["429"]
_ERROR_REF = "#/components/schemas/Error"


def error_headers(result: dict[str, Any], generator: Any, **kwargs: Any) -> dict[str, Any]:
    """A POSTPROCESSING_HOOK: every error answer (an ``Error`` body) of every operation declares the
    headers that come with its status (401 WWW-Authenticate; 429 and 503 Retry-After), so that no
    endpoint can forget them. An answer of another shape (/readyz's 503) is left alone."""
    for item in result.get("paths", {}).values():
        for operation in item.values():
            for status, response in operation.get("responses", {}).items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                if status in _ERROR_HEADERS and schema.get("$ref") == _ERROR_REF:
                    response["headers"] = {**response.get("headers", {}), **_ERROR_HEADERS[status]}
    return result


_LOCATION_HEADER = OpenApiParameter(
    "Location", str, OpenApiParameter.HEADER, required=True, response=[200, 202],
    description="The job's URL (`GET /v1/recognitions/{id}`).",
)


def _wait(description: str) -> OpenApiParameter:
    return OpenApiParameter(
        "wait", {"type": "number", "minimum": 0, "maximum": settings.MAX_WAIT_SECONDS, "default": 0},
        description=f"{description} (at most `MAX_WAIT_SECONDS`, {settings.MAX_WAIT_SECONDS:g} here); 0: do not wait.",
    )


_JOB_ID = OpenApiParameter("job_id", str, OpenApiParameter.PATH, description="The job's `id` (32 hex digits).")

# --- per endpoint -------------------------------------------------------------------------

_UNAUTHENTICATED = error("No key, or not a valid one", "not_authenticated", "invalid_api_key")
_UNAVAILABLE = error("Redis or the queue cannot be reached; retry after `Retry-After` seconds",
                     "service_unavailable")

RECOGNIZE_PARAMETERS = [
    _wait("Seconds to wait for the result: 200 with the finished job if it is ready in time, else 202"),
    OpenApiParameter("X-Device-Id", str, OpenApiParameter.HEADER, description=(
        "The app installation sending the photo: for a key shared by many devices, its rate of new jobs "
        "is then also counted per device.")),
    OpenApiParameter("X-Request-ID", str, OpenApiParameter.HEADER, description=(
        "Kept (when it is 1-128 letters, digits, `.`, `_`, `:` or `-`; otherwise one is made), logged by the API "
        "and the worker, stored on the job and returned in the response header of the same name.")),
    _LOCATION_HEADER,
]
RECOGNIZE_RESPONSES = {
    200: job("The job finished within `wait` seconds (it may have `failed`)", ("Succeeded", SUCCEEDED_JOB),
             ("Failed in the worker", FAILED_JOB)),
    202: job("The job is queued (or still running after `wait` seconds): read it at `Location`",
             ("Queued", QUEUED_JOB)),
    400: error("The request is incomplete or malformed", "image_missing", "image_empty", "invalid_parameter",
               "malformed_request", "image_url_not_allowed"),
    401: _UNAUTHENTICATED,
    403: error("The service may not read the object at `image_url`", "image_url_forbidden"),
    411: error("A chunked upload without Content-Length", "length_required"),
    413: error("The photo is larger than `MAX_UPLOAD_BYTES` (10 MiB by default)", "image_too_large"),
    415: error("Not a multipart form or JSON, not an image, or not an accepted format", "unsupported_media_type",
               "image_not_an_image", "image_unsupported_format"),
    422: error("An image that cannot be taken as it is", "image_corrupt", "image_too_many_pixels",
               "image_too_many_scans", "image_too_small", "image_url_not_found"),
    429: error("Over the key's rate or queue share, or the job would not finish in time; retry after "
               "`Retry-After` seconds", "rate_limited", "queue_full"),
    503: error("The service cannot take the job now; retry after `Retry-After` seconds", "service_unavailable",
               "no_active_model", "overloaded", "not_replicated", "image_url_unavailable"),
}
RECOGNIZE_EXAMPLES = [
    OpenApiExample(
        "A listing photo", value={"image": "(the photo's bytes: JPEG, PNG, WebP or HEIC)"}, request_only=True,
        media_type="multipart/form-data",
        description='`curl -H "Authorization: Bearer $KEY" -F image=@coffee.jpg ".../v1/recognize?wait=10"`',
    ),
]

DETAIL_PARAMETERS = [
    _JOB_ID, _wait("Seconds to wait for an unfinished job to finish"), _LOCATION_HEADER,
]
DETAIL_RESPONSES = {
    200: job("The job has finished", ("Succeeded", SUCCEEDED_JOB), ("Failed in the worker", FAILED_JOB)),
    202: job("The job has not finished (yet, after `wait` seconds)", ("Queued", QUEUED_JOB),
             ("Running", RUNNING_JOB)),
    400: error("`wait` is not a number between 0 and `MAX_WAIT_SECONDS`", "invalid_parameter"),
    401: _UNAUTHENTICATED,
    404: error("No such job: it never existed, it expired, or another key created it", "job_not_found"),
    503: _UNAVAILABLE,
}

FEEDBACK_PARAMETERS = [_JOB_ID]
FEEDBACK_RESPONSES = {
    201: OpenApiResponse(FeedbackSerializer, "Counted, per field given", [OpenApiExample(
        "Category accepted, color changed", response_only=True,
        value={"id": JOB_ID, "model": {"name": "reference", "version": "1"},
               "outcomes": {"category": "accepted", "color": "changed"}})]),
    400: error("Not an object of known fields, or a value over 200 characters", "invalid_parameter",
               "malformed_request"),
    401: _UNAUTHENTICATED,
    404: error("No such job for this key", "job_not_found"),
    409: error("Given already, or the job has not succeeded", "feedback_exists", "job_not_succeeded"),
    415: error("The body is not JSON", "unsupported_media_type"),
    503: _UNAVAILABLE,
}
FEEDBACK_EXAMPLES = [
    OpenApiExample("The seller kept the category and changed the color", request_only=True,
                   value={"category": "kitchen_tableware", "color": "orange"}),
]

HEALTH_RESPONSES = {
    200: OpenApiResponse(HealthSerializer, "The process is alive (nothing else is checked)",
                         [OpenApiExample("Alive", value={"status": "ok"}, response_only=True)]),
}
READY_RESPONSES = {
    200: OpenApiResponse(ReadinessSerializer, "Redis answers and the active model version has ready workers", [
        OpenApiExample("Ready", response_only=True, value={
            "redis": {"ok": True, "ping_ms": 0.21}, "active_version": "1", "ready_workers": 2, "ready": True}),
        OpenApiExample("Ready, with a canary", response_only=True, value={
            "redis": {"ok": True, "ping_ms": 0.25}, "active_version": "1", "ready_workers": 2,
            "canary_version": "2", "canary_ready_workers": 1, "ready": True}),
    ]),
    503: OpenApiResponse(ReadinessSerializer, "Not ready: Redis does not answer, or no worker of the active "
                         "version is ready", [
        OpenApiExample("No ready worker", response_only=True, value={
            "redis": {"ok": True, "ping_ms": 0.3}, "active_version": "2", "ready_workers": 0, "ready": False}),
        OpenApiExample("Redis unreachable", response_only=True, value={
            "ready": False, "redis": {"ok": False, "error": "ConnectionError"}}),
    ]),
}

ROLLOUT_RESPONSES = {
    200: OpenApiResponse(RolloutSerializer, "The rollout state and each version's figures", [OpenApiExample(
        "Version 3 as canary and shadow of 1", response_only=True, value={
            "active": "1", "previous": None, "canary": "3", "canary_weight": 0.5, "shadow": "3",
            "shadow_fraction": 1.0, "updated_by": "root@vm", "updated_at": 1796132968.4,
            "window_seconds": 86400.0, "versions": [
                {"version": "1", "ready_workers": 1, "queue": "recognize.1", "queue_depth": 0, "verified": True,
                 "role": "active", "jobs": 16, "accuracy": {"name": None, "category": 1.0, "brand": None,
                                                            "color": None},
                 "feedback": {"name": 0, "category": 16, "brand": 0, "color": 0}},
                {"version": "3", "ready_workers": 1, "queue": "recognize.3", "queue_depth": 0, "verified": True,
                 "role": "canary", "jobs": 24, "accuracy": {"name": None, "category": 0.0, "brand": None,
                                                            "color": None},
                 "feedback": {"name": 0, "category": 16, "brand": 0, "color": 0},
                 "shadow_agreement": {"name": 1.0, "category": 0.0, "brand": 1.0, "color": 1.0},
                 "shadow_compared": 16},
            ]})]),
    400: error("`window` is not a number of seconds between 60 and 8 days", "invalid_parameter"),
    401: _UNAUTHENTICATED,
    403: error("The key has no `ops` scope", "permission_denied"),
    503: _UNAVAILABLE,
}
