"""What it costs to acknowledge a job only once a replica holds it (``REDIS_WAIT_REPLICAS``).

    python -m bench.replication [--jobs 2000] [--threads 1,8]

Starts its own primary and replica (``redis-server`` on free loopback ports) and runs the API's
Redis steps for each job — the job-creation script, the message (a list push, on another
connection, as the Celery producer does) and, with replicas, ``JobStore.replicate`` (``WAIT``) —
from 1 and from 8 threads, alternating the two modes in the same run. Prints per-job latency and
jobs/s for each, and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import redis

from common.jobstore import JobStore
from harness import start_redis


def run(primary_url: str, *, replicas: int, jobs: int, threads: int) -> tuple[list[float], float]:
    """Latencies (ms) of ``jobs`` job creations over ``threads`` threads, and the wall time (s)."""
    store = JobStore(redis.Redis.from_url(primary_url, max_connections=threads * 2), "bench:", 600, 270)
    producer = redis.Redis.from_url(primary_url, max_connections=threads * 2)
    latencies: list[float] = []
    lock = threading.Lock()

    def one_thread(count: int) -> None:
        mine = []
        for _ in range(count):
            started = time.perf_counter()
            job_id = store.new_id()
            routed = store.create(job_id=job_id, fields={"image_key": job_id}, default_version="1",
                                  max_queue_depth=0, canary_draw=0.5)
            producer.lpush(routed.queue, job_id)
            if replicas:
                assert store.replicate(job_id, replicas=replicas, timeout_ms=1000) >= replicas
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=one_thread, args=(jobs // threads,)) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--threads", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        primary, url = start_redis(Path(tmp) / "primary")
        (Path(tmp) / "replica").mkdir()
        replica, _ = start_redis(Path(tmp) / "replica", replica_of=int(url.rsplit(":", 1)[1].split("/")[0]))
        try:
            print(f"{'threads':>7} {'mode':>8} {'p50 ms':>8} {'p99 ms':>8} {'jobs/s':>8}")
            for threads in (int(t) for t in args.threads.split(",")):
                results: dict[int, tuple[list[float], float]] = {0: ([], 0.0), 1: ([], 0.0)}
                for _ in range(args.rounds):  # alternate, so that drift hits both modes alike
                    for replicas in (0, 1):
                        latencies, wall = run(url, replicas=replicas, jobs=args.jobs, threads=threads)
                        results[replicas][0].extend(latencies)
                        results[replicas] = (results[replicas][0], results[replicas][1] + wall)
                rates = {}
                for replicas, (latencies, wall) in results.items():
                    latencies.sort()
                    rates[replicas] = len(latencies) / wall
                    p99 = latencies[int(len(latencies) * 0.99)]
                    print(f"{threads:>7} {('WAIT 1' if replicas else 'no WAIT'):>8} "
                          f"{statistics.median(latencies):>8.3f} {p99:>8.3f} {rates[replicas]:>8.0f}")
                print(f"{threads:>7} {'ratio':>8} {'':>8} {'':>8} {rates[1] / rates[0]:>8.2f}")
        finally:
            replica.kill()
            primary.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
