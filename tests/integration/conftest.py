from __future__ import annotations

import socket
import threading
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


class Agent:
    """A stand-in for the Datadog agent: collects DogStatsD datagrams from a UDP socket."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.lines += data.decode().splitlines()

    def metric(self, name: str) -> list[tuple[str, str, set[str]]]:
        found = []
        for line in list(self.lines):
            head, _, rest = line.partition("|")
            metric, _, value = head.partition(":")
            if metric == name:
                kind, *extra = rest.split("|")
                tags = next((set(e[1:].split(",")) for e in extra if e.startswith("#")), set())
                found.append((value, kind, tags))
        return found

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def agent() -> Iterator[Agent]:
    running = Agent()
    yield running
    running.close()
