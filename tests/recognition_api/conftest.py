"""An API in-process (DRF's APIClient) on a real Redis; its job-creation script queues the messages."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from PIL import Image
from rest_framework.test import APIClient

from common.jobstore import JobStore
from common.queues import queue_for
from recognition_api import services
from recognition_api.auth import new_key
from tests.conftest import queued_tasks


@dataclass
class Api:
    client: APIClient
    redis: redis.Redis
    version: str
    prefix: str
    images: Path

    @property
    def queue(self) -> str:
        return queue_for(self.version)

    def jobs(self) -> JobStore:
        return JobStore(self.redis, self.prefix)

    def messages(self) -> list[dict]:
        return [{"task": task, **kwargs} for task, kwargs in queued_tasks(self.redis, self.queue)]

    def stored_images(self) -> list[str]:
        return sorted(p.name for p in self.images.iterdir()) if self.images.exists() else []


def reset_services() -> None:
    """Forget the per-process clients and listener, so that the next request makes them anew."""
    with services._listener_lock:
        if services._listener is not None:
            services._listener.stop()
            services._listener = None
    for cached in (services.redis_client, services.job_store, services.image_store, services.rate_limiter,
                   services.decode_budget):
        cached.cache_clear()


@pytest.fixture
def api(settings, redis_url: str, redis_client: redis.Redis, key_prefix: str, tmp_path: Path,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    key, digest = new_key()
    version = f"a{uuid.uuid4().hex[:8]}"  # queue names are not prefixed: each test its own
    settings.REDIS_URL = redis_url
    settings.REDIS_KEY_PREFIX = key_prefix
    settings.API_KEYS = f"app:{digest}"
    settings.IMAGE_STORE_URL = (tmp_path / "images").as_uri()
    settings.DEFAULT_MODEL_VERSION = version
    reset_services()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    yield Api(client, redis_client, version, key_prefix, tmp_path / "images")
    reset_services()
    redis_client.delete(queue_for(version))


def photo() -> io.BytesIO:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "JPEG")
    buffer.seek(0)
    buffer.name = "photo.jpg"
    return buffer


def post(api: Api, path: str = "/v1/recognize", **extra):  # type: ignore[no-untyped-def]
    return api.client.post(path, {"image": photo()}, format="multipart", **extra)
