"""Redis killed (SIGKILL, AOF on) under load and restarted: no worker exit, no model reload, no
lost job, and the worker consumes again within seconds of Redis answering."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from harness import ROOT, Process, Stack, stack_env, start_redis, wait_until
from harness.chaos import Row, model_loads
from harness.load import Load
from tests.conftest import jpeg_bytes, solid


@pytest.fixture
def durable_stack(tmp_path: Path, reference_model_root: Path) -> Iterator[tuple[Stack, Process, list[Process]]]:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis_process, url = start_redis(redis_dir, aof=True)
    env, key = stack_env(tmp_path, url, model_root=reference_model_root, default_version="1",
                         METRICS_ENABLED="false")
    stack = Stack(tmp_path, env, key, url)
    redis_processes = [redis_process]
    try:
        stack.start_api()
        worker = stack.start_worker("1")
        stack.wait_worker_ready(worker, "1")
        yield stack, worker, redis_processes
    finally:
        stack.stop()
        for process in redis_processes:
            process.kill()


def ready(stack: Stack) -> bool:
    probe = ROOT / "docker" / "bin" / "probe-worker-ready"
    return subprocess.run([str(probe), "--reaching-redis", "3", str(stack.tmp / "ready-1")],
                          capture_output=True).returncode == 0


def first_result_after(stack: Stack, started: float, timeout: float = 30) -> float:
    """Seconds from ``started`` until a new job came back succeeded."""
    with stack.client(timeout=30) as client:
        while time.monotonic() - started < timeout:
            try:
                response = client.post("/recognize?wait=2", files={"image": ("p.jpg", jpeg_bytes(solid((9, 99, 9))),
                                                                               "image/jpeg")})
                if response.status_code == 200 and response.json()["status"] == "succeeded":
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"no job succeeded within {timeout}s")


@pytest.mark.chaos
@pytest.mark.parametrize("outage_seconds", [5, 60])
def test_a_worker_keeps_its_model_and_loses_no_job_through_a_redis_outage(
    durable_stack: tuple[Stack, Process, list[Process]], outage_seconds: int, chaos_rows: list[Row],
) -> None:
    stack, worker, redis_processes = durable_stack
    pid = worker.popen.pid
    port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    load = Load(stack, jpeg_bytes(solid((200, 20, 20), (320, 240))), clients=4).start()
    time.sleep(3)
    redis_processes[0].popen.send_signal(signal.SIGKILL)
    redis_processes[0].popen.wait(10)
    wait_until(lambda: not ready(stack), 10, "the worker to report not-ready while Redis is gone")
    time.sleep(outage_seconds)
    restarted, _ = start_redis(stack.tmp / "redis", port=port, aof=True)
    answered = time.monotonic()
    redis_processes.append(restarted)
    recovery = first_result_after(stack, answered)
    wait_until(lambda: ready(stack), 10, "the worker to report ready again")
    time.sleep(3)
    load.stop()

    client = redis.Redis.from_url(stack.redis_url)
    outcome = load.outcome(client, stack.env["REDIS_KEY_PREFIX"], within=60)
    log = worker.output()
    chaos_rows.append(Row.of(f"Redis SIGKILL (AOF), down {outage_seconds} s, 4 clients", outcome,
                             recover_s=recovery, model_reloads=model_loads(log) - 1))
    assert worker.alive() and worker.popen.pid == pid, f"the worker exited:\n{log[-3000:]}"
    assert model_loads(log) == 1, "the model was loaded again"
    assert "Unrecoverable error" not in log
    assert outcome.accepted > 10 and outcome.lost == 0 and outcome.failed == 0, outcome
    assert outcome.answers.get("503", 0) > 0, "the outage was not seen by any client"
    assert recovery <= 5.0, f"the first job after Redis came back took {recovery:.1f}s"
