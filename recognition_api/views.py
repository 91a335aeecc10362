from __future__ import annotations

import select
import time
from collections.abc import Callable

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import ImageMissing, ImageTooLarge, InvalidParameter, LengthRequired, RecognitionError
from recognition_api import schema, services, threadqueue
from recognition_api.auth import HasApiKey, HasOpsScope
from recognition_api.representations import job_representation
from recognition_api.serializers import (
    FeedbackInputSerializer,
    RecognizeInputSerializer,
    RecognizeUrlInputSerializer,
    RolloutQuerySerializer,
    WaitQuerySerializer,
)

_MULTIPART_OVERHEAD = 64 * 1024
_MAKE_WAY_AFTER_SECONDS = 1.0


def _wait_seconds(request: Request) -> float:
    query = WaitQuerySerializer(data=request.query_params)
    if not query.is_valid():
        raise InvalidParameter("; ".join(str(e) for errs in query.errors.values() for e in errs))
    return float(query.validated_data["wait"])


def _job_response(record: dict[str, str]) -> Response:
    location = reverse("recognition-detail", kwargs={"job_id": record["id"]})
    body = job_representation(record, location=location)
    finished = body["status"] in ("succeeded", "failed")
    response = Response(body, status=status.HTTP_200_OK if finished else status.HTTP_202_ACCEPTED)
    response["Location"] = location
    return response


def _image_url(request: Request) -> str | None:
    """The image_url of a JSON body, or of a multipart form (which may hold it instead of a file)."""
    if not isinstance(request.data, dict):  # a QueryDict is one
        raise InvalidParameter('Send a JSON object: {"image_url": "s3://bucket/key"}.')
    if "image_url" not in request.data:
        return None
    given = RecognizeUrlInputSerializer(data=request.data)
    if not given.is_valid():
        raise InvalidParameter("; ".join(f"image_url: {e}" for e in given.errors.get("image_url", [])))
    return given.validated_data["image_url"]


def _client_gone(request: Request) -> Callable[[], bool] | None:
    """Whether the client of this request has hung up (closed its connection, or its side of it),
    asked of the connection's socket without reading from it: under Gunicorn, whose environ holds
    the socket; None elsewhere. A waiting request that asks it every second holds its thread about
    a second after its client has gone, not for the rest of the wait (a phone's request timing out,
    an app closed, or a client that posts with ``?wait=30`` and hangs up, again and again)."""
    sock = request.META.get("gunicorn.socket")
    if sock is None:
        return None
    try:
        fd = sock.fileno()
    except OSError:
        return None

    def gone() -> bool:
        poller = select.poll()
        # The peer's FIN (POLLRDHUP), a reset (POLLERR, POLLHUP) or a closed fd (POLLNVAL); bytes
        # the client may have sent after its request (POLLIN, not asked) are not a hang-up.
        poller.register(fd, select.POLLRDHUP)
        return bool(poller.poll(0))

    return gone


def _wait_cut(request: Request) -> Callable[[], str | None]:
    """For a request that waits for its job: why it should stop waiting now, or None. Asked once its
    job is queued and at each one-second re-check of its wait. ``client_gone``: nobody is left to
    answer. ``threads_busy``: after a second of waiting, every thread of this process is busy and a
    request queues for one (``recognition_api/threadqueue.py``): this one makes way for it and
    answers 202 (the job goes on); waiting at least a second first keeps a client that polls with
    ``?wait`` from polling faster than that."""
    gone = _client_gone(request)
    started: float | None = None  # the wait's start: the first question, once the job is queued

    def cut() -> str | None:
        nonlocal started
        if gone is not None and gone():
            return "client_gone"
        if started is None:
            started = time.monotonic()
        elif time.monotonic() - started >= _MAKE_WAY_AFTER_SECONDS and threadqueue.QUEUE.make_way():
            return "threads_busy"
        return None

    return cut


