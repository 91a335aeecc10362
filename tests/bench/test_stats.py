"""The benchmark's arithmetic and plumbing: correctness only, never timing."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from bench.stats import latency_summary, percentile, spread


def test_percentiles_of_one_to_a_hundred() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1 and percentile(values, 100) == 100


def test_percentiles_do_not_depend_on_order_and_interpolate_between_ranks() -> None:
    assert percentile([40, 10, 30, 20], 50) == pytest.approx(25)
    assert percentile([40, 10, 30, 20], 90) == pytest.approx(37)
    assert percentile([7], 99) == 7
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


@pytest.mark.parametrize("q", [1, 25, 50, 90, 95, 99, 99.9])
def test_percentiles_agree_with_numpy(q: float) -> None:
    sample = list(np.random.default_rng(int(q * 10)).lognormal(3, 1, size=997))
    assert percentile(sample, q) == pytest.approx(float(np.percentile(sample, q)), rel=1e-12)


def test_a_latency_summary_and_the_spread_of_repeats() -> None:
    summary = latency_summary([10.0, 20.0, 30.0, 40.0, 1000.0])
    assert (
        summary["n"] == 5
        and summary["p50"] == 30
        and summary["max"] == 1000
        and summary["mean"] == 220
    )
    assert summary["p99"] == pytest.approx(40 + 0.96 * 960)
    assert spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert math.isnan(spread([])["median"])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    calls = 0

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        type(self).calls += 1
        ok = b'name="image"' in body and self.path.startswith("/recognize?wait=30")
        payload = json.dumps(
            {
                "status": "succeeded" if ok else "failed",
                "timings_ms": {"batch_size": 2, "inference": 4.0},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


def test_the_load_generator_counts_only_what_follows_the_warm_up() -> None:
    from bench.loadgen import run

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = asyncio.run(
            run(
                url,
                "ours",
                [("a.jpg", b"\xff\xd8x")],
                concurrency=3,
                duration=0.5,
                warmup=0.3,
                key="k",
            )
        )
    finally:
        server.shutdown()
    assert result["errors"] == 0 and result["succeeded"] > 0
    assert result["succeeded"] < _Handler.calls  # the warm-up's requests were sent but not counted
    assert len(result["latencies_ms"]) == result["succeeded"]
    assert result["throughput"] == pytest.approx(result["succeeded"] / result["elapsed_s"])
    assert result["server_timings_mean_ms"] == {"batch_size": 2, "inference": 4.0}


def test_the_load_generator_refuses_addresses_off_this_machine() -> None:
    from bench.loadgen import main

    with pytest.raises(SystemExit):
        main(
            [
                "--target",
                "ours",
                "--url",
                "http://10.0.0.1:8000",
                "--image",
                __file__,
                "--concurrency",
                "1",
                "--duration",
                "1",
            ]
        )


def test_the_peer_preprocesses_photos_exactly_like_the_backbone_only_runtime(tmp_path) -> None:
    from PIL import Image
    from skimage import data

    from bench.peer_preprocess import decode_bytes
    from common.imaging import decode_rgb
    from workers.runtime.reference import center_square

    for name in ("coffee", "chelsea", "astronaut", "rocket"):
        path = tmp_path / f"{name}.jpg"
        big = Image.fromarray(getattr(data, name)()).convert("RGB")
        big.resize((big.width * 3, big.height * 3)).save(
            path, quality=90
        )  # large enough for draft mode
        raw = path.read_bytes()
        ours = center_square(decode_rgb(raw, max_side=512), 224)
        np.testing.assert_array_equal(decode_bytes(raw), ours, err_msg=name)
