"""Every bad request gets a 4xx with a stable code and a message, and leaves nothing behind:
no stored photo, no job record, no message on a queue. In-process; what needs a real socket
(a body over the size limit as it streams in, chunked bodies) is in tests/integration."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.common.test_imaging import _png_header_only
from tests.conftest import encode, jpeg_bytes, solid
from tests.recognition_api.conftest import Api, photo


def truncated_jpeg(coffee: Image.Image) -> bytes:
    data = jpeg_bytes(coffee)
    return data[: len(data) // 2]


BAD_UPLOADS = [
    ("empty file", lambda c: b"", 400, "image_empty"),
    ("text named .jpg", lambda c: b"not an image at all", 415, "image_not_an_image"),
    ("GIF", lambda c: encode(c, "GIF"), 415, "image_unsupported_format"),
    ("BMP", lambda c: encode(c, "BMP"), 415, "image_unsupported_format"),
    ("truncated JPEG", truncated_jpeg, 422, "image_corrupt"),
    ("decompression bomb", lambda c: _png_header_only(40_000, 40_000), 422, "image_too_many_pixels"),
    ("tiny image", lambda c: encode(solid((9, 9, 9), (8, 8)), "PNG"), 422, "image_too_small"),
]


def assert_nothing_left(api: Api) -> None:
    assert api.stored_images() == []
    assert api.messages() == []
    assert not api.redis.keys(f"{api.prefix}job:*")


@pytest.mark.parametrize(("label", "make", "status", "code"), BAD_UPLOADS, ids=[u[0] for u in BAD_UPLOADS])
def test_it_rejects_a_bad_upload_with_its_code(api: Api, coffee: Image.Image, label: str, make,  # type: ignore[no-untyped-def]
                                               status: int, code: str) -> None:
    upload = io.BytesIO(make(coffee))
    upload.name = "photo.jpg"
    response = api.client.post("/recognize", {"image": upload}, format="multipart")
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert_nothing_left(api)


def test_it_asks_for_the_image_field(api: Api) -> None:
    response = api.client.post("/recognize", {"photo": photo()}, format="multipart")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "image_missing")
    assert_nothing_left(api)


def test_it_rejects_a_body_that_is_neither_multipart_nor_json(api: Api) -> None:
    response = api.client.post("/recognize", "image=abc", content_type="application/x-www-form-urlencoded")
    assert (response.status_code, response.json()["error"]["code"]) == (415, "unsupported_media_type")
    assert_nothing_left(api)


def test_a_json_body_takes_an_image_url_never_the_photo_itself(api: Api) -> None:
    response = api.client.post("/recognize", {"image": "abc"}, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "image_missing")
    assert "image_url" in response.json()["error"]["message"]
    assert_nothing_left(api)


@pytest.mark.parametrize("wait", ["abc", "-1", "1000"])
def test_it_rejects_a_bad_wait(api: Api, wait: str) -> None:
    response = api.client.post(f"/recognize?wait={wait}", {"image": photo()}, format="multipart")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_parameter")
    assert_nothing_left(api)


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job-id", "..%2F..%2Fetc"])
def test_an_unknown_job_is_not_found(api: Api, job_id: str) -> None:
    response = api.client.get(f"/v1/recognitions/{job_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] in ("job_not_found", "not_found")


def test_unknown_urls_and_methods_answer_in_json(api: Api) -> None:
    missing = api.client.get("/nothing-here")
    wrong_method = api.client.get("/recognize")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")
