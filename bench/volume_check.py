"""What the worker's volume check costs at load: a huge volume loaded cold with and without it.

    python -m bench.volume_check --size-gb 4 [--root DIR] [--runs 4]

Builds (once, under --root) a huge volume of the given size, then loads it in fresh processes with
the page cache dropped, alternating without and with the check (``workers.process._VolumeCheck``:
every file's sha256 on a thread beside the load), and prints the median time until the worker
could report ready, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.huge_load import drop_from_page_cache, volume_files

ROOT = Path(__file__).resolve().parent.parent


def child(volume_path: Path, check: bool) -> None:
    from common.volume import ModelVolume
    from workers.process import _VolumeCheck
    from workers.runtime import tensorflow_backend  # noqa: F401  (TensorFlow imported before the clock)
    from workers.runtime.huge import HugeRuntime

    volume = ModelVolume.open(volume_path)
    started = time.perf_counter()
    volume_check = _VolumeCheck(volume) if check else None
    HugeRuntime(volume).load()
    if volume_check is not None:
        volume_check.raise_if_failed()
    print(json.dumps({"ready_s": time.perf_counter() - started}))


def measure(volume_path: Path, check: bool) -> float:
    drop_from_page_cache(volume_files(volume_path))
    out = subprocess.run([sys.executable, "-m", "bench.volume_check", "--child", str(volume_path),
                          "--check" if check else "--no-check"],
                         cwd=ROOT, capture_output=True, text=True, check=True, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    return float(json.loads(out.stdout.strip().splitlines()[-1])["ready_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=4.0)
    parser.add_argument("--root", type=Path, default=ROOT / "var" / "bench-volume-check")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.check)
        return 0
    version = f"{args.size_gb:g}gb"
    volume_path = args.root / "huge" / version
    if not volume_path.exists():
        subprocess.run([sys.executable, "-m", "models_registry.huge", "--root", str(args.root), "--version", version,
                        "--size-gb", str(args.size_gb)], cwd=ROOT, check=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for run in range(args.runs):
        for check in (False, True) if run % 2 == 0 else (True, False):
            times[check].append(measure(volume_path, check))
    without, with_check = statistics.median(times[False]), statistics.median(times[True])
    print(f"cold load of a {args.size_gb:g} GB volume until ready, median of {args.runs} (min-max):")
    print(f"  without the check  {without:6.2f} s  ({min(times[False]):.2f}-{max(times[False]):.2f})")
    print(f"  with the check     {with_check:6.2f} s  ({min(times[True]):.2f}-{max(times[True]):.2f})")
    print(f"  added by the check {100 * (with_check / without - 1):6.1f} %  (target < 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
