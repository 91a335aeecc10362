"""Rejections that only a real socket shows: a body over the limit as it streams in, a chunked
body without a length; and an odd but valid photo through the whole stack."""

from __future__ import annotations

import http.client
import io
import os
from urllib.parse import urlparse

from PIL import Image

from harness import Stack
from tests.conftest import encode


def stored_images(stack: Stack) -> int:
    directory = stack.tmp / "images"
    return len(os.listdir(directory)) if directory.exists() else 0


def test_it_refuses_a_body_over_the_size_limit_as_it_streams_in(stack: Stack) -> None:
    """413 from the upload handler, over a real socket; nothing stored. (The other rejections
    are tested in-process: tests/recognition_api/test_rejections.py.)"""
    before = stored_images(stack)
    with stack.client() as client:
        response = client.post("/recognize", files={"image": ("a.jpg", os.urandom(3 * 1024 * 1024), "image/jpeg")})
    assert (response.status_code, response.json()["error"]["code"]) == (413, "image_too_large")
    assert response.json()["error"]["message"]
    assert stored_images(stack) == before


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


def test_a_decoded_but_odd_png_is_accepted(stack: Stack) -> None:
    """A 16-bit grayscale PNG is a valid photo, not an error."""
    import numpy as np

    data = encode(Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)), "PNG")
    with stack.client() as client:
        response = client.post("/recognize?wait=20", files={"image": ("a.png", io.BytesIO(data), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
