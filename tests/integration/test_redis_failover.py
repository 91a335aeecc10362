"""Redis behind Sentinel, its primary SIGKILLed under load: Sentinel promotes a replica, and the
API, the worker and the registry CLI follow it through ``REDIS_URL=redis+sentinel://...``.

Redis replicates asynchronously, so a write the dead primary had acknowledged may be missing on
the replica that replaces it. With ``REDIS_WAIT_REPLICAS=1`` the API acknowledges a job (202/200)
only once a replica holds its record and its message (Redis ``WAIT``): those jobs survive."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness import ROOT, Process, Stack, stack_env, start_redis, start_sentinel, wait_until
from harness.chaos import Row, model_loads
from harness.load import Load
from tests.conftest import jpeg_bytes, solid
from tests.integration.test_redis_outage import first_result_after

MASTER = "recognition"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
def sentinel_stack(tmp_path: Path, reference_model_root: Path) -> Iterator[tuple[Stack, Process, list[Process], int]]:
    """A primary with two replicas (so that the promoted one still has a replica to WAIT for), a
    sentinel, and the stack configured with the sentinel's URL only."""
    redis_processes: list[Process] = []
    try:
        primary, primary_url = start_redis(tmp_path / "primary", aof=True)
        redis_processes.append(primary)
        for name in ("replica-a", "replica-b"):
            replica, _ = start_redis(tmp_path / name, aof=True, replica_of=port_of(primary_url))
            redis_processes.append(replica)
        sentinel, sentinel_port = start_sentinel(tmp_path / "sentinel", master_port=port_of(primary_url),
                                                 master_name=MASTER)
        redis_processes.append(sentinel)
        url = f"redis+sentinel://127.0.0.1:{sentinel_port}/{MASTER}/0"
        env, key = stack_env(tmp_path, url, model_root=reference_model_root, default_version="1",
                             METRICS_ENABLED="false", REDIS_WAIT_REPLICAS="1", REDIS_SOCKET_TIMEOUT="2")
        stack = Stack(tmp_path, env, key, url)
        stack.start_api()
        worker = stack.start_worker("1")
        stack.wait_worker_ready(worker, "1")
        yield stack, worker, redis_processes, sentinel_port
    finally:
        if "stack" in locals():
            stack.stop()
        for process in redis_processes:
            process.kill()


def primary_port(sentinel_port: int) -> int:
    client = redis.Redis(port=sentinel_port)
    try:
        return int(client.sentinel_get_master_addr_by_name(MASTER)[1])
    finally:
        client.close()


def registry_status(stack: Stack) -> dict:
    result = subprocess.run([sys.executable, "-m", "models_registry", "status", "--json"], cwd=ROOT,
                            env={**stack.env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.chaos
def test_a_primary_failover_loses_no_replicated_job_and_costs_no_model_load(
    sentinel_stack: tuple[Stack, Process, list[Process], int], chaos_rows: list[Row],
) -> None:
    stack, worker, redis_processes, sentinel_port = sentinel_stack
    pid = worker.popen.pid
    old_primary = primary_port(sentinel_port)
    assert registry_status(stack)["active"] == "1"  # the registry CLI reads through Sentinel

    load = Load(stack, jpeg_bytes(solid((200, 20, 20), (320, 240))), clients=4, wait_seconds=10).start()
    time.sleep(3)
    redis_processes[0].popen.send_signal(signal.SIGKILL)
    redis_processes[0].popen.wait(10)
    killed = time.monotonic()
    wait_until(lambda: primary_port(sentinel_port) != old_primary, 20, "Sentinel to promote a replica")
    promoted = time.monotonic() - killed
    recovery = first_result_after(stack, killed, timeout=30)
    time.sleep(3)
    load.stop()

    outcome = load.outcome(stack.redis(), stack.env["REDIS_KEY_PREFIX"], within=60)
    log = worker.output()
    chaos_rows.append(Row.of("Redis primary SIGKILL, Sentinel failover, 4 clients", outcome,
                             recover_s=recovery, model_reloads=model_loads(log) - 1))
    print(f"failover: replica promoted {promoted:.2f} s after the kill; first new result after "
          f"{recovery:.2f} s; answers {outcome.answers}", file=sys.stderr)
    assert worker.alive() and worker.popen.pid == pid, f"the worker exited:\n{log[-3000:]}"
    assert model_loads(log) == 1, "the model was loaded again"
    assert "Unrecoverable error" not in log
    assert outcome.accepted > 10 and outcome.lost == 0 and outcome.failed == 0, outcome
    # Each job's deadline is 20 s after it was accepted (a 10 s wait and the 10 s grace) and the
    # service is back within 10 s (a job whose message a worker had taken is sent again within
    # ~10 s more, here at most 12 s after it was accepted in six runs with both cores busy): a job
    # that ends skipped had lost its message in the failover.
    assert outcome.skipped == 0, outcome
    assert recovery <= 10.0, f"the first job after the kill took {recovery:.1f}s"
    # The registry CLI follows the failover too: it reads the new primary and sees the worker.
    rows = {row["version"]: row for row in registry_status(stack)["versions"]}
    assert rows["1"]["ready_workers"] == 1, rows
