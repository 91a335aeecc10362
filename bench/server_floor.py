"""The HTTP layer's own cost: what a request costs a server whose app does nothing with it.

    python -m bench.server_floor [--quick] [--repeats N] [--duration S]

The API's CPU per request (part 4, null model) holds the HTTP server's work (accept, parse, read
the body, write the answer, keep-alive), Django's, and the view's. This measures the first on its
own, so that the rest can be read as the difference, and answers issue 14's question whether an
asynchronous server would measure better than Gunicorn's threads. One app, the same for all:
read the whole multipart body of one of the benchmark's photos and answer a small JSON ``200``.
It is served by

- **gunicorn-threads**: Gunicorn with the API's own ``gunicorn.conf.py`` and worker class
  (``recognition_api.gunicorn_worker.DeadlineThreadWorker``), 2 processes x 16 threads, access log
  off — the API's HTTP layer exactly, with an empty WSGI app in place of Django;
- **gunicorn-threads 1x16**: the same in one process, beside
- **uvicorn 1 process**: Uvicorn (what Gunicorn's ASGI worker class, ``uvicorn.workers.UvicornWorker``,
  runs in each process; also the server under BentoML) with its defaults (h11 and asyncio: var/venv-bench,
  which ``scripts/bench`` makes, has neither httptools nor uvloop), access log off, an empty ASGI app.
  One process: Uvicorn's own ``--workers 2`` answered every request of this load generator 44 ms late
  here (a delayed-ACK stall; one process, like BentoML's, does not).

The load generator (``bench.loadgen``, target ``bento``: multipart ``POST /recognize``, needs a
200) runs at 1, 16 and 32 clients against each, the servers' runs interleaved (one run of each in
turn, the order rotating), and the table gives req/s, latency and the CPU per request of each
server's processes (from /proc). Compare the servers' CPU per request within one run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

_ANSWER = json.dumps({"name": None, "category": None, "brand": None, "color": None}).encode()


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Reads the whole body, answers a small JSON."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    while length > 0:
        chunk = stream.read(min(length, 65536))
        if not chunk:
            break
        length -= len(chunk)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(_ANSWER)))])
    return [_ANSWER]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same as ``wsgi_app``, for an ASGI server."""
    if scope["type"] == "lifespan":  # nothing to start or stop
        while True:
            kind = (await receive())["type"]
            await send({"type": f"{kind}.complete"})
            if kind == "lifespan.shutdown":
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": _ANSWER})


class _Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], url: str, log_path: Path) -> None:
        self.name, self.url = name, url
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait_ready(self, image: Path) -> None:
        from bench.servers import wait_answering

        wait_answering(self.process, self.url, image, timeout=60, name=self.name, log_path=Path(self._log.name))

    def stop(self) -> None:
        from bench.servers import stop_group

        stop_group(self.process, grace=20)
        self._log.close()


def _servers(work: Path) -> list[_Server]:
    from bench.plan import BENCH_VENV, ROOT
    from harness import free_port

    uvicorn = BENCH_VENV / "bin" / "uvicorn"
    if not uvicorn.exists():
        raise SystemExit(f"{uvicorn} is missing: run scripts/bench --only 5 once (it makes var/venv-bench)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "API_ACCESS_LOG": "0", "DJANGO_SETTINGS_MODULE": "config.settings"}
    servers = []
    for name, processes in (("gunicorn-threads 2x16", "2"), ("gunicorn-threads 1x16", "1")):
        port = free_port()
        servers.append(_Server(
            name,
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "bench.server_floor:wsgi_app"],
            {**env, "API_BIND": f"127.0.0.1:{port}", "API_PROCESSES": processes, "API_THREADS": "16"},
            f"http://127.0.0.1:{port}", work / f"gunicorn-{processes}.log"))
    port = free_port()
    servers.append(_Server(
        "uvicorn 1 process",
        [str(uvicorn), "bench.server_floor:asgi_app", "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
        env, f"http://127.0.0.1:{port}", work / "uvicorn.log"))
    return servers


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    from bench.measure import aggregate, cpu_probe, run_once
    from bench.parts import write_images
    from bench.plan import FULL, QUICK, log

    parser = argparse.ArgumentParser(prog="python -m bench.server_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s per point")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--clients", default="1,16,32")
    args = parser.parse_args(argv)
    p = dict(QUICK if args.quick else FULL)
    for key in ("repeats", "duration"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="server-floor-") as tmp:
        work = Path(tmp)
        images = write_images(work / "photos")
        servers = _servers(work)
        try:
            for server in servers:
                server.wait_ready(images[0])
            results: dict[tuple[str, int], list[dict]] = {}
            turn = 0
            for c in clients:
                for _ in range(p["repeats"]):
                    order = servers[turn % len(servers):] + servers[:turn % len(servers)]
                    turn += 1
                    for server in order:
                        probe = cpu_probe({"server": server.process.pid})
                        results.setdefault((server.name, c), []).append(
                            run_once("bento", server.url, images, c, p, probe=probe))
        finally:
            for server in servers:
                server.stop()
        rows = {key: aggregate(key[0], key[1], runs) for key, runs in results.items()}
    print(f"\nThe HTTP layer alone: an app that reads the body and answers; {p['repeats']} run(s) of "
          f"{p['duration']:g} s per point after {p['warmup']:g} s warm-up, interleaved; photos 300-640 px JPEG")
    print(f"{'server':<24}{'clients':>8}{'req/s (median [min-max])':>30}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'server CPU ms/req':>19}{'client':>8}")
    for (name, c), row in rows.items():
        t = row["throughput"]
        print(f"{name:<24}{c:>8}{t['median']:>14.1f} [{t['min']:.1f}-{t['max']:.1f}]".ljust(62)
              + f"{row['p50']['median']:>9.1f}{row['p99']['median']:>9.1f}"
              f"{row['server_cpu_ms_per_request']['server']:>19.2f}{row['client_cpu_ms_per_request']:>8.2f}")
    for c in clients:
        base = rows[("gunicorn-threads 1x16", c)]
        for name in ("gunicorn-threads 2x16", "uvicorn 1 process"):
            row = rows[(name, c)]
            log(f"c={c}: {name} / gunicorn-threads 1x16: CPU per request "
                f"x{row['server_cpu_ms_per_request']['server'] / base['server_cpu_ms_per_request']['server']:.2f}, "
                f"throughput x{row['throughput']['median'] / base['throughput']['median']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
