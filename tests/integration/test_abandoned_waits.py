"""Clients that post with ``?wait=N`` and hang up — a phone whose request timed out, an app that was
closed, a hostile client — against the real Gunicorn API: the threads that waited for them are
freed at once, not after the wait, and their jobs still finish."""

from __future__ import annotations

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness import Stack, one_worker_stack, stack_env, start_redis, wait_until
from harness.chaos import Row, model_loads
from models_registry.build import build_null
from tests.conftest import jpeg_bytes, solid
from tests.integration.conftest import Agent

CLIENTS = 64  # the test stack's API has 2 processes x 16 threads: twice its threads
HUNG_UP = "client hung up while waiting"


def _post_request(stack: Stack, photo: bytes) -> bytes:
    boundary = "hungup"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    head = ("POST /recognize?wait=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {stack.api_key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _send_and_hang_up(address: tuple[str, int], request: bytes) -> None:
    """A whole request, then the connection closed without reading the answer."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)


def _job_ids(stack: Stack) -> list[str]:
    client = stack.redis()
    prefix = f"{stack.env['REDIS_KEY_PREFIX']}job:"
    try:
        return [key.decode().removeprefix(prefix) for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    finally:
        client.close()


@pytest.mark.chaos
def test_clients_that_hang_up_while_waiting_free_their_threads_and_their_jobs_still_finish(
    tmp_path: Path, agent: Agent, chaos_rows: list[Row],
) -> None:
    models = tmp_path / "models"
    build_null(models, "1")
    # A long heartbeat: the worker, stopped below so that no job finishes, stays ready meanwhile.
    with one_worker_stack(tmp_path, model_root=models, DD_AGENT_HOST="127.0.0.1", DD_DOGSTATSD_PORT=str(agent.port),
                          WORKER_HEARTBEAT_SECONDS="20") as (stack, api, worker):
        host, port = stack.api_url.removeprefix("http://").split(":")
        address = (host, int(port))
        os.kill(worker.popen.pid, signal.SIGSTOP)
        try:
            # Each client sends a whole request that would wait up to 30 s for its job, and hangs up.
            request = _post_request(stack, jpeg_bytes(solid((200, 30, 30))))
            started = time.monotonic()
            for _ in range(CLIENTS):
                _send_and_hang_up(address, request)
            # Without noticing the hang-ups, the threads would wait 30 s for the gone clients' jobs,
            # and the second half of the requests (beyond the threads) would wait behind the first.
            wait_until(lambda: api.output().count(HUNG_UP) >= CLIENTS, 20, "the posts' waits to end")
            posts_s = time.monotonic() - started
            assert httpx.get(f"{stack.api_url}/healthz", timeout=10).status_code == 200
            ids = _job_ids(stack)
            # The same with reads that wait for a job (GET ...?wait=30), one per job.
            started = time.monotonic()
            for job_id in ids:
                _send_and_hang_up(address, f"GET /v1/recognitions/{job_id}?wait=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           f"Authorization: Bearer {stack.api_key}\r\n\r\n".encode())
            wait_until(lambda: api.output().count(HUNG_UP) >= 2 * CLIENTS, 20, "the reads' waits to end")
            reads_s = time.monotonic() - started
        finally:
            os.kill(worker.popen.pid, signal.SIGCONT)
        store = stack.redis()
        key = f"{stack.env['REDIS_KEY_PREFIX']}job:"

        def records() -> list[dict[bytes, bytes]]:
            return [store.hgetall(key + job_id) for job_id in ids]

        wait_until(lambda: all(r.get(b"status") in (b"succeeded", b"failed") for r in records()), 60,
                   "the jobs to finish")
        finished = records()
        store.close()
        api_log = api.output()
        statuses = [r[b"status"].decode() for r in finished]
        took = sorted(float(r[b"finished_at"]) - float(r[b"created_at"]) for r in finished)
        chaos_rows.append(Row(f"{CLIENTS} clients post ?wait=30 and hang up, {CLIENTS} reads too (threads back)",
                              len(ids), CLIENTS - len(ids), statuses.count("failed"), 0,
                              round(took[int(0.99 * (len(took) - 1))], 2), round(max(posts_s, reads_s), 2),
                              model_loads(worker.output()) - 1))
        print(f"abandoned waits: {len(ids)} jobs accepted from {CLIENTS} clients that hung up, their waits over "
              f"{posts_s:.2f} s after; {CLIENTS} waiting reads that hung up, over {reads_s:.2f} s after; "
              f"{statuses.count('succeeded')} jobs succeeded")
        assert len(ids) == CLIENTS
        assert statuses.count("succeeded") == CLIENTS  # accepted, then finished: nothing lost or failed
        assert api_log.count(HUNG_UP) == 2 * CLIENTS
        # Counted for Datadog too (flushed every 0.3 s).
        def counted() -> int:
            cuts = agent.metric("recognition.api.wait_cut")
            return sum(int(v) for v, _, tags in cuts if "reason:client_gone" in tags)

        wait_until(lambda: counted() >= 2 * CLIENTS, 10, "the metric")
        assert counted() == 2 * CLIENTS
        # A thread is back within about a second of its client's hang-up (the waits' re-check), far
        # from the 30 s each would otherwise have waited: twice the threads' worth of requests, the
        # second half queued behind the first, are all through in seconds.
        assert posts_s < 10.0 and reads_s < 10.0
        # The answers nobody reads are written to closed connections quietly: no error, no traceback.
        assert '"level": "ERROR"' not in api_log and "Traceback" not in api_log, api_log[-3000:]


def test_when_every_thread_waits_a_waiting_request_makes_way_for_a_probe_or_a_new_upload(tmp_path: Path) -> None:
    """Clients that wait (and read their answers) on every thread of an API process: a Kubernetes
    probe or a new upload queued behind them would wait for their waits (30 s here) and the
    readiness probe (2 s) would take the pod out of the Service. A waiter that has waited a second
    makes way: it answers 202 (its job goes on) and its thread takes the queued request."""
    models = tmp_path / "models"
    build_null(models, "1")
    redis_process, url = start_redis(tmp_path)
    env, key = stack_env(tmp_path, url, model_root=models, default_version="1", METRICS_ENABLED="false",
                         WORKER_HEARTBEAT_SECONDS="20")
    stack = Stack(tmp_path, env, key, url)
    threads = 8
    try:
        stack.start_api(processes=1, threads=threads)  # one process: every request meets the same pool
        worker = stack.start_worker("1")
        stack.wait_worker_ready(worker, "1")
        os.kill(worker.popen.pid, signal.SIGSTOP)  # no job finishes: every wait would last its 30 s
        photo = jpeg_bytes(solid((30, 200, 30)))
        with ThreadPoolExecutor(threads + 4) as pool, stack.client(timeout=60) as client:
            waiting = [pool.submit(client.post, "/recognize?wait=30", files={"image": ("p.jpg", photo, "image/jpeg")})
                       for _ in range(threads + 4)]
            time.sleep(3)  # every thread waits, and the last four uploads have had their turn
            started = time.monotonic()
            assert httpx.get(f"{stack.api_url}/healthz", timeout=10).status_code == 200
            healthz_s = time.monotonic() - started
            os.kill(worker.popen.pid, signal.SIGCONT)
            answers = [f.result(timeout=60) for f in waiting]
        statuses = sorted(r.status_code for r in answers)
        ids = [r.json()["id"] for r in answers]
        with stack.client() as client:
            wait_until(lambda: all(client.get(f"/v1/recognitions/{i}").json()["status"] == "succeeded" for i in ids),
                       30, "every job")
        api_log = stack.processes[0].output()
        made_way = api_log.count("wait cut short to make way")
        print(f"every thread waiting: /healthz answered in {healthz_s:.2f} s; the {threads + 4} uploads answered "
              f"{statuses}; {made_way} waits made way")
        assert healthz_s < 3.0  # a second of waiting, then the next waiter's re-check
        # Each queued request (4 uploads, the probe) was made way for once: five 202s, the rest 200.
        assert made_way == 5 and statuses == [200] * (threads - 1) + [202] * 5
        assert len(set(ids)) == threads + 4
    finally:
        stack.stop()
        redis_process.kill()
