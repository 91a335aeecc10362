"""The load generator's HTTP client against a real (tiny) HTTP server on a socket."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.loadgen import run

PHOTOS = [("a.jpg", b"\xff\xd8first photo\xff\xd9"), ("b.jpg", b"\xff\xd8second\r\n--x\xff\xd9")]


class _Handler(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []
    connections: set[str] = set()

    def setup(self) -> None:
        # One handler per connection. Not the client's port: the OS may hand a closed
        # connection's port to the next one within the same test.
        super().setup()
        self.connection_id = uuid.uuid4().hex

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
        part = next(iter(message.iter_parts()))
        self.received.append((self.path, part.get_filename(), part.get_payload(decode=True)))
        self.connections.add(self.connection_id)
        answer = json.dumps({"status": "succeeded", "timings_ms": {"inference": 2.0}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=["HTTP/1.1", "HTTP/1.0"], ids=["keep-alive", "closes-each-time"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"protocol_version": request.param, "received": [],
                                            "connections": set()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_it_posts_each_photo_as_multipart_and_counts_the_answers(server) -> None:  # type: ignore[no-untyped-def]
    url, handler = server
    result = asyncio.run(run(url, "ours", PHOTOS, concurrency=2, duration=0.5, warmup=0.1, key="k"))
    assert result["errors"] == 0, result["error_samples"]
    assert result["succeeded"] == result["requests"] > 0
    assert result["server_timings_mean_ms"] == {"inference": 2.0}
    assert len(result["latencies_ms"]) == result["succeeded"]
    assert {path for path, _, _ in handler.received} == {"/recognize?wait=30"}
    assert {(name, data) for _, name, data in handler.received} == set(PHOTOS)
    if handler.protocol_version == "HTTP/1.1":  # one connection per client, reused
        assert len(handler.connections) == 2
    else:  # the server closed each one: the client opened another and lost nothing
        assert len(handler.connections) == result["sent_with_warmup"]


def test_a_refused_connection_is_an_error_not_a_crash() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    result = asyncio.run(run(f"http://127.0.0.1:{port}", "bento", PHOTOS, concurrency=1,
                             duration=0.2, warmup=0))
    assert result["succeeded"] == 0 and result["errors"] > 0
    assert "ConnectionRefusedError" in result["error_samples"][0]


def test_failures_in_the_warm_up_are_kept_apart() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = asyncio.run(run(f"http://127.0.0.1:{port}", "bento", PHOTOS, concurrency=1,
                             duration=0.05, warmup=0.2))
    assert result["warmup_errors"] > 0 and result["warmup_errors"] + result["errors"] == result["sent_with_warmup"]
    assert "ConnectionRefusedError" in result["warmup_error_samples"][0]