def _discard_body(request: Request) -> None:
    """Read the rest of the request body, in chunks, without keeping it (bounded by Content-Length,
    which the view has checked)."""
    stream = request._request  # Django's request: its raw stream, unparsed
    while stream.read(64 * 1024):
        pass


class RecognizeApi(APIView):
    """POST /recognize and /v1/recognize."""

    # JSON here only ({"image_url": ...}); every other endpoint that takes a body has its own.
    parser_classes = [MultiPartParser, JSONParser]

    @extend_schema(
        operation_id="recognize",
        summary="Recognize a listing photo",
        description=(
            "Queues the photo and answers 202 with the job and its Location. With "
            "`?wait=N` it waits up to N seconds and answers 200 with the result when it "
            "is ready in time (202 otherwise).\n\n"
            "The photo is the multipart field `image`, or, when the app has put it on S3 already, "
            "`image_url` (`s3://bucket/key`) in a JSON body (or as a multipart form field, without a "
            "file). An image_url is read only under the prefixes the service is configured for "
            "(`IMAGE_URL_ALLOWED`; 400 image_url_not_allowed otherwise) and is checked exactly like "
            "an upload; 422 image_url_not_found, 403 image_url_forbidden, 503 image_url_unavailable."
        ),
        parameters=schema.RECOGNIZE_PARAMETERS,
        request={"multipart/form-data": RecognizeInputSerializer, "application/json": RecognizeUrlInputSerializer},
        responses=schema.RECOGNIZE_RESPONSES,
        examples=[*schema.RECOGNIZE_EXAMPLES, OpenApiExample(
            "A photo the app has put on S3", value={"image_url": "s3://listing-photos/uploads/1234/front.jpg"},
            request_only=True, media_type="application/json")],
    )
    def post(self, request: Request) -> Response:
        wait = _wait_seconds(request)
        # Rate and admission in one round trip, before the upload is parsed, checked and stored: a
        # refusal costs the API next to nothing. Answered in this order: rate, length, admission.
        checks = services.recognition_precheck(client=request.user.policy,
                                               device_id=request.headers.get("X-Device-Id"), wait_seconds=wait)
        checks.raise_if_rate_limited()
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if not length and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            raise LengthRequired()
        if length > settings.MAX_UPLOAD_BYTES + _MULTIPART_OVERHEAD:
            raise ImageTooLarge(
                f"The upload is {length:,} bytes; the image limit is {settings.MAX_UPLOAD_BYTES:,} bytes."
            )
        try:
            checks.raise_if_not_admitted()
        except RecognitionError:
            _discard_body(request)  # read, so that the client gets to read the answer
            raise
        upload = request.FILES.get("image")
        image_url = _image_url(request)
        if upload is not None and image_url is not None:
            raise InvalidParameter("Send the photo either as the file 'image' or as 'image_url', not both.")
        if upload is not None:
            data = upload.read()
        elif image_url is not None:
            data = services.image_url_read(image_url=image_url)
        else:
            raise ImageMissing()
        record = services.recognition_job_create(
            data=data, client=request.user.policy, request_id=request.request_id,
            wait_seconds=wait, wait_cut=_wait_cut(request) if wait > 0 else None,
        )
        return _job_response(record)


@extend_schema_view(post=extend_schema(operation_id="recognize_v1"))
class RecognizeV1Api(RecognizeApi):
    """POST /v1/recognize: the same operation under the versioned prefix, with an operationId of its
    own (OpenAPI wants them unique; generated clients name their methods after them)."""


class RecognitionDetailApi(APIView):
    """GET /v1/recognitions/{id}."""

    @extend_schema(
        operation_id="recognition_get",
        summary="Read a recognition job",
        description=(
            "The job, for the key that created it: `status` is queued, running, succeeded or failed; "
            "`model` is the version that computed it; `result` has each field's value (null below its "
            "threshold), confidence and alternatives; a failed job has `error`. With `?wait=N` it waits "
            "up to N seconds for an unfinished job. Jobs expire after `JOB_TTL_SECONDS` (a day)."
        ),
        parameters=schema.DETAIL_PARAMETERS,
        responses=schema.DETAIL_RESPONSES,
    )
    def get(self, request: Request, job_id: str) -> Response:
        wait = _wait_seconds(request)
        record = services.recognition_job_get(job_id=job_id, client=request.user.policy, wait_seconds=wait,
                                              wait_cut=_wait_cut(request) if wait > 0 else None)
        return _job_response(record)


