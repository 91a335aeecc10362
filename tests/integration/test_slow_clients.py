"""Slow and hostile clients against the real Gunicorn API: clients that trickle their headers or
their body one byte at a time, more of them than the API has threads, reconnecting whenever they
are cut off, cannot starve ``/healthz`` or a normal upload; and the access log stays valid JSON
whatever the path holds."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from harness import Stack, one_worker_stack
from tests.conftest import jpeg_bytes, solid

GRACE = 3.0  # REQUEST_READ_GRACE_SECONDS for this stack (10 by default)


@pytest.fixture
def api_stack(tmp_path: Path, reference_model_root: Path) -> Iterator[Stack]:
    with one_worker_stack(tmp_path, model_root=reference_model_root, METRICS_ENABLED="false",
                          REQUEST_READ_GRACE_SECONDS=str(GRACE), API_ACCESS_LOG="1") as (stack, _, _):
        yield stack


class Trickler(threading.Thread):
    """Opens a connection and sends a request one byte a second (headers, or a body after complete
    headers); opens another whenever the server cuts it off."""

    def __init__(self, address: tuple[str, int], body: bool, stop: threading.Event, key: str) -> None:
        super().__init__(daemon=True)
        self.address, self.body, self.stop_event, self.key = address, body, stop, key

    def run(self) -> None:
        while not self.stop_event.is_set():
            head = b"POST /recognize HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            if self.body:  # a valid key, so that the API reads the body
                head += (f"Authorization: Bearer {self.key}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                         "Content-Length: 100000\r\n\r\n").encode()
            try:
                with socket.create_connection(self.address, timeout=30) as sock:
                    sock.sendall(head if self.body else head[:5])
                    rest = b"--x\r\n" * 1000 if self.body else head[5:] + b"X-Slow: " + b"a" * 1000
                    for byte in rest:
                        if self.stop_event.wait(1.0):
                            return
                        sock.sendall(bytes([byte]))
            except OSError:
                continue  # the server closed it: again


def test_trickling_clients_cannot_starve_the_api(api_stack: Stack) -> None:
    host, port = api_stack.api_url.removeprefix("http://").split(":")
    stop = threading.Event()
    # 2 API processes x 16 threads here: 64 slow clients, half on headers and half on bodies.
    tricklers = [Trickler((host, int(port)), body=i % 2 == 1, stop=stop, key=api_stack.api_key) for i in range(64)]
    for trickler in tricklers:
        trickler.start()
    try:
        time.sleep(GRACE + 1)
        health, uploads = [], []
        with api_stack.client(timeout=60) as client:
            for _ in range(5):
                started = time.monotonic()
                assert httpx.get(f"{api_stack.api_url}/healthz", timeout=60).status_code == 200
                health.append(time.monotonic() - started)
                started = time.monotonic()
                response = client.post("/recognize?wait=10", files={"image": ("p.jpg", jpeg_bytes(solid((200, 30, 30))),
                                                                              "image/jpeg")})
                assert (response.status_code, response.json()["status"]) == (200, "succeeded")
                uploads.append(time.monotonic() - started)
                time.sleep(1)
    finally:
        stop.set()
        for trickler in tricklers:
            trickler.join(5)
    api_log = next(p for p in api_stack.processes if p.name.startswith("api-")).output()
    cut_off = api_log.count("sent its request too slowly")
    print(f"slow clients: the API cut off {cut_off} slow requests; /healthz answered in {max(health):.2f} s at "
          f"most, uploads in {max(uploads):.2f} s at most")
    assert cut_off >= 64, "the slow clients were not cut off"
    # A thread is held by a slow client for at most the grace, or by a new connection for Gunicorn's
    # 5 s wait for its first bytes: a request waits about that at most (without the deadline, until
    # the slow clients finish: 1000 s here).
    assert max(health) < GRACE + 5 + 2 and max(uploads) < GRACE + 5 + 5
    # A slow body is a short body: refused with a 4xx, never a 500.
    statuses = [json.loads(line)["status"] for line in api_log.splitlines() if '"logger": "access"' in line]
    assert 400 in statuses and not [s for s in statuses if s >= 500], sorted(set(statuses))


def test_the_access_log_stays_json_whatever_the_path(api_stack: Stack) -> None:
    paths = ["/a%0Ab", '/q"uote', "/back%5Cslash%22", "/%0D%0Ainjected"]
    for path in paths:
        assert httpx.get(f"{api_stack.api_url}{path}", timeout=10).status_code == 404
    time.sleep(0.5)
    api_log = next(p for p in api_stack.processes if p.name.startswith("api-")).output()
    access = [json.loads(line) for line in api_log.splitlines() if '"logger": "access"' in line]
    assert {record["path"] for record in access} >= {unquote(path) for path in paths}  # as Django saw them
    # No path broke out of its line: every line that mentions one is whole JSON, none begins with it.
    lines = [line for line in api_log.splitlines() if "injected" in line or "uote" in line or "slash" in line]
    assert lines and all(json.loads(line) for line in lines)
    assert not any(line.startswith(("injected", "b")) for line in api_log.splitlines())


def test_api_access_log_0_turns_the_access_log_off(tmp_path: Path) -> None:
    # Gunicorn takes a logging config as turning the access log on, whatever `accesslog` says.
    from harness import stack_env, start_redis

    redis_process, url = start_redis(tmp_path / "redis")
    env, key = stack_env(tmp_path, url, model_root=tmp_path / "models", default_version="1", API_ACCESS_LOG="0")
    stack = Stack(tmp_path, env, key, url)
    try:
        api = stack.start_api()
        for _ in range(3):
            assert httpx.get(f"{stack.api_url}/v1/recognitions/nothing-here", timeout=10,
                             headers={"Authorization": f"Bearer {key}"}).status_code == 404
    finally:
        stack.stop()
        redis_process.kill()
    log = api.output()
    assert "nothing-here" in log  # Django's own warning: the requests were served and logged
    assert '"logger": "access"' not in log
