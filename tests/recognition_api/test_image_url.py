"""POST /recognize with {"image_url": "s3://bucket/key"}: the photo is read from a real S3-compatible
HTTP server (moto's), within IMAGE_URL_ALLOWED, and then checked, stored and queued like an upload.
S3 failures that moto cannot play (access denied, an S3 that stops answering or trickles) come
from small HTTP servers of the tests' own."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from recognition_api import services
from tests.recognition_api.conftest import Api, photo

ALLOWED = "s3://listing-photos/uploads/"
URL = "s3://listing-photos/uploads/1234/front.jpg"


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> boto3.client:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("listing-photos", "other-bucket"):
        client.create_bucket(Bucket=bucket)
    for bucket, key in (("listing-photos", "uploads/1234/front.jpg"), ("listing-photos", "private/x.jpg"),
                        ("listing-photos", "uploads-private/x.jpg"), ("other-bucket", "uploads/x.jpg")):
        client.put_object(Bucket=bucket, Key=key, Body=photo().getvalue(), ContentType="image/jpeg")
    return client


class S3Requests(list):
    """The S3 operations the API's reader sends (HeadObject, GetObject), in order."""


@pytest.fixture
def by_url(api: Api, s3: boto3.client, s3_endpoint: str, settings) -> Iterator[S3Requests]:  # type: ignore[no-untyped-def]
    settings.IMAGE_URL_ALLOWED = [ALLOWED, "s3://no-such-bucket/uploads/"]
    settings.S3_ENDPOINT_URL = s3_endpoint
    settings.IMAGE_URL_TIMEOUT_SECONDS = 5.0
    yield recorded()
    services.image_url_reader.cache_clear()


def recorded() -> S3Requests:
    services.image_url_reader.cache_clear()
    requests = S3Requests()
    services.image_url_reader().client.meta.events.register(
        "before-call.s3", lambda model, **_: requests.append(model.name))
    return requests


def post_url(api: Api, url: object = URL, path: str = "/v1/recognize"):  # type: ignore[no-untyped-def]
    return api.client.post(path, {"image_url": url}, format="json")


def error(response) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    return response.status_code, response.json()["error"]["code"]


def nothing_left(api: Api) -> bool:
    return api.messages() == [] and api.stored_images() == [] and api.redis.keys(f"{api.prefix}job:*") == []


def test_a_photo_on_s3_under_an_allowed_prefix_is_read_stored_and_queued(api: Api, by_url: S3Requests) -> None:
    response = post_url(api)
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    assert [m["job_id"] for m in api.messages()] == [job_id]
    assert api.jobs().get(job_id)["image_format"] == "jpeg"
    assert api.stored_images() == [job_id]
    assert (api.images / job_id).read_bytes() == photo().getvalue()
    assert by_url == ["HeadObject", "GetObject"]


def test_the_unversioned_path_takes_image_url_too(api: Api, by_url: S3Requests) -> None:
    assert post_url(api, path="/recognize").status_code == 202


def test_image_url_is_taken_as_a_multipart_form_field_without_a_file(api: Api, by_url: S3Requests) -> None:
    response = api.client.post("/v1/recognize", {"image_url": URL}, format="multipart")
    assert response.status_code == 202, response.content
    assert api.stored_images() == [response.json()["id"]]


def test_uploads_still_work_beside_image_url(api: Api, by_url: S3Requests) -> None:
    assert api.client.post("/v1/recognize", {"image": photo()}, format="multipart").status_code == 202
    assert by_url == []


@pytest.mark.parametrize("url", [
    "s3://other-bucket/uploads/x.jpg",  # another bucket
    "s3://listing-photos/private/x.jpg",  # another prefix
    "s3://listing-photos/uploads-private/x.jpg",  # a prefix that only looks alike
    "s3://listing-photos/uploads/../private/x.jpg",  # traversal
    "s3://listing-photos/uploads/%2e%2e/private/x.jpg",
    "https://listing-photos.s3.amazonaws.com/uploads/1234/front.jpg",  # another scheme
    "http://169.254.169.254/latest/meta-data/",
    "file:///etc/passwd",
    "s3://me@listing-photos/uploads/1234/front.jpg",  # a host that is not a bucket
])
def test_an_image_url_outside_the_allowed_prefixes_is_refused_and_s3_is_never_asked(
    api: Api, by_url: S3Requests, url: str,
) -> None:
    response = post_url(api, url)
    assert error(response) == (400, "image_url_not_allowed")
    assert response.json()["error"]["message"].startswith("image_url")
    assert nothing_left(api) and by_url == []


