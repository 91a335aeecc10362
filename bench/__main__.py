"""The benchmark: one command, one run, one table.

    scripts/bench            # set up (.venv, var/venv-bench with BentoML), then this
    python -m bench          # the full run (about 12 minutes on 2 cores)
    python -m bench --quick  # a short smoke run (about 3 minutes)

Parts (see docs/PERFORMANCE.md for what each one computes and the recorded figures):
 1. model-only: the reference runtime's predict in-process at batch sizes 1..N, prepare() per
    photo, and the in-process pipeline (decode + prepare + Batcher) without HTTP/Redis/Celery;
 2. end to end: Gunicorn -> Redis -> Celery worker -> result, several client concurrencies,
    with the reference model and with the backbone-only model, ratios to (1);
 3. batching on vs off (BATCH_MAX_SIZE=16 vs 1, same worker threads, same load);
 4. the null model end to end: the pipeline's own cost per request;
 5. the peer: BentoML 1.4 with adaptive batching serving the same backbone (in var/venv-bench),
    and BentoML serving the null model's answer (one plain API), its runs interleaved with (4);
 6. a huge model volume: load time against raw read time, peak RSS against model bytes.
Every point is repeated (--repeats) and shown as median [min-max]. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.measure import machine
from bench.parts import Run, run_all
from bench.plan import check_prerequisites, parser, plan, selected_parts
from bench.report import report, summary


def main(argv: list[str] | None = None) -> int:
    args, parts = arguments(argv)
    p = plan(args)
    results, started = begin(p)
    work = args.workdir / results["started"]
    work.mkdir(parents=True)
    try:
        run_all(Run(work, p, parts), results)
    finally:
        finish(results, args, work, started)
    text, targets = report(results, p)
    results["targets"] = targets
    write_json(results, args.json)
    print(summary(results, p, quick=args.quick, text=text))
    return 1 if results.get("failures") else 0


def arguments(argv: list[str] | None) -> tuple[argparse.Namespace, set[str]]:
    """The command line and the parts it selects; a usage error if they cannot run here."""
    cli = parser(__doc__.split("\n\n")[0])
    args = cli.parse_args(argv)
    parts = selected_parts(args)
    check_prerequisites(cli, parts)
    return args, parts


def begin(p: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The results' head (the plan, the machine, the start's UTC stamp) and the start time."""
    info = machine()
    started = time.perf_counter()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return {"plan": p, "machine": info, "started": stamp}, started


def finish(results: dict[str, Any], args: argparse.Namespace, work: Path, started: float) -> None:
    """Whatever happened: the elapsed time and the load at the end, the figures so far written
    out, the scratch space removed (unless --keep)."""
    results["elapsed_s"] = time.perf_counter() - started
    results["machine"]["load_avg_end"] = os.getloadavg()
    write_json(results, args.json)
    if not args.keep:
        from models_registry.build import _make_writable

        _make_writable(work)
        shutil.rmtree(work, ignore_errors=True)


def write_json(results: dict[str, Any], path: Path | None) -> None:
    if path:
        path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
