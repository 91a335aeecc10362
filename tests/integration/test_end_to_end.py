"""Real photos through Gunicorn -> Redis -> Celery worker (TensorFlow, reference model) -> result."""

from __future__ import annotations

import concurrent.futures

import httpx
import pillow_heif
import pytest
from PIL import Image

from harness import Stack
from tests.conftest import encode, jpeg_bytes

pillow_heif.register_heif_opener()


def recognize(stack: Stack, data: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg",
              **headers: str) -> httpx.Response:
    with stack.client() as client:
        return client.post("/recognize?wait=30", files={"image": (filename, data, content_type)}, headers=headers)


def top(field: dict) -> str | None:
    return field["alternatives"][0]["value"] if field["alternatives"] else None


def assert_field(field: dict) -> None:
    assert set(field) == {"value", "confidence", "threshold", "alternatives"}
    assert 0.0 <= field["confidence"] <= 1.0
    if field["value"] is not None:
        assert field["confidence"] >= field["threshold"]


def test_a_real_photo_of_coffee_comes_back_as_kitchen_and_tableware(stack: Stack, coffee: Image.Image) -> None:
    response = recognize(stack, jpeg_bytes(coffee, quality=92), **{"X-Request-ID": "e2e-coffee-1"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded"
    assert job["model"] == {"name": "reference", "version": "1"}
    assert response.headers["X-Request-ID"] == "e2e-coffee-1"
    assert job["request_id"] == "e2e-coffee-1"
    result = job["result"]
    assert set(result) == {"name", "category", "brand", "color"}
    for field in result.values():
        assert_field(field)
    assert result["category"]["value"] == "kitchen_tableware"
    assert result["category"]["alternatives"][0]["value"] == "kitchen_tableware"
    name = result["name"]["value"]
    assert name and any(word in name.lower() for word in ("espresso", "cup", "coffee"))
    for timing in ("queue_wait", "decode", "prepare", "inference", "total"):
        assert job["timings_ms"][timing] >= 0
    assert job["timings_ms"]["batch_size"] >= 1


@pytest.mark.parametrize(("fmt", "content_type"),
                         [("PNG", "image/png"), ("WEBP", "image/webp"), ("HEIF", "image/heic")])
def test_other_formats_of_the_same_photo_agree(stack: Stack, coffee: Image.Image, fmt: str, content_type: str) -> None:
    response = recognize(stack, encode(coffee, fmt, quality=95) if fmt != "PNG" else encode(coffee, fmt),
                         filename=f"photo.{fmt.lower()}", content_type=content_type)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["category"]["value"] == "kitchen_tableware"


def test_generated_product_photos_get_their_brand_and_color(stack: Stack) -> None:
    from models_registry.synthetic import generate

    samples = list(generate("test", 6))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda s: recognize(stack, s.jpeg), samples))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    results = [r.json()["result"] for r in responses]
    brands = sum(top(r["brand"]) == s.brand for r, s in zip(results, samples, strict=True))
    colors = sum(top(r["color"]) == s.color for r, s in zip(results, samples, strict=True))
    assert brands >= 4, [(r["brand"], s.brand) for r, s in zip(results, samples, strict=True)]
    assert colors >= 4, [(r["color"], s.color) for r, s in zip(results, samples, strict=True)]


def test_without_wait_it_answers_202_and_the_job_can_be_read_back(stack: Stack, coffee: Image.Image) -> None:
    with stack.client() as client:
        queued = client.post("/v1/recognize", files={"image": ("c.jpg", jpeg_bytes(coffee), "image/jpeg")})
        assert queued.status_code == 202
        job = queued.json()
        assert job["status"] in ("queued", "running")
        assert queued.headers["Location"] == f"/v1/recognitions/{job['id']}"
        done = client.get(f"{queued.headers['Location']}?wait=30")
    assert done.status_code == 200
    assert done.json()["status"] == "succeeded"
    assert done.json()["id"] == job["id"]


def test_a_waiting_request_is_woken_through_its_api_process_s_own_subscription(
    stack: Stack, coffee: Image.Image
) -> None:
    import redis

    prefix = stack.env["REDIS_KEY_PREFIX"]
    response = recognize(stack, jpeg_bytes(coffee))
    assert response.status_code == 200 and response.json()["status"] == "succeeded"
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        channel = client.hget(f"{prefix}job:{response.json()['id']}", "notify")
        assert channel and channel.startswith(f"{prefix}notify:")
        assert client.pubsub_numsub(channel) == [(channel, 1)]  # the API process listens on it
        assert "notify" not in response.json()  # internal: never shown to clients
    finally:
        client.close()


def test_health_readiness_and_the_openapi_document(stack: Stack) -> None:
    from openapi_spec_validator import validate

    assert httpx.get(f"{stack.api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.api_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready_workers"] >= 1 and ready.json()["active_version"] == "1"
    document = httpx.get(f"{stack.api_url}/openapi.json").json()
    validate(document)
    assert {"/recognize", "/v1/recognize", "/v1/recognitions/{job_id}"} <= set(document["paths"])
    post = document["paths"]["/recognize"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert post["responses"]["200"]["content"]["application/json"]["examples"]
