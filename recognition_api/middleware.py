from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from common.logs import clean_request_id, request_id_var


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
