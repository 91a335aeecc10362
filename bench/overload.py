"""Overload of the real stack: 64 clients posting a real photo with ``?wait=2`` for 60 s at one
worker with the reference model (several times what it computes on this machine), then a new
request 10 s later.

    python -m bench.overload [--clients 64] [--wait 2] [--seconds 60] [--pause 10]

Starts its own redis-server, Gunicorn API and one Celery worker (the reference volume built by
scripts/setup, under MODEL_ROOT or var/models) on free loopback ports, and prints one table row:
requests offered, accepted, refused (429), the completion time of the accepted jobs, what became
of them, and the answer to the request after the pause.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

from harness import Stack, stack_env, start_redis
from harness.overload import overload

ROOT = Path(__file__).resolve().parent.parent


def photo() -> bytes:
    """scikit-image's coffee photo (600x400), JPEG: a real photo, so that the reference model
    does its whole work (a plain color would let OCR find nothing in no time)."""
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.coffee()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--wait", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--pause", type=float, default=10.0)
    parser.add_argument("--model-root", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.support import REFERENCE_MODEL_ROOT

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_process, url = start_redis(tmp / "redis")
        env, key = stack_env(tmp, url, model_root=args.model_root or REFERENCE_MODEL_ROOT, default_version="1",
                             METRICS_ENABLED="false", LOG_LEVEL="WARNING", WORKER_HEARTBEAT_SECONDS="2")
        stack = Stack(tmp, env, key, url)
        try:
            stack.start_api()
            worker = stack.start_worker("1")
            stack.wait_worker_ready(worker, "1")
            result = overload(stack, photo(), clients=args.clients, wait_seconds=args.wait, seconds=args.seconds,
                              pause_seconds=args.pause)
        finally:
            stack.stop()
            redis_process.kill()
    row = result.row()
    width = max(len(k) for k in row)
    for name, value in row.items():
        print(f"{name:{width}}  {value}")
    print(f"{'Retry-After (s: count)':{width}}  {json.dumps(dict(sorted(result.retry_after.items())))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
