"""Metrics reach a DogStatsD agent: a real UDP socket receives them from the API and a worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Stack, stack_env, start_redis
from models_registry.build import build_null
from tests.conftest import encode, solid
from tests.integration.conftest import Agent


@pytest.fixture
def metered_stack(tmp_path: Path, agent: Agent) -> Iterator[Stack]:
    build_null(tmp_path / "models", "n1")
    redis_process, url = start_redis(tmp_path)
    env, key = stack_env(tmp_path, url, model_root=tmp_path / "models", default_version="n1",
                         DD_AGENT_HOST="127.0.0.1", DD_DOGSTATSD_PORT=str(agent.port), DD_ENV="test")
    stack = Stack(tmp_path, env, key, url)
    try:
        stack.start_api()
        worker = stack.start_worker("n1")
        stack.wait_worker_ready(worker, "n1")
        yield stack
    finally:
        stack.stop()
        redis_process.kill()


def test_the_api_and_worker_send_their_metrics_tagged_by_version(metered_stack: Stack, agent: Agent) -> None:
    with metered_stack.client() as client:
        red = encode(solid((200, 10, 10)), "PNG")
        ok = client.post("/recognize?wait=10", files={"image": ("a.png", red, "image/png")})
        bad = client.post("/recognize", files={"image": ("a.png", b"nope", "image/png")})
    assert (ok.status_code, bad.status_code) == (200, 415)
    wanted = ["recognition.api.request", "recognition.api.latency", "recognition.job.queue_wait",
              "recognition.job.completed", "recognition.worker.batch_size", "recognition.worker.inference_time",
              "recognition.worker.model_load_time", "recognition.queue.depth", "recognition.workers.ready"]

    def ok_request() -> bool:
        return any({"endpoint:recognize", "status_class:2xx", "model_version:n1", "env:test"} <= tags
                   for _, kind, tags in agent.metric("recognition.api.request") if kind == "c")

    def rejected_request() -> bool:
        return any({"endpoint:recognize", "status_class:4xx"} <= tags
                   for _, _, tags in agent.metric("recognition.api.request"))

    def completed() -> bool:
        return any({"status:succeeded", "model_version:n1", "queue:recognize.n1"} <= tags
                   for _, _, tags in agent.metric("recognition.job.completed"))

    checks = [ok_request, rejected_request, completed]
    # Datagrams arrive in flushes (every 0.3 s) from three processes: wait for all of them.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (all(agent.metric(m) for m in wanted) and all(c() for c in checks)):
        time.sleep(0.2)
    missing = [m for m in wanted if not agent.metric(m)]
    assert not missing, f"never received {missing}; got {agent.lines[:20]}"
    for check in checks:
        assert check(), (check.__name__, agent.lines)
    assert all(kind == "d" for _, kind, _ in agent.metric("recognition.api.latency"))
    assert any(float(v) >= 1 for v, _, _ in agent.metric("recognition.workers.ready"))
