"""A small closed-loop HTTP load generator (asyncio + h11), run as its own process.

    python -m bench.loadgen --target ours --url http://127.0.0.1:8000 --key KEY \
        --image a.jpg --image b.jpg --concurrency 16 --duration 10 --warmup 2

``concurrency`` clients each send a request, wait for the answer, and send the next, for
``warmup + duration`` seconds. Requests that start during the warm-up are not counted. Latency is
from just before the request is sent until its whole answer is read. Throughput is the number of
counted requests that succeeded divided by the time from the end of the warm-up until the last of
them finished. Prints one JSON object: the latencies, errors, throughput, this process's CPU time.

Each client holds one keep-alive HTTP/1.1 connection (opened again if the server closes it);
the protocol is h11's (the state machine under httpx), and each photo's multipart body is
encoded once, so that the generator spends little of the CPU it shares with the servers
(about a quarter of what an httpx client spent per request here).

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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import h11


@dataclass
class Outcome:
    started: float
    finished: float
    ok: bool
    error: str = ""
    timings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Upload:
    """One photo's request body, encoded once."""

    content_type: str
    body: bytes

    @classmethod
    def multipart(cls, field_name: str, filename: str, data: bytes, mime: str = "image/jpeg") -> Upload:
        boundary = uuid.uuid4().hex
        body = b"".join([
            f"--{boundary}\r\n".encode(),
            f'Content-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'.encode(),
            f"Content-Type: {mime}\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ])
        return cls(f"multipart/form-data; boundary={boundary}", body)


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._h11: h11.Connection | None = None

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = self._h11 = None

    async def request(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes) -> tuple[int, bytes]:
        if self._h11 is None:
            await self._open()
        conn, reader, writer = self._h11, self._reader, self._writer
        assert conn is not None and reader is not None and writer is not None
        try:
            writer.write(
                conn.send(h11.Request(method=method, target=target, headers=[
                    ("Host", f"{self.host}:{self.port}"), ("Content-Length", str(len(body))), *headers]))
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
            await writer.drain()
            status, chunks = 0, []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))  # b"" at EOF: h11 reports it
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise HttpError("server closed the connection")
        except (OSError, h11.ProtocolError, HttpError):
            self.close()
            raise
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:  # the server asked to close (or the exchange was cut short)
            self.close()
        return status, b"".join(chunks)


async def _one(conn: Connection, target: str, headers: list[tuple[str, str]], upload: Upload,
               timeout: float) -> Outcome:
    path = "/recognize?wait=30" if target == "ours" else "/recognize"
    started = time.perf_counter()
    try:
        status, body = await asyncio.wait_for(
            conn.request("POST", path, [*headers, ("Content-Type", upload.content_type)], upload.body),
            timeout,
        )
        finished = time.perf_counter()
    except (OSError, h11.ProtocolError, HttpError, TimeoutError) as exc:
        conn.close()
        return Outcome(started, time.perf_counter(), False, f"{type(exc).__name__}: {exc}")
    if status != 200:
        return Outcome(started, finished, False, f"HTTP {status}: {body[:200]!r}")
    if target == "ours":
        try:
            job = json.loads(body)
        except ValueError:
            return Outcome(started, finished, False, f"not JSON: {body[:200]!r}")
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
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    headers = [("Authorization", f"Bearer {key}")] if key else []
    uploads = [Upload.multipart("image", name, data) for name, data in images]
    outcomes: list[Outcome] = []
    warmup_outcomes: list[Outcome] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    begin = time.perf_counter()
    measure_from = begin + warmup
    stop_at = measure_from + duration
    sent = 0

    async def client_loop(index: int) -> None:
        nonlocal sent
        conn = Connection(host, port)
        i = index
        try:
            while time.perf_counter() < stop_at:
                outcome = await _one(conn, target, headers, uploads[i % len(uploads)], timeout)
                sent += 1
                if outcome.started >= measure_from:
                    outcomes.append(outcome)
                else:
                    warmup_outcomes.append(outcome)
                i += concurrency
        finally:
            conn.close()

    await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ok = [o for o in outcomes if o.ok]
    errors = [o.error for o in outcomes if not o.ok]
    warmup_errors = [o.error for o in warmup_outcomes if not o.ok]
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
        # Not counted, but their CPU is (sent_with_warmup): a burst of fast failures in the
        # warm-up would make the CPU per request look low.
        "warmup_errors": len(warmup_errors),
        "warmup_error_samples": warmup_errors[:5],
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
