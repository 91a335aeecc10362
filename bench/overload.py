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

from harness import REFERENCE_MODEL_ROOT, one_worker_stack
from harness.overload import overload


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
    with tempfile.TemporaryDirectory() as tmp, one_worker_stack(
            Path(tmp), model_root=args.model_root or REFERENCE_MODEL_ROOT, METRICS_ENABLED="false",
            LOG_LEVEL="WARNING", WORKER_HEARTBEAT_SECONDS="2") as (stack, _, _):
        result = overload(stack, photo(), clients=args.clients, wait_seconds=args.wait, seconds=args.seconds,
                          pause_seconds=args.pause)
    row = result.row()
    width = max(len(k) for k in row)
    for name, value in row.items():
        print(f"{name:{width}}  {value}")
    print(f"{'Retry-After (s: count)':{width}}  {json.dumps(dict(sorted(result.retry_after.items())))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
