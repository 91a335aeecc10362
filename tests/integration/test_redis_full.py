"""Redis full (maxmemory with noeviction, as k8s/redis.yaml runs it): the API refuses new jobs with a
quick 503 instead of hanging or failing with a 500, the worker keeps its process and its model (kombu
used to end it: config/broker.py), and once Redis has room again the service resumes and every
accepted job finishes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Process, Stack, one_worker_stack, wait_until
from harness.chaos import model_loads
from harness.load import Load
from tests.conftest import jpeg_bytes, solid


@pytest.fixture
def small_redis_stack(tmp_path: Path, reference_model_root: Path) -> Iterator[tuple[Stack, Process]]:
    # A worker that takes a message while Redis is full cannot record it anywhere (Redis refuses
    # every write): that job is sent again by the reaper once its lease is over, here 15 s.
    with one_worker_stack(tmp_path, model_root=reference_model_root, METRICS_ENABLED="false", API_KEY_RATE="0",
                          JOB_LEASE_SECONDS="15", REAPER_INTERVAL_SECONDS="1") as (stack, _, worker):
        yield stack, worker


@pytest.mark.chaos
def test_a_full_redis_costs_a_quick_503_and_no_worker_and_no_job(
    small_redis_stack: tuple[Stack, Process],
) -> None:
    stack, worker = small_redis_stack
    pid = worker.popen.pid
    client = stack.redis()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 512 * 1024)  # room for a couple of hundred jobs
    photo = jpeg_bytes(solid((10, 150, 60), (320, 240)))
    accepted, refused_in = [], []
    with stack.client(timeout=30) as http:
        for _ in range(3000):
            started = time.perf_counter()
            response = http.post("/recognize", files={"image": ("p.jpg", photo, "image/jpeg")})
            if response.status_code == 202:
                accepted.append(response.json()["id"])
                continue
            refused_in.append(time.perf_counter() - started)
            assert response.status_code == 503, response.text
            body = response.json()["error"]
            assert body["code"] == "service_unavailable" and "full" in body["message"]
            assert int(response.headers["Retry-After"]) >= 1
            if len(refused_in) >= 20:
                break
    assert accepted and len(refused_in) == 20, f"Redis never filled: {len(accepted)} accepted"
    assert max(refused_in) < 1.0, f"a refusal took {max(refused_in):.2f} s"
    time.sleep(3)  # the worker meets the full Redis too (its results and heartbeats are writes)
    assert worker.alive() and worker.popen.pid == pid

    client.config_set("maxmemory", 0)
    load = Load(stack, photo, clients=1, wait_seconds=10)
    load.accepted.extend(accepted)
    outcome = load.outcome(client, stack.env["REDIS_KEY_PREFIX"], within=120)
    assert outcome.lost == 0 and outcome.failed == 0, outcome
    assert outcome.succeeded + outcome.skipped == len(accepted)
    with stack.client(timeout=30) as http:
        deadline = time.monotonic() + 30
        while True:  # as an app does: a 429 says when to come back (the backlog is still draining)
            response = http.post("/recognize?wait=10", files={"image": ("p.jpg", photo, "image/jpeg")})
            if response.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(int(response.headers["Retry-After"]))
    assert (response.status_code, response.json().get("status")) == (200, "succeeded"), response.text
    wait_until(worker.alive, 1, "the worker")
    assert model_loads(worker.output()) == 1
