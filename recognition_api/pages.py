"""The web page: ``/`` (try a photo) and ``/rollout`` (the rollout state, for an ``ops`` key),
one template, and its few assets served from ``recognition_api/assets/`` by ``asset``.

Gunicorn serves everything (no WhiteNoise, no CDN, no build step): the assets are small, read
once per process, and sent with an ETag and a long cache lifetime under a URL that carries their
hash, so a new deploy is never served a stale script. The page loads without a key; the key is
typed into it, kept in the tab's sessionStorage and sent only in the ``Authorization`` header.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotModified
from django.shortcuts import render
from django.views.decorators.http import require_safe

ASSETS = Path(__file__).resolve().parent / "assets"
_TYPES = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# Everything from the project's own origin; no inline script or style (the JS sets styles through
# the CSSOM, which this allows); forms submit nowhere, so a key typed into one can never end up
# in a URL, whatever happens to the script.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@lru_cache(maxsize=len(_TYPES))
def asset_file(name: str) -> Asset:
    body = (ASSETS / name).read_bytes()
    return Asset(body, _TYPES[name], '"' + hashlib.sha256(body).hexdigest()[:16] + '"')


def asset_url(name: str) -> str:
    return f"/ui/{asset_file(name).etag.strip(chr(34))}/{name}"


def _page(request: HttpRequest, view: str) -> HttpResponse:
    context = {
        "view": view,
        "css": asset_url("app.css"),
        "js": asset_url("app.js"),
        "icon": asset_url("icon.svg"),
        "max_wait": int(min(settings.MAX_WAIT_SECONDS, 10)),
        "max_upload_mb": settings.MAX_UPLOAD_BYTES / (1024 * 1024),
    }
    response = render(request, "recognition_api/web.html", context)
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response["Referrer-Policy"] = "no-referrer"
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "no-cache"
    return response


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """GET /: upload a photo and see what the model suggests."""
    return _page(request, "recognize")


@require_safe
def rollout(request: HttpRequest) -> HttpResponse:
    """GET /rollout: the rollout state (the data needs a key with the ops scope)."""
    return _page(request, "rollout")


@require_safe
def asset(request: HttpRequest, digest: str, name: str) -> HttpResponse:
    """GET /ui/<hash>/<name>: one of the page's assets. Any hash is answered with the current
    file (a page from the previous deploy still gets a script), but only the current one is
    cached for long."""
    if name not in _TYPES:
        raise Http404(name)
    found = asset_file(name)
    current = found.etag.strip('"') == digest
    if request.headers.get("If-None-Match") == found.etag:
        response: HttpResponse = HttpResponseNotModified()
    else:
        response = HttpResponse(found.body, content_type=found.content_type)
    response["ETag"] = found.etag
    response["Cache-Control"] = "public, max-age=31536000, immutable" if current else "no-cache"
    response["X-Content-Type-Options"] = "nosniff"
    return response
