"""Parts 1 (and the in-process references of parts 2-3): the models alone, in this process.

Run as its own process by the benchmark (``python -m bench.model_only ARGS``, prints JSON), so that
the benchmark's driver never holds TensorFlow while the servers are measured.

* ``predict``: the reference runtime's batched ``predict`` on prepared photos, batch sizes 1..N.
* ``prepare``: what ``prepare`` costs per photo on one thread, and its parts (crop, color, OCR).
* ``pipeline``: decode + prepare + the real ``workers.batching.Batcher`` fed by as many threads as a
  worker has, all in one process: the most the model can do on this machine with no HTTP, Redis or
  Celery around it. Also one photo at a time (for the added latency at one client).
* the same for the backbone-only runtime (``workers.runtime.huge`` on a ``--size-gb 0`` volume).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _timed(fn, *args):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started


def predict_sweep(runtime, prepared: list, sizes: list[int], repeats: int, min_time: float) -> dict:  # type: ignore[no-untyped-def]
    out = {}
    for size in sizes:
        batch = [prepared[i % len(prepared)] for i in range(size)]
        runtime.predict(batch)  # warm this shape
        runs = []
        for _ in range(repeats):
            times = []
            started = time.perf_counter()
            while len(times) < 3 or time.perf_counter() - started < min_time:
                times.append(_timed(runtime.predict, batch)[1])
            times.sort()
            runs.append(
                {
                    "latency_ms": times[len(times) // 2] * 1000,
                    "calls": len(times),
                    "img_per_s": size / times[len(times) // 2],
                }
            )
        out[str(size)] = runs
    return out


def pipeline(
    runtime,
    images: list[bytes],
    *,
    threads: int,
    count: int,
    max_batch: int,  # type: ignore[no-untyped-def]
    max_wait_s: float,
    repeats: int,
) -> list[dict]:
    from common.imaging import decode_rgb
    from workers.batching import Batcher

    batcher = Batcher(runtime.predict, max_batch=max_batch, max_wait_s=max_wait_s)
    batcher.start()

    def job(i: int) -> float:
        started = time.perf_counter()
        with batcher.arrival() as arrival:  # as the worker's task threads do
            rgb = decode_rgb(images[i % len(images)], max_side=runtime.decode_max_side)
            future = arrival.submit(runtime.prepare(rgb))
        future.result()
        return time.perf_counter() - started

    runs = []
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(job, range(threads)))  # warm-up
            for _ in range(repeats):
                started = time.perf_counter()
                latencies = list(pool.map(job, range(count)))
                elapsed = time.perf_counter() - started
                runs.append(
                    {"img_per_s": count / elapsed, "latencies_ms": [x * 1000 for x in latencies]}
                )
    finally:
        batcher.stop(timeout=30)
    return runs


def one_at_a_time(runtime, images: list[bytes], count: int, repeats: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """decode + prepare + predict of one photo, serially: the in-process latency at one client."""
    from common.imaging import decode_rgb

    runs = []
    for _ in range(repeats):
        latencies = []
        for i in range(count):
            started = time.perf_counter()
            rgb = decode_rgb(images[i % len(images)], max_side=runtime.decode_max_side)
            runtime.predict([runtime.prepare(rgb)])
            latencies.append((time.perf_counter() - started) * 1000)
        runs.append({"latencies_ms": latencies})
    return runs


def prepare_costs(runtime, images: list[bytes], repeats: int) -> dict:  # type: ignore[no-untyped-def]
    from common.imaging import decode_rgb
    from workers.runtime.color import dominant_color
    from workers.runtime.reference import center_square

    parts: dict[str, list[float]] = {
        "decode": [],
        "crop": [],
        "color": [],
        "ocr_brand": [],
        "prepare": [],
    }
    for _ in range(repeats):
        for data in images:
            rgb, t = _timed(lambda d: decode_rgb(d, max_side=runtime.decode_max_side), data)
            parts["decode"].append(t * 1000)
            parts["crop"].append(_timed(center_square, rgb, runtime.input_size)[1] * 1000)
            parts["color"].append(_timed(dominant_color, rgb)[1] * 1000)
            parts["ocr_brand"].append(_timed(runtime._brands.read, rgb)[1] * 1000)
            parts["prepare"].append(_timed(runtime.prepare, rgb)[1] * 1000)
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_only")
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, required=True)
    parser.add_argument("--image", action="append", type=Path, required=True)
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--reference-count", type=int, default=32)
    parser.add_argument("--backbone-count", type=int, default=160)
    args = parser.parse_args(argv)

    from common.imaging import decode_rgb
    from common.volume import ModelVolume
    from workers.runtime.huge import HugeRuntime
    from workers.runtime.reference import ReferenceRuntime

    images = [p.read_bytes() for p in args.image]
    sizes = [int(s) for s in args.sizes.split(",")]
    result: dict = {}

    def measure(runtime, prefix: str, sizes: list[int], one_count: int, pipeline_count: int) -> None:  # type: ignore[no-untyped-def]
        runtime.load()
        prepared = [runtime.prepare(decode_rgb(d, max_side=runtime.decode_max_side)) for d in images]
        result[f"{prefix}_predict"] = predict_sweep(runtime, prepared, sizes, args.repeats, args.min_time)
        if prefix == "reference":  # the backbone-only model has nothing in prepare() worth splitting
            result["reference_prepare_ms"] = prepare_costs(runtime, images, args.repeats)
        result[f"{prefix}_one_at_a_time"] = one_at_a_time(runtime, images, one_count, args.repeats)
        result[f"{prefix}_pipeline"] = pipeline(
            runtime,
            images,
            threads=args.threads,
            count=pipeline_count,
            max_batch=args.max_batch,
            max_wait_s=args.max_wait_ms / 1000,
            repeats=args.repeats,
        )
        runtime.unload()

    # The backbone first: the reference's OCR (onnxruntime) threads must not be around yet.
    measure(HugeRuntime(ModelVolume.open(args.backbone)), "backbone", sorted({1, args.max_batch}),
            8 * len(images), args.backbone_count)
    measure(ReferenceRuntime(ModelVolume.open(args.reference)), "reference", sizes,
            2 * len(images), args.reference_count)

    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
