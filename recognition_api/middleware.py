from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from common.logs import clean_request_id, request_id_var
from common.metrics import statsd


class RequestIdMiddleware:
    """Take X-Request-ID from the client (or make one), log with it, echo it back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = clean_request_id(request.headers.get("X-Request-ID"))
        request.request_id = request_id  # type: ignore[attr-defined]
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request_id
        return response


class MetricsMiddleware:
    """Count and time every request, tagged by endpoint, status class and model version."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed_ms = (time.perf_counter() - started) * 1000
        match = getattr(request, "resolver_match", None)
        tags = [
            f"endpoint:{match.url_name if match else 'unmatched'}",
            f"method:{request.method}",
            f"status_class:{response.status_code // 100}xx",
        ]
        data = getattr(response, "data", None)
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            tags.append(f"model_version:{data['model'].get('version', '')}")
        client = statsd()
        client.increment("api.request", tags=tags)
        client.distribution("api.latency", elapsed_ms, tags=tags)
        return response
