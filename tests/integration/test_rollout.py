"""Blue-green rollout with real workers of two real model versions, under load."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis

from common.queues import queue_for
from harness import ROOT, Process, Stack, stack_env, start_redis, wait_until
from tests.conftest import jpeg_bytes


def registry(stack: Stack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models_registry", *args], cwd=ROOT, env=env or stack.env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_versions(
    tmp_path_factory: pytest.TempPathFactory, reference_model_root: Path,
) -> Iterator[tuple[Stack, dict[str, Process]]]:
    assert (reference_model_root / "reference" / "2").exists(), "scripts/setup builds versions 1 and 2"
    tmp = tmp_path_factory.mktemp("rollout")
    redis_process, url = start_redis(tmp)
    env, key = stack_env(tmp, url, model_root=reference_model_root, default_version="1",
                         BROKER_VISIBILITY_TIMEOUT="20", BROKER_RESTORE_INTERVAL="1")
    stack = Stack(tmp, env, key, url)
    workers: dict[str, Process] = {}
    try:
        stack.start_api()
        for version in ("1", "2"):
            workers[version] = stack.start_worker(version, name=f"blue-green-{version}")
        for version in ("1", "2"):
            stack.wait_worker_ready(workers[version], version)
            result = registry(stack, "verify", version)
            assert result.returncode == 0, result.stderr
        yield stack, workers
    finally:
        stack.stop()
        redis_process.kill()


class Load:
    """Clients that keep posting photos (each waits for its result) until stopped."""

    def __init__(self, stack: Stack, photo: bytes, clients: int = 4) -> None:
        self.stack, self.photo = stack, photo
        self.results: list[tuple[float, float, int, dict]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with self.stack.client(timeout=90) as client:
            while not self._stop.is_set():
                sent = time.time()
                response = client.post("/recognize?wait=30", files={"image": ("p.jpg", self.photo, "image/jpeg")})
                with self._lock:
                    self.results.append((sent, time.time(), response.status_code, response.json()))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def wait_for(self, count: int, timeout: float = 120) -> None:
        start = len(self.results)
        wait_until(lambda: len(self.results) >= start + count, timeout, f"{count} more responses")


def assert_no_failures(load: Load) -> None:
    failures = [(status, body) for _, _, status, body in load.results
                if status != 200 or body.get("status") != "succeeded"]
    assert not failures, failures[:3]
    assert all(body["model"]["version"] in ("1", "2") for *_, body in load.results)


def assert_queues_drained(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    wait_until(lambda: client.llen(queue_for("1")) + client.llen(queue_for("2")) + client.hlen("unacked") == 0,
               60, "queues to drain")


def test_promote_is_refused_for_a_version_without_ready_workers(two_versions) -> None:  # type: ignore[no-untyped-def]
    stack, _ = two_versions
    result = registry(stack, "promote", "3")
    assert result.returncode == 1
    assert "no ready workers" in result.stderr


def test_a_tampered_volume_fails_verify_naming_the_file_and_cannot_be_promoted(two_versions, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                                reference_model_root: Path) -> None:
    stack, _ = two_versions
    copy = tmp_path / "reference" / "7"
    shutil.copytree(reference_model_root / "reference" / "2", copy)
    target = copy / "labels" / "brands.txt"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[-2] ^= 0x20
    target.write_bytes(bytes(data))
    result = registry(stack, "verify", "7", "--root", str(tmp_path))
    assert result.returncode == 1
    # BLAKE3 in volumes built since it is in the manifest; sha256 in those built before.
    assert re.search(r"labels/brands\.txt: (blake3|sha256) differs", result.stderr), result.stderr
    refused = registry(stack, "promote", "7")
    assert refused.returncode == 1 and "has not passed `verify`" in refused.stderr


def test_promote_and_rollback_under_load_lose_nothing(two_versions, coffee) -> None:  # type: ignore[no-untyped-def]
    stack, _ = two_versions
    with Load(stack, jpeg_bytes(coffee)) as load:
        load.wait_for(8)
        before_promote = time.time()
        promoted = registry(stack, "promote", "2")
        assert promoted.returncode == 0, promoted.stderr
        promoted_at = time.time()
        load.wait_for(12)
        before_rollback = time.time()
        rolled_back = registry(stack, "rollback")
        assert rolled_back.returncode == 0, rolled_back.stderr
        rolled_back_at = time.time()
        load.wait_for(8)
    assert_no_failures(load)
    # Each job records the version that computed it; new jobs follow the rollout state.
    # Judged by when the API created each job (server time; a request can wait for a
    # thread for a while on this 2-core machine under load).
    versions = [(datetime.fromisoformat(body["created_at"]).timestamp(), body["model"]["version"])
                for *_, body in load.results]
    assert {v for s, v in versions if promoted_at < s < before_rollback} == {"2"}
    assert {v for s, v in versions if s > rolled_back_at} == {"1"}
    assert {v for s, v in versions if s < before_promote} == {"1"}
    assert_queues_drained(stack)
    history = registry(stack, "history").stdout
    assert "promote" in history and "rollback" in history


def test_the_old_workers_sigterm_after_promotion_loses_nothing(two_versions, coffee) -> None:  # type: ignore[no-untyped-def]
    stack, workers = two_versions
    with Load(stack, jpeg_bytes(coffee), clients=6) as load:
        load.wait_for(6)
        assert registry(stack, "promote", "2").returncode == 0
        workers["1"].popen.send_signal(signal.SIGTERM)  # scale down blue
        assert workers["1"].popen.wait(120) == 0
        load.wait_for(10)
    assert_no_failures(load)
    assert_queues_drained(stack)
    status = registry(stack, "status", "--json")
    assert '"active": "2"' in status.stdout


def test_a_code_only_restart_on_the_same_volume_loses_nothing(two_versions, coffee) -> None:  # type: ignore[no-untyped-def]
    stack, workers = two_versions
    replacement = stack.start_worker("2", name="green-restarted")
    stack.wait_worker_ready(replacement, "2")
    with Load(stack, jpeg_bytes(coffee), clients=6) as load:
        load.wait_for(6)
        workers["2"].popen.send_signal(signal.SIGTERM)
        assert workers["2"].popen.wait(120) == 0
        load.wait_for(10)
    assert_no_failures(load)
    assert_queues_drained(stack)
    workers["2"] = replacement
