"""What a run measures: the command line, the settings of each part, and where things are."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / "var" / "venv-bench"
REFERENCE = Path(os.environ.get("MODEL_ROOT", ROOT / "var" / "models")) / "reference" / "1"

QUICK: dict[str, Any] = {
    "repeats": 1,
    "duration": 3.0,
    "warmup": 1.0,
    "reference_c": [1, 4],
    "backbone_c": [1, 16],
    "off_c": [16],
    "null_c": [1, 16],
    "peer_c": [1, 16],
    "huge_gb": 0.1,
    "huge_repeats": 1,
    "sizes": "1,4,16",
    "min_time": 0.3,
    "reference_count": 8,
    "backbone_count": 48,
}
FULL: dict[str, Any] = {
    "repeats": 3,
    "duration": 8.0,
    "warmup": 2.0,
    "reference_c": [1, 4, 16],
    "backbone_c": [1, 4, 16, 32],
    "off_c": [16, 32],
    "null_c": [1, 16, 32],  # part 4, and part 5's null-model peer at the same counts
    "peer_c": [1, 16, 32],
    "huge_gb": 4.0,  # the size the architecture's load target is set for
    "huge_repeats": 3,
    "sizes": "1,2,4,8,16,32",
    "min_time": 1.0,
    "reference_count": 32,
    "backbone_count": 160,
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    p = dict(QUICK if args.quick else FULL)
    for key in ("repeats", "duration", "warmup", "huge_gb"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    p.update(batch=16, wait_ms=5, threads=32)
    return p


def parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=description)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 3 minutes)")
    parser.add_argument("--repeats", type=int, help="runs per point (3; quick: 1)")
    parser.add_argument("--duration", type=float, help="seconds measured per run (8; quick: 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per run (2; quick: 1)")
    parser.add_argument(
        "--huge-gb",
        type=float,
        help="size of the huge volume in GB (4, the size the target is set for; quick: 0.1)",
    )
    parser.add_argument(
        "--only", default="1,2,3,4,5,6", help="parts to run, e.g. 1,2 (default: all)"
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / "var" / "bench",
        help="scratch space (volumes, logs, photos), removed afterwards unless --keep",
    )
    parser.add_argument("--keep", action="store_true")
    return parser


def selected_parts(args: argparse.Namespace) -> set[str]:
    return {s.strip() for s in args.only.split(",")}


def check_prerequisites(parser: argparse.ArgumentParser, parts: set[str]) -> None:
    """Exit with a usage error when something the selected parts need is missing."""
    if not REFERENCE.exists():
        parser.error(f"{REFERENCE} is missing: run scripts/setup (or scripts/bench) first")
    if "5" in parts and not (BENCH_VENV / "bin" / "bentoml").exists():
        parser.error(
            f"{BENCH_VENV} has no bentoml: run scripts/bench (it makes that venv), "
            "or leave out part 5"
        )
    if shutil.which("redis-server") is None:
        parser.error("redis-server is needed (scripts/setup installs it)")
