from __future__ import annotations

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import ImageMissing, ImageTooLarge, InvalidParameter, LengthRequired, RecognitionError
from recognition_api import services
from recognition_api.representations import job_representation
from recognition_api.serializers import (
    ErrorSerializer,
    FeedbackInputSerializer,
    FeedbackSerializer,
    JobSerializer,
    RecognizeInputSerializer,
    WaitQuerySerializer,
)

_MULTIPART_OVERHEAD = 64 * 1024

_RESULT_EXAMPLE = OpenApiExample(
    "A recognized photo",
    value={
        "id": "8f14e45fceea167a5a36dedd4bea2543",
        "status": "succeeded",
        "model": {"name": "reference", "version": "1"},
        "created_at": "2026-11-29T12:00:00.000+00:00",
        "started_at": "2026-11-29T12:00:00.004+00:00",
        "finished_at": "2026-11-29T12:00:00.120+00:00",
        "timings_ms": {"queue_wait": 4.1, "decode": 6.3, "prepare": 80.2, "inference": 21.5, "batch_size": 1,
                       "total": 120.0},
        "result": {
            "name": {"value": "Nordvik red coffee mug", "confidence": 0.61, "threshold": 0.2, "alternatives": []},
            "category": {"value": "kitchen_tableware", "confidence": 0.83, "threshold": 0.3, "alternatives": [
                {"value": "kitchen_tableware", "confidence": 0.83}, {"value": "home", "confidence": 0.08}]},
            "brand": {"value": "Nordvik", "confidence": 0.95, "threshold": 0.6, "alternatives": [
                {"value": "Nordvik", "confidence": 0.95}]},
            "color": {"value": None, "confidence": 0.31, "threshold": 0.4, "alternatives": [
                {"value": "red", "confidence": 0.31}, {"value": "orange", "confidence": 0.22}]},
        },
        "error": None,
        "request_id": "3c9a4d2e",
        "location": "/v1/recognitions/8f14e45fceea167a5a36dedd4bea2543",
    },
)
_ERRORS = {400: ErrorSerializer, 401: ErrorSerializer, 413: ErrorSerializer, 415: ErrorSerializer,
           422: ErrorSerializer, 429: ErrorSerializer, 503: ErrorSerializer}


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


def _discard_body(request: Request) -> None:
    """Read the rest of the request body, in chunks, without keeping it (bounded by Content-Length,
    which the view has checked)."""
    stream = request._request  # Django's request: its raw stream, unparsed
    while stream.read(64 * 1024):
        pass


class RecognizeApi(APIView):
    """POST /recognize and /v1/recognize."""

    @extend_schema(
        operation_id="recognize",
        summary="Recognize a listing photo",
        description=(
            "Queues the photo and answers 202 with the job and its Location. With "
            "`?wait=N` it waits up to N seconds and answers 200 with the result when it "
            "is ready in time (202 otherwise)."
        ),
        parameters=[OpenApiParameter("wait", float, description="seconds to wait, 0-30")],
        request={"multipart/form-data": RecognizeInputSerializer},
        responses={200: JobSerializer, 202: JobSerializer, **_ERRORS},
        examples=[_RESULT_EXAMPLE],
    )
    def post(self, request: Request) -> Response:
        wait = _wait_seconds(request)
        services.recognition_rate_check(client=request.user.policy, device_id=request.headers.get("X-Device-Id"))
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if not length and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            raise LengthRequired()
        if length > settings.MAX_UPLOAD_BYTES + _MULTIPART_OVERHEAD:
            raise ImageTooLarge(
                f"The upload is {length:,} bytes; the image limit is {settings.MAX_UPLOAD_BYTES:,} bytes."
            )
        # Before the upload is parsed, checked and stored: a refusal costs the API next to nothing.
        try:
            services.recognition_admission_check(client=request.user.policy, wait_seconds=wait)
        except RecognitionError:
            _discard_body(request)  # read, so that the client gets to read the answer
            raise
        upload = request.FILES.get("image")
        if upload is None:
            raise ImageMissing()
        record = services.recognition_job_create(
            data=upload.read(), client=request.user.policy, request_id=request.request_id,
            wait_seconds=wait,
        )
        return _job_response(record)


class RecognitionDetailApi(APIView):
    """GET /v1/recognitions/{id}."""

    @extend_schema(
        operation_id="recognition_get",
        summary="Read a recognition job",
        parameters=[OpenApiParameter("wait", float, description="seconds to wait for a result, 0-30")],
        responses={200: JobSerializer, 202: JobSerializer, 404: ErrorSerializer, 401: ErrorSerializer},
        examples=[_RESULT_EXAMPLE],
    )
    def get(self, request: Request, job_id: str) -> Response:
        record = services.recognition_job_get(job_id=job_id, client=request.user.policy,
                                              wait_seconds=_wait_seconds(request))
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
        responses={201: FeedbackSerializer, 400: ErrorSerializer, 401: ErrorSerializer, 404: ErrorSerializer,
                   409: ErrorSerializer},
        examples=[OpenApiExample("The seller kept the category and changed the color",
                                 value={"category": "kitchen_tableware", "color": "orange"}, request_only=True)],
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

    @extend_schema(operation_id="healthz", responses={200: dict})
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ReadyApi(APIView):
    """GET /readyz: Redis is reachable and the active model version has ready workers."""

    authentication_classes: list = []
    permission_classes: list = []

    @extend_schema(operation_id="readyz", responses={200: dict, 503: dict})
    def get(self, request: Request) -> Response:
        try:
            report = services.readiness()
        except Exception as exc:  # any Redis failure means "not ready", never a 500
            return Response(
                {"ready": False, "redis": {"ok": False, "error": type(exc).__name__}},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return Response(report, status=200 if report["ready"] else 503)


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
