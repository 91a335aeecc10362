"""The empty apps that ``bench.server_floor`` serves: each reads the whole body and answers 200."""

from __future__ import annotations

import asyncio
import io
import json

from bench.server_floor import asgi_app, wsgi_app

BODY = b"x" * 200_000


def test_the_wsgi_app_reads_the_whole_body_and_answers_json() -> None:
    stream = io.BytesIO(BODY)
    started: list[str] = []
    answer = b"".join(wsgi_app({"CONTENT_LENGTH": str(len(BODY)), "wsgi.input": stream},
                               lambda status, headers: started.append(status)))
    assert started == ["200 OK"] and stream.tell() == len(BODY)
    assert set(json.loads(answer)) == {"name", "category", "brand", "color"}


def test_the_asgi_app_completes_its_lifespan_and_reads_the_whole_body() -> None:
    async def exchange(scope: dict, incoming: list[dict]) -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return incoming.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        await asgi_app(scope, receive, send)
        assert incoming == []  # everything offered was read
        return sent

    lifespan = asyncio.run(exchange({"type": "lifespan"}, [{"type": "lifespan.startup"},
                                                           {"type": "lifespan.shutdown"}]))
    assert [m["type"] for m in lifespan] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    chunks = [{"type": "http.request", "body": BODY[:100_000], "more_body": True},
              {"type": "http.request", "body": BODY[100_000:], "more_body": False}]
    sent = asyncio.run(exchange({"type": "http"}, chunks))
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"])["color"] is None
