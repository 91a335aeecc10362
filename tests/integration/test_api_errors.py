"""Every bad request gets a 4xx with a stable code over a real socket, and leaves nothing behind."""

from __future__ import annotations

import http.client
import io
import os
from urllib.parse import urlparse

import pytest
from PIL import Image

from harness import Stack
from tests.common.test_imaging import _png_header_only
from tests.conftest import encode, jpeg_bytes, solid


def stored_images(stack: Stack) -> int:
    directory = stack.tmp / "images"
    return len(os.listdir(directory)) if directory.exists() else 0


def truncated_jpeg(coffee: Image.Image) -> bytes:
    data = jpeg_bytes(coffee)
    return data[: len(data) // 2]


BAD_UPLOADS = [
    ("empty file", lambda c: b"", "image/jpeg", 400, "image_empty"),
    ("too many bytes", lambda c: os.urandom(3 * 1024 * 1024), "image/jpeg", 413, "image_too_large"),
    ("text named .jpg", lambda c: b"not an image at all", "image/jpeg", 415, "image_not_an_image"),
    ("GIF", lambda c: encode(c, "GIF"), "image/gif", 415, "image_unsupported_format"),
    ("BMP", lambda c: encode(c, "BMP"), "image/bmp", 415, "image_unsupported_format"),
    ("truncated JPEG", truncated_jpeg, "image/jpeg", 422, "image_corrupt"),
    ("decompression bomb", lambda c: _png_header_only(40_000, 40_000), "image/png", 422, "image_too_many_pixels"),
    ("tiny image", lambda c: encode(solid((9, 9, 9), (8, 8)), "PNG"), "image/png", 422, "image_too_small"),
]


@pytest.mark.parametrize(("label", "make", "content_type", "status", "code"), BAD_UPLOADS,
                         ids=[u[0] for u in BAD_UPLOADS])
def test_it_rejects_a_bad_upload_with_its_code(stack: Stack, coffee: Image.Image, label: str, make,  # type: ignore[no-untyped-def]
                                               content_type: str, status: int, code: str) -> None:
    before = stored_images(stack)
    with stack.client() as client:
        response = client.post("/recognize", files={"image": ("photo.jpg", make(coffee), content_type)})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert stored_images(stack) == before  # nothing stored, nothing queued


def test_it_asks_for_the_image_field(stack: Stack, coffee: Image.Image) -> None:
    with stack.client() as client:
        response = client.post("/recognize", files={"photo": ("a.jpg", jpeg_bytes(coffee), "image/jpeg")})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "image_missing")


def test_it_rejects_a_body_that_is_not_multipart(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post("/recognize", json={"image": "abc"})
    assert (response.status_code, response.json()["error"]["code"]) == (415, "unsupported_media_type")


def test_it_rejects_a_chunked_upload_without_a_length(stack: Stack) -> None:
    url = urlparse(stack.api_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\nabc\r\n--x--\r\n"
    connection.request("POST", "/recognize", body=iter([body]), encode_chunked=True, headers={
        "Authorization": f"Bearer {stack.api_key}", "Content-Type": "multipart/form-data; boundary=x",
        "Transfer-Encoding": "chunked"})
    response = connection.getresponse()
    assert response.status == 411
    assert b"length_required" in response.read()


@pytest.mark.parametrize("wait", ["abc", "-1", "1000"])
def test_it_rejects_a_bad_wait(stack: Stack, coffee: Image.Image, wait: str) -> None:
    with stack.client() as client:
        response = client.post(f"/recognize?wait={wait}", files={"image": ("a.jpg", jpeg_bytes(coffee), "image/jpeg")})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_parameter")


def test_it_requires_an_api_key(stack: Stack, coffee: Image.Image) -> None:
    import httpx

    files = {"image": ("a.jpg", jpeg_bytes(coffee), "image/jpeg")}
    anonymous = httpx.post(f"{stack.api_url}/recognize", files=files)
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "not_authenticated")
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = httpx.post(f"{stack.api_url}/recognize", files=files, headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job-id", "../../etc"])
def test_an_unknown_job_is_not_found(stack: Stack, job_id: str) -> None:
    with stack.client() as client:
        response = client.get(f"/v1/recognitions/{job_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] in ("job_not_found", "not_found")


def test_unknown_urls_and_methods_answer_in_json(stack: Stack) -> None:
    with stack.client() as client:
        missing = client.get("/nothing-here")
        wrong_method = client.get("/recognize")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")


def test_a_decoded_but_odd_png_is_accepted(stack: Stack) -> None:
    """A 16-bit grayscale PNG is a valid photo, not an error."""
    import numpy as np

    data = encode(Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)), "PNG")
    with stack.client() as client:
        response = client.post("/recognize?wait=20", files={"image": ("a.png", io.BytesIO(data), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
