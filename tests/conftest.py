from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image
from redis.backoff import NoBackoff
from redis.retry import Retry

from harness import free_port, spawn, start_redis, wait_until
from tests.support import REFERENCE_MODEL_ROOT


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the tests' own, on a free port."""
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    process.kill()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def unreachable_redis() -> redis.Redis:
    """A client whose every command fails at once: nothing listens on port 1, and no retries
    (redis-py's default retries with backoff would cost seconds per command)."""
    return redis.Redis(port=1, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))


@pytest.fixture
def key_prefix() -> str:
    """Each test's keys live under their own prefix, so tests never see each other's."""
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible server (moto's) of the tests' own, on a free port."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    process = spawn("moto", ["moto_server", "-H", "127.0.0.1", "-p", str(port)], env,
                    tmp_path_factory.mktemp("moto"))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url).status_code < 500, 30, "moto_server")
    yield url
    process.stop()


@pytest.fixture(scope="session")
def reference_model_root() -> Path:
    """The reference model volume built by scripts/setup (built here if it is missing)."""
    path = REFERENCE_MODEL_ROOT / "reference" / "1"
    if not path.exists():
        from models_registry.build import build_reference

        build_reference(REFERENCE_MODEL_ROOT, "1", evaluate=False)
    return REFERENCE_MODEL_ROOT


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def coffee() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee())


def solid(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0], 3), color, dtype=np.uint8))


def queued_tasks(client: redis.Redis, queue: str) -> list[tuple[str, dict]]:
    """(task name, kwargs) of each message that kombu's Redis transport holds on ``queue``."""
    from common.queues import message_task

    return [message_task(raw) for raw in client.lrange(queue, 0, -1)]


_chaos_rows: list = []


@pytest.fixture(scope="session")
def chaos_rows() -> list:
    """The fault scenarios append a ``harness.chaos.Row`` each; the run prints them as a table."""
    return _chaos_rows


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not _chaos_rows:
        return
    from harness.chaos import save, table
    from harness.processes import ROOT

    terminalreporter.write_sep("=", "fault scenarios (harness/chaos.py)")
    terminalreporter.write_line(table(_chaos_rows))
    save(_chaos_rows, ROOT / "var" / "chaos.json")