def test_with_image_url_off_any_image_url_is_refused(api: Api, by_url: S3Requests, settings) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGE_URL_ALLOWED = []
    response = post_url(api)
    assert error(response) == (400, "image_url_not_allowed")
    assert "IMAGE_URL_ALLOWED is empty" in response.json()["error"]["message"]
    assert nothing_left(api) and by_url == []


def test_a_missing_object_or_bucket_is_422_image_url_not_found(api: Api, by_url: S3Requests) -> None:
    for url in ("s3://listing-photos/uploads/1234/back.jpg", "s3://no-such-bucket/uploads/x.jpg"):
        response = post_url(api, url)
        assert error(response) == (422, "image_url_not_found"), response.content
        assert url in response.json()["error"]["message"]
    assert nothing_left(api) and by_url == ["HeadObject", "HeadObject"]


def test_an_object_over_the_size_limit_is_refused_by_its_head_without_reading_it(
    api: Api, by_url: S3Requests, s3: boto3.client, settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.MAX_UPLOAD_BYTES = 2048
    s3.put_object(Bucket="listing-photos", Key="uploads/big.jpg", Body=os.urandom(4096))
    response = post_url(api, "s3://listing-photos/uploads/big.jpg")
    assert error(response) == (413, "image_too_large")
    assert "4,096 bytes" in response.json()["error"]["message"]
    assert by_url == ["HeadObject"] and nothing_left(api)


def test_an_object_that_is_not_an_image_is_refused_like_an_upload(
    api: Api, by_url: S3Requests, s3: boto3.client,
) -> None:
    s3.put_object(Bucket="listing-photos", Key="uploads/notes.jpg", Body=b"not an image, whatever the name says")
    assert error(post_url(api, "s3://listing-photos/uploads/notes.jpg")) == (415, "image_not_an_image")
    assert nothing_left(api)


def test_an_empty_object_is_refused_without_reading_it(api: Api, by_url: S3Requests, s3: boto3.client) -> None:
    s3.put_object(Bucket="listing-photos", Key="uploads/empty.jpg", Body=b"")
    assert error(post_url(api, "s3://listing-photos/uploads/empty.jpg")) == (400, "image_empty")
    assert by_url == ["HeadObject"] and nothing_left(api)


def test_the_upload_limits_apply_to_an_image_url(api: Api, by_url: S3Requests, settings) -> None:  # type: ignore[no-untyped-def]
    settings.MAX_IMAGE_PIXELS = 1000  # the photo is 64x48
    assert error(post_url(api)) == (422, "image_too_many_pixels")
    assert nothing_left(api)


def test_a_full_queue_refuses_before_s3_is_read(api: Api, by_url: S3Requests, settings) -> None:  # type: ignore[no-untyped-def]
    settings.MAX_QUEUE_DEPTH = 1
    assert post_url(api).status_code == 202
    by_url.clear()
    response = post_url(api)
    assert error(response) == (429, "queue_full") and int(response["Retry-After"]) >= 1
    assert by_url == [] and len(api.stored_images()) == 1


@pytest.mark.parametrize(("body", "code"), [
    ({"image_url": None}, "invalid_parameter"),
    ({"image_url": ["s3://listing-photos/uploads/1234/front.jpg"]}, "invalid_parameter"),
    (["s3://listing-photos/uploads/1234/front.jpg"], "invalid_parameter"),
    ({"url": URL}, "image_missing"),
    ({}, "image_missing"),
])
def test_a_json_body_without_a_usable_image_url_is_400(api: Api, by_url: S3Requests, body: object, code: str) -> None:
    response = api.client.post("/v1/recognize", body, format="json")
    assert error(response) == (400, code), response.content
    assert nothing_left(api) and by_url == []


def test_a_file_and_an_image_url_together_are_refused(api: Api, by_url: S3Requests) -> None:
    response = api.client.post("/v1/recognize", {"image": photo(), "image_url": URL}, format="multipart")
    assert error(response) == (400, "invalid_parameter")
    assert nothing_left(api) and by_url == []


def test_only_multipart_and_json_bodies_are_taken(api: Api, by_url: S3Requests) -> None:
    response = api.client.post("/v1/recognize", f"image_url={URL}", content_type="application/x-www-form-urlencoded")
    assert error(response) == (415, "unsupported_media_type")


# --- S3 failures ----------------------------------------------------------------------------


class FakeS3(ThreadingHTTPServer):
    """An S3 endpoint that denies every request, or sends an object's body a byte at a time."""

    daemon_threads = True

    def __init__(self, mode: str) -> None:
        self.mode = mode
        super().__init__(("127.0.0.1", 0), _FakeS3Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FakeS3Handler(BaseHTTPRequestHandler):
    server: FakeS3
    size = 5000

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        if self.server.mode == "forbidden":
            self.send_response(403)
            self.send_header("Content-Length", "0")
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(self.size))
            self.send_header("Content-Type", "image/jpeg")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        if self.server.mode == "forbidden":
            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(206)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        try:
            for _ in range(self.size):
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass  # the API gave up and closed the connection

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_s3(api: Api, settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeS3]]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings.IMAGE_URL_ALLOWED = [ALLOWED]
    servers: list[FakeS3] = []
    yield servers
    services.image_url_reader.cache_clear()
    for server in servers:
        server.shutdown()
        server.server_close()


