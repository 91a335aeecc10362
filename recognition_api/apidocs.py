"""The API document for people: Swagger UI at ``/docs`` and Redoc at ``/redoc``, both reading
``/openapi.json``, public (no key: the document is), and both served by the API itself from
drf-spectacular-sidecar's bundled builds: no CDN, nothing fetched from anywhere else.

How the bundles are served: drf-spectacular's ``SIDECAR`` setting puts their URLs under
``STATIC_URL`` (``/static/drf_spectacular_sidecar/...``), which Django alone does not answer, and
the API image has no static-file server in front of Gunicorn (and no WhiteNoise). ``sidecar_asset``
answers exactly those URLs: the set of files it may send is fixed when the process starts (every
file the installed sidecar package holds), so no URL can name anything else, and each is sent
by Django's ``static.serve`` (streamed with sendfile by Gunicorn, with Last-Modified and 304s).
That is a dozen files, fetched once per browser and cached; collectstatic and a separate static
server would be one more moving part for the same bytes.

Both pages are sent with a Content-Security-Policy that lets them load from this origin only:
Redoc's sidebar shows a logo from cdn.redoc.ly whatever its options say, and the policy keeps the
browser from asking for it (Redoc then leaves it out). Swagger UI is drf-spectacular's "split"
view, whose start-up script is a file of its own (``/docs?script=``), not an inline script.
"""

from __future__ import annotations

from pathlib import Path

import drf_spectacular_sidecar
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.static import serve
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerSplitView

SIDECAR_ROOT = Path(drf_spectacular_sidecar.__file__).resolve().parent / "static" / "drf_spectacular_sidecar"
SIDECAR_FILES = frozenset(p.relative_to(SIDECAR_ROOT).as_posix() for p in SIDECAR_ROOT.rglob("*") if p.is_file())
# The bundles' URLs carry no version: a browser checks again after an hour (a 304 when unchanged),
# so a deploy with a newer sidecar is picked up soon enough.
_CACHE_CONTROL = "public, max-age=3600"
# Swagger UI and Redoc set inline styles; Redoc runs its search in a worker made from a blob.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


class _Page:
    """The headers of both pages (a mixin of the drf-spectacular views)."""

    def finalize_response(self, request, response, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response["X-Content-Type-Options"] = "nosniff"
        response["Referrer-Policy"] = "no-referrer"
        return response


class SwaggerUiView(_Page, SpectacularSwaggerSplitView):
    """GET /docs: Swagger UI. Its *Authorize* button takes an API key (kept in the page, not stored)
    and sends it as ``Authorization: Bearer <key>`` with each "Try it out"."""

    authentication_classes: list = []
    permission_classes: list = []
    url_name = "openapi"


class RedocView(_Page, SpectacularRedocView):
    """GET /redoc: Redoc, in a template without drf-spectacular's Google Fonts link."""

    authentication_classes: list = []
    permission_classes: list = []
    url_name = "openapi"
    template_name = "recognition_api/redoc.html"


def sidecar_asset(request: HttpRequest, path: str) -> HttpResponse:
    """GET /static/drf_spectacular_sidecar/<path>: a file of the Swagger UI or Redoc build."""
    if request.method not in ("GET", "HEAD"):
        response: HttpResponse = JsonResponse(
            {"error": {"code": "method_not_allowed", "message": f'Method "{request.method}" not allowed.'}},
            status=405,
        )
        response["Allow"] = "GET, HEAD"
        return response
    if path not in SIDECAR_FILES:
        raise Http404(path)
    response = serve(request, path, document_root=SIDECAR_ROOT)
    response["Cache-Control"] = _CACHE_CONTROL
    response["X-Content-Type-Options"] = "nosniff"
    return response