class RecognitionFeedbackApi(APIView):
    """POST /v1/recognitions/{id}/feedback."""

    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="recognition_feedback",
        summary="Tell what the seller finally listed",
        description=(
            "With the key that created the job, once per job that succeeded: the values the seller "
            "listed (any subset of name, category, brand, color; null or \"\" for a field left blank). "
            "It is counted per model version and field as accepted, changed, filled or blank, which "
            "gives each model version a live accuracy (`python -m models_registry accuracy`)."
        ),
        request=FeedbackInputSerializer,
        parameters=schema.FEEDBACK_PARAMETERS,
        responses=schema.FEEDBACK_RESPONSES,
        examples=schema.FEEDBACK_EXAMPLES,
    )
    def post(self, request: Request, job_id: str) -> Response:
        data = FeedbackInputSerializer(data=request.data)
        if not data.is_valid():
            raise InvalidParameter("; ".join(str(e) for errs in data.errors.values() for e in errs))
        body = services.recognition_feedback_create(job_id=job_id, client=request.user.policy,
                                                     feedback=dict(data.validated_data))
        return Response(body, status=status.HTTP_201_CREATED)


class HealthApi(APIView):
    """GET /healthz: the process is alive (no dependencies checked)."""

    authentication_classes: list = []
    permission_classes: list = []

    @extend_schema(operation_id="healthz", summary="Is the process alive?", responses=schema.HEALTH_RESPONSES)
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ReadyApi(APIView):
    """GET /readyz: Redis is reachable and the active model version has ready workers."""

    authentication_classes: list = []
    permission_classes: list = []

    @extend_schema(operation_id="readyz", summary="Can the service recognize photos now?",
                   responses=schema.READY_RESPONSES)
    def get(self, request: Request) -> Response:
        try:
            report = services.readiness()
        except Exception as exc:  # any Redis failure means "not ready", never a 500
            return Response(
                {"ready": False, "redis": {"ok": False, "error": type(exc).__name__}},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return Response(report, status=200 if report["ready"] else 503)


class RolloutApi(APIView):
    """GET /v1/rollout: the rollout state, for a key with the ops scope."""

    permission_classes = [HasApiKey, HasOpsScope]

    @extend_schema(
        operation_id="rollout_get",
        summary="Read the rollout state",
        description=(
            "For a key with the `ops` scope (403 permission_denied otherwise): the active, previous, "
            "canary (+ weight) and shadow (+ fraction) versions, and per version its role, ready "
            "workers, queue depth, whether it was verified, its jobs, live accuracy per field and, "
            "for the shadow version, its agreement with the active one, over `window` seconds. The "
            "same report as `python -m models_registry status --json`; read-only."
        ),
        parameters=[RolloutQuerySerializer],
        responses=schema.ROLLOUT_RESPONSES,
    )
    def get(self, request: Request) -> Response:
        query = RolloutQuerySerializer(data=request.query_params)
        if not query.is_valid():
            raise InvalidParameter("; ".join(f"{name}: {e}" for name, errs in query.errors.items() for e in errs))
        return Response(services.rollout_report_get(window_seconds=query.validated_data["window"]))


def not_found(request, exception=None):  # type: ignore[no-untyped-def]
    """JSON 404 for URLs that match no route (Django's default is an HTML page)."""
    from django.http import JsonResponse

    return JsonResponse({"error": {"code": "not_found", "message": "No such endpoint."}}, status=404)


def server_error(request):  # type: ignore[no-untyped-def]
    from django.http import JsonResponse

    return JsonResponse(
        {"error": {"code": "internal_error", "message": "Internal error; it has been logged."}},
        status=500,
    )
