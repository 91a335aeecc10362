"""A small closed-loop HTTP load generator (asyncio + httpx), run as its own process.

    python -m bench.loadgen --target ours --url http://127.0.0.1:8000 --key KEY \
        --image a.jpg --image b.jpg --concurrency 16 --duration 10 --warmup 2

``concurrency`` clients each send a request, wait for the answer, and send the next, for
``warmup + duration`` seconds. Requests that start during the warm-up are not counted. Latency is
from just before the request is sent until its whole answer is read. Throughput is the number of
counted requests that succeeded divided by the time from the end of the warm-up until the last of
them finished. Prints one JSON object: the latencies, errors, throughput, this process's CPU time.

Targets: ``ours`` posts multipart ``image`` to ``/recognize?wait=30`` with the API key and needs a
200 with ``status: succeeded`` (it also collects the job's ``timings_ms``); ``bento`` posts the
same multipart to the BentoML peer's ``/recognize`` and needs a 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Outcome:
    started: float
    finished: float
    ok: bool
    error: str = ""
    timings: dict = field(default_factory=dict)


async def _one(client: httpx.AsyncClient, target: str, image: tuple[str, bytes]) -> Outcome:
    name, data = image
    started = time.perf_counter()
    try:
        if target == "ours":
            response = await client.post(
                "/recognize", params={"wait": "30"}, files={"image": (name, data, "image/jpeg")}
            )
        else:
            response = await client.post("/recognize", files={"image": (name, data, "image/jpeg")})
        finished = time.perf_counter()
    except httpx.HTTPError as exc:
        return Outcome(started, time.perf_counter(), False, f"{type(exc).__name__}: {exc}")
    if response.status_code != 200:
        return Outcome(
            started, finished, False, f"HTTP {response.status_code}: {response.text[:200]}"
        )
    if target == "ours":
        job = response.json()
        if job.get("status") != "succeeded":
            return Outcome(started, finished, False, f"job {job.get('status')}: {job.get('error')}")
        return Outcome(started, finished, True, timings=job.get("timings_ms") or {})
    return Outcome(started, finished, True)


async def run(
    url: str,
    target: str,
    images: list[tuple[str, bytes]],
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    key: str = "",
    timeout: float = 60,
) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    outcomes: list[Outcome] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        begin = time.perf_counter()
        measure_from = begin + warmup
        stop_at = measure_from + duration

        sent = 0

        async def client_loop(index: int) -> None:
            nonlocal sent
            i = index
            while time.perf_counter() < stop_at:
                outcome = await _one(client, target, images[i % len(images)])
                sent += 1
                if outcome.started >= measure_from:
                    outcomes.append(outcome)
                i += concurrency

        await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ok = [o for o in outcomes if o.ok]
    errors = [o.error for o in outcomes if not o.ok]
    elapsed = (max(o.finished for o in ok) - measure_from) if ok else float("nan")
    timing_keys = sorted({k for o in ok for k in o.timings})
    return {
        "target": target,
        "concurrency": concurrency,
        "requests": len(outcomes),
        "sent_with_warmup": sent,
        "succeeded": len(ok),
        "errors": len(errors),
        "error_samples": errors[:5],
        "elapsed_s": elapsed,
        "throughput": len(ok) / elapsed if ok and elapsed > 0 else 0.0,
        "latencies_ms": [(o.finished - o.started) * 1000 for o in ok],
        "client_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "server_timings_mean_ms": {
            k: sum(float(o.timings.get(k, 0)) for o in ok) / len(ok) for k in timing_keys
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--target", choices=("ours", "bento"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--image", action="append", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("the load generator only sends traffic to loopback addresses")
    images = [(path.name, path.read_bytes()) for path in args.image]
    result = asyncio.run(
        run(
            args.url,
            args.target,
            images,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            key=args.key,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
