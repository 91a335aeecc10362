"""Small files, huge bitmaps: 16 concurrent uploads of one solid 7000x7000 PNG (about 160 KB,
147 MB of pixels) to the real stack with the reference model, and what they cost the API's and the
worker's resident memory.

    python -m bench.memory [--uploads 16] [--side 7000] [--budget-mb N]

Starts its own redis-server, Gunicorn API (2 processes) and one worker on free loopback ports and
prints, for the API (master and workers together) and the worker: resident memory before, at the
peak (sampled every 50 ms) and 5 s after, and the answers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from harness import REFERENCE_MODEL_ROOT, one_worker_stack
from harness.memory import bitmap_burst

MB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=16)
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--budget-mb", type=int, default=0, help="DECODE_BUDGET_BYTES in MiB (0: the default)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the stack's processes")
    args = parser.parse_args(argv)
    extra = {"DECODE_BUDGET_BYTES": str(args.budget_mb * MB)} if args.budget_mb else {}
    extra.update(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as tmp, one_worker_stack(
            Path(tmp), model_root=REFERENCE_MODEL_ROOT, METRICS_ENABLED="false", LOG_LEVEL="WARNING",
            **extra) as (stack, api, worker):
        burst = bitmap_burst(stack, api, worker, uploads=args.uploads, side=args.side)
    print(f"{burst.uploads} concurrent uploads of a {args.side}x{args.side} PNG "
          f"({burst.upload_bytes / 1024:.0f} KiB, {burst.decoded_bytes / MB:.0f} MiB of pixels); answers "
          f"{dict(burst.answers)}")
    print(f"{'process':8} {'before MiB':>10} {'peak MiB':>9} {'after MiB':>10} {'peak growth':>12}")
    for name, before, peak, after in (("api", burst.api_before, burst.api_peak, burst.api_after),
                                      ("worker", burst.worker_before, burst.worker_peak, burst.worker_after)):
        print(f"{name:8} {before / MB:10.0f} {peak / MB:9.0f} {after / MB:10.0f} {(peak - before) / MB:12.0f}")
    print(f"worker after / before: {burst.worker_left:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
