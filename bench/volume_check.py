"""What the worker's volume check costs at load: a huge volume loaded cold with and without it.

    python -m bench.volume_check --size-gb 4 [--root DIR] [--runs 4]

Builds (once, under --root) a huge volume of the given size, then loads it in fresh processes with
the page cache dropped, alternating without and with the check (``workers.process._VolumeCheck``:
every file's block hashes on all cores, beside the load), and prints the median time until the
worker could report ready (load and warm-up, then the check's verdict), and the ratio.
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
    from workers.process import _VolumeCheck, _warm_up
    from workers.runtime import tensorflow_backend  # noqa: F401  (TensorFlow imported before the clock)
    from workers.runtime.huge import HugeRuntime

    volume = ModelVolume.open(volume_path)
    started = time.perf_counter()
    # What WorkerProcess.load does before the worker reports ready: the check beside the load and
    # the warm-up (which touches the lazily mapped weights), then the check's verdict.
    volume_check = _VolumeCheck(volume) if check else None
    runtime = HugeRuntime(volume)
    runtime.load()
    loaded = time.perf_counter()
    _warm_up(runtime)
    warmed = time.perf_counter()
    if volume_check is not None:
        volume_check.raise_if_failed()
    ready = time.perf_counter()
    print(json.dumps({"ready_s": ready - started, "load_s": loaded - started, "warm_up_s": warmed - loaded,
                      "wait_check_s": ready - warmed}))


def measure(volume_path: Path, check: bool) -> dict[str, float]:
    drop_from_page_cache(volume_files(volume_path))
    out = subprocess.run([sys.executable, "-m", "bench.volume_check", "--child", str(volume_path),
                          "--check" if check else "--no-check"],
                         cwd=ROOT, capture_output=True, text=True, check=True, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    return {k: float(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


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
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for run in range(args.runs):
        for check in (False, True) if run % 2 == 0 else (True, False):
            runs[check].append(measure(volume_path, check))
    print(f"cold load of a {args.size_gb:g} GB volume until ready, median of {args.runs} (min-max);"
          " its parts (medians): load, warm-up, waiting for the check after them")
    ready = {}
    for check, label in ((False, "without the check"), (True, "with the check")):
        times = [r["ready_s"] for r in runs[check]]
        ready[check] = statistics.median(times)
        parts = "  ".join(f"{k.removesuffix('_s')} {statistics.median(r[k] for r in runs[check]):.2f}"
                          for k in ("load_s", "warm_up_s", "wait_check_s"))
        print(f"  {label:18} {ready[check]:6.2f} s  ({min(times):.2f}-{max(times):.2f})   {parts}")
    print(f"  added by the check {100 * (ready[True] / ready[False] - 1):6.1f} %  (target < 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
