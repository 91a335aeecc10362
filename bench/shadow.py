"""What shadow traffic costs the real job: client latency with shadow copies on and off.

    python -m bench.shadow [--requests 200] [--clients 1,4] [--rounds 3] [--shadow-delay-ms 40]

Starts its own stack on free loopback ports: redis-server, the Gunicorn API, a worker of the
active version 1 and a worker of the shadow version 2, both null models (so the figures are the
serving path's own), version 2 slower by ``--shadow-delay-ms`` per batch so that, with several
clients, its queue may fall behind and copies are dropped (``--no-shadow-worker``: none computes
them, so all but SHADOW_MAX_QUEUE_DEPTH are dropped). For each client count it alternates
blocks with the shadow off and at fraction 1.0 (every job copied), and prints the clients' p50 and
p99 end-to-end latency (``?wait=5``) in each mode, their ratio, and how many copies were computed,
compared and dropped.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path

import redis
from PIL import Image

from common import livestats
from harness import Stack, stack_env, start_redis
from models_registry import rollout
from models_registry.build import build_null


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (180, 40, 40)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def block(stack: Stack, *, clients: int, requests: int, data: bytes) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one_client(count: int) -> None:
        mine = []
        with stack.client(timeout=30) as client:
            for _ in range(count):
                started = time.perf_counter()
                response = client.post("/v1/recognize?wait=5", files={"image": ("p.jpg", data, "image/jpeg")})
                assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
                mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=one_client, args=(requests // clients,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="per block")
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shadow-delay-ms", type=float, default=40.0)
    parser.add_argument("--no-shadow-worker", action="store_true",
                        help="start no worker for version 2: copies queue up to SHADOW_MAX_QUEUE_DEPTH and the rest "
                             "are dropped, which isolates what the copies cost the API from the shadow worker's CPU")
    args = parser.parse_args(argv)
    data = photo()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        build_null(tmp / "models", "1", name="reference")
        build_null(tmp / "models", "2", name="reference", delay_ms=args.shadow_delay_ms)
        redis_process, url = start_redis(tmp / "redis")
        env, key = stack_env(tmp, url, model_root=tmp / "models", default_version="1", METRICS_ENABLED="false",
                             API_ACCESS_LOG="0", LOG_LEVEL="WARNING")
        stack = Stack(tmp, env, key, url)
        client = redis.Redis.from_url(url)
        prefix = env["REDIS_KEY_PREFIX"]
        try:
            stack.start_api()
            versions = ("1",) if args.no_shadow_worker else ("1", "2")
            workers = {v: stack.start_worker(v, name=f"bench-{v}") for v in versions}
            for version, worker in workers.items():
                stack.wait_worker_ready(worker, version)
            block(stack, clients=1, requests=20, data=data)  # warm-up
            print(("no worker for version 2; " if args.no_shadow_worker else "")
                  + f"null models; shadow version 2 slower by {args.shadow_delay_ms:g} ms per batch; "
                  f"{args.requests} requests per block, {args.rounds} rounds, ?wait=5")
            print(f"{'clients':>7} {'shadow':>7} {'p50 ms':>8} {'p99 ms':>8} {'copies':>7} {'compared':>8} "
                  f"{'dropped':>7}")
            for clients in (int(c) for c in args.clients.split(",")):
                results: dict[bool, list[float]] = {False: [], True: []}
                counts = {"copies": 0, "compared": 0, "dropped": 0}
                for _ in range(args.rounds):  # alternate, so that drift hits both modes alike
                    for shadow in (False, True):
                        if shadow:
                            rollout.model_version_shadow(client, prefix=prefix, version="2", fraction=1.0,
                                                         force=True, by="bench")
                        before = livestats.version_figures(client, prefix=prefix, version="2", window_seconds=3600)
                        compared_before = livestats.shadow_comparison(client, prefix=prefix, candidate="2",
                                                                      active="1", window_seconds=3600).n
                        results[shadow] += block(stack, clients=clients, requests=args.requests, data=data)
                        if shadow:
                            rollout.model_version_shadow(client, prefix=prefix, version=None, by="bench")
                            time.sleep(1.0)  # the last copies finish
                            after = livestats.version_figures(client, prefix=prefix, version="2",
                                                              window_seconds=3600)
                            counts["copies"] += after.shadow_jobs - before.shadow_jobs
                            counts["dropped"] += after.shadow_dropped - before.shadow_dropped
                            counts["compared"] += livestats.shadow_comparison(
                                client, prefix=prefix, candidate="2", active="1", window_seconds=3600).n \
                                - compared_before
                p50 = {}
                for shadow, latencies in results.items():
                    latencies.sort()
                    p50[shadow] = statistics.median(latencies)
                    p99 = latencies[int(len(latencies) * 0.99)]
                    extra = (f" {counts['copies']:>7} {counts['compared']:>8} {counts['dropped']:>7}" if shadow
                             else f" {'':>7} {'':>8} {'':>7}")
                    print(f"{clients:>7} {('100 %' if shadow else 'off'):>7} {p50[shadow]:>8.1f} {p99:>8.1f}{extra}")
                print(f"{clients:>7} {'ratio':>7} {p50[True] / p50[False]:>8.2f}")
        finally:
            stack.stop()
            redis_process.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
