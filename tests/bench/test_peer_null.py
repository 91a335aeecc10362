"""Part 5's null-model peer: it computes exactly what our null model computes, a peer that
answers otherwise fails the part, and its runs alternate with part 4's."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import bench.parts as parts
from bench.peer_preprocess import NULL_DECODE_MAX_SIDE, null_answer_bytes, upright_rgb
from common.imaging import decode_rgb
from models_registry.build import build_null
from workers.runtime import runtime_for


def _jpeg(image: Image.Image, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def _photos(tmp_path: Path) -> dict[str, bytes]:
    """The benchmark's own photos, and variants that take the decoder's other paths: large
    enough for JPEG draft mode, grayscale, EXIF-rotated, a PNG (no draft mode), a small one."""
    photos = {path.name: path.read_bytes() for path in parts.write_images(tmp_path / "photos")}
    coffee = Image.open(io.BytesIO(photos["coffee.jpg"])).convert("RGB")
    photos["coffee-x3.jpg"] = _jpeg(coffee.resize((coffee.width * 3, coffee.height * 3)))
    photos["coffee-gray.jpg"] = _jpeg(coffee.convert("L"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    photos["coffee-exif6-x2.jpg"] = _jpeg(
        coffee.resize((coffee.width * 2, coffee.height * 2)), exif=exif.tobytes()
    )
    png = io.BytesIO()
    coffee.save(png, "PNG")
    photos["coffee.png"] = png.getvalue()
    photos["coffee-small.jpg"] = _jpeg(coffee.resize((120, 80)))
    return photos


def test_the_null_peer_answers_exactly_what_our_null_model_answers(tmp_path: Path) -> None:
    runtime = runtime_for(build_null(tmp_path / "models", "1", name="null"))
    runtime.load()
    assert runtime.decode_max_side == 256
    colors = set()
    for name, raw in _photos(tmp_path).items():
        # What the worker does with a job (workers.service): decode, prepare, predict.
        rgb = decode_rgb(raw, max_side=runtime.decode_max_side)
        ours = runtime.predict([runtime.prepare(rgb)])[0]
        # The same pixels, not only the same rounded mean.
        theirs = upright_rgb(Image.open(io.BytesIO(raw)), NULL_DECODE_MAX_SIDE)
        np.testing.assert_array_equal(np.asarray(theirs), rgb, err_msg=name)
        # Through JSON, as each side's answer reaches the client.
        assert json.loads(json.dumps(null_answer_bytes(raw))) == json.loads(json.dumps(ours)), name
        colors.add(ours["color"]["value"])
    assert len(colors) >= 5  # the photos differ, so the comparison is not of a constant


class _Answers(BaseHTTPRequestHandler):
    """Answers every POST with ``self.answer``: a stand-in for our API or for the peer."""

    protocol_version = "HTTP/1.1"
    answer: dict = {}

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(self.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server:
    def __init__(self, answer: dict) -> None:
        handler = type("Handler", (_Answers,), {"answer": answer})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.key = "k"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def photo(tmp_path: Path) -> Iterator[list[Path]]:
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(Image.new("RGB", (64, 48), (10, 20, 30))))
    yield [path]


def test_the_answers_are_compared_before_anything_is_measured(photo: list[Path]) -> None:
    answer = null_answer_bytes(photo[0].read_bytes())
    ours = _Server({"status": "succeeded", "result": answer})
    same, other = _Server(answer), _Server({**answer, "color": answer["name"]})
    try:
        assert parts.same_null_answers(ours, same, photo) == {"photos": 1, "identical": True}
        with pytest.raises(RuntimeError, match="differs from ours"):
            parts.same_null_answers(ours, other, photo)
    finally:
        for server in (ours, same, other):
            server.close()


class _FakeServer:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.url, self.key, self.probe = "http://127.0.0.1:1", "k", None
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def _fake_run(target: str, c: int, rate: float) -> dict:
    return {
        "throughput": rate, "p50": 1000 * c / rate, "p95": 1500 * c / rate, "p99": 2000 * c / rate,
        "errors": 0, "succeeded": 100, "sent_with_warmup": 110, "client_cpu_s": 0.1,
        "server_cpu_s": {target: 1.0}, "machine_busy_s": 2.0, "wall_s": 10.0,
        "server_timings_mean_ms": {},
    }


def test_parts_4_and_5_run_ours_and_the_null_peer_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.report import report

    started: list[_FakeServer] = []
    calls: list[tuple[str, int]] = []

    def server(*args: Any, **kwargs: Any) -> _FakeServer:
        started.append(_FakeServer(*args, **kwargs))
        return started[-1]

    def run_once(target: str, url: str, images: list, c: int, p: dict, key: str = "",
                 probe: Any = None) -> dict:
        calls.append((target, c))
        run = _fake_run(target, c, 60.0 if target == "ours" else 100.0)
        if target == "ours" and c == 16:  # our API refused some while its rate caught up
            run["warmup_errors"] = 7
        return run

    monkeypatch.setattr(parts, "OurStack", server)
    monkeypatch.setattr(parts, "PeerServer", server)
    monkeypatch.setattr(parts, "same_null_answers", lambda *a: {"photos": 4, "identical": True})
    monkeypatch.setattr(parts, "run_once", run_once)
    monkeypatch.setattr(parts, "log", lambda message: None)
    p = {"repeats": 2, "null_c": [1, 16], "batch": 16, "wait_ms": 5, "threads": 32}
    results = parts.null_comparison(parts.Run(tmp_path, p, {"4", "5"}, images=[tmp_path / "a.jpg"]))

    assert started[1].kwargs["service"] == "bench.peer_null_service:NullRecognizer"
    assert all(s.stopped for s in started)
    # Each client count: one run of each side per repeat, the order rotating.
    assert calls == [("ours", 1), ("bento", 1), ("bento", 1), ("ours", 1),
                     ("ours", 16), ("bento", 16), ("bento", 16), ("ours", 16)]
    assert set(results) == {"null_e2e", "peer_null", "peer_null_check"}
    assert set(results["null_e2e"]) == set(results["peer_null"]) == {"1", "16"}

    text, targets = report(results, p)
    assert "(runs interleaved with those of the null-model peer, part 5)" in text
    assert "answers identical to ours on the 4 photos" in text
    assert "ours/bento throughput x0.60, p50 x1.67, p99 x1.67" in text
    assert "14 of 220 sent failed in the warm-ups (not counted" in text
    (target,) = targets
    assert target["measured"] == "x0.60 at c=1, x0.60 at c=16" and not target["met"]


def test_part_4_alone_needs_no_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parts, "OurStack", _FakeServer)
    monkeypatch.setattr(parts, "PeerServer", None)  # would fail if called
    monkeypatch.setattr(parts, "run_once", lambda target, url, images, c, *a: _fake_run(target, c, 50.0))
    monkeypatch.setattr(parts, "log", lambda message: None)
    p = {"repeats": 1, "null_c": [1], "batch": 16, "wait_ms": 5, "threads": 32}
    results = parts.null_comparison(parts.Run(tmp_path, p, {"4"}, images=[]))
    assert set(results) == {"null_e2e"} and results["null_e2e"]["1"]["throughput"]["median"] == 50.0
