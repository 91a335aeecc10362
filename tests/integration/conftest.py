from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Stack, stack_env, start_redis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, reference_model_root: Path) -> Iterator[Stack]:
    """Redis + Gunicorn API + one worker with the real reference model, over sockets."""
    tmp = tmp_path_factory.mktemp("stack")
    redis_process, url = start_redis(tmp)
    env, key = stack_env(tmp, url, model_root=reference_model_root, default_version="1",
                         MAX_UPLOAD_BYTES=str(2 * 1024 * 1024))
    running = Stack(tmp, env, key, url)
    try:
        running.start_api()
        worker = running.start_worker("1")
        running.wait_worker_ready(worker, "1")
        yield running
    finally:
        running.stop()
        redis_process.kill()