def test_access_denied_is_403_image_url_forbidden_not_a_500(api: Api, fake_s3: list[FakeS3], settings) -> None:  # type: ignore[no-untyped-def]
    fake_s3.append(FakeS3("forbidden"))
    settings.S3_ENDPOINT_URL = fake_s3[0].url
    recorded()
    response = post_url(api)
    assert error(response) == (403, "image_url_forbidden"), response.content
    assert URL in response.json()["error"]["message"]
    assert nothing_left(api)


def test_an_s3_that_does_not_answer_is_503_with_retry_after_not_a_hang(
    api: Api, fake_s3: list[FakeS3], settings,  # type: ignore[no-untyped-def]
) -> None:
    with socket.socket() as silent:  # takes connections (the kernel's backlog), answers nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings.S3_ENDPOINT_URL = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings.IMAGE_URL_TIMEOUT_SECONDS = 0.4
        recorded()
        started = time.monotonic()
        response = post_url(api)
        elapsed = time.monotonic() - started
    assert error(response) == (503, "image_url_unavailable")
    assert int(response["Retry-After"]) >= 1
    assert elapsed < 3.0  # twice 0.4 s, and one retry's backoff (under 1 s)
    assert nothing_left(api)


def test_an_object_that_comes_a_byte_at_a_time_is_given_up_at_the_deadline(
    api: Api, fake_s3: list[FakeS3], settings,  # type: ignore[no-untyped-def]
) -> None:
    fake_s3.append(FakeS3("trickle"))  # 5000 bytes at 20 a second: over 4 minutes
    settings.S3_ENDPOINT_URL = fake_s3[0].url
    settings.IMAGE_URL_TIMEOUT_SECONDS = 0.6
    requests = recorded()
    started = time.monotonic()
    response = post_url(api)
    elapsed = time.monotonic() - started
    assert error(response) == (503, "image_url_unavailable") and "0.6 s" in response.json()["error"]["message"]
    assert requests == ["HeadObject", "GetObject"] and elapsed < 1.5
    assert nothing_left(api)


# --- OpenAPI ---------------------------------------------------------------------------------


def test_the_openapi_document_describes_both_request_bodies(api: Api) -> None:
    operation = api.client.get("/openapi.json").json()["paths"]["/v1/recognize"]["post"]
    content = operation["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["$ref"].endswith("/RecognizeInputRequest")
    assert content["application/json"]["schema"]["$ref"].endswith("/RecognizeUrlInputRequest")
    assert content["application/json"]["examples"]["APhotoTheAppHasPutOnS3"]["value"]["image_url"].startswith("s3://")
    assert {"400", "403", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "image_url_not_allowed" in operation["description"]
