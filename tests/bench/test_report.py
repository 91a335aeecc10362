"""The benchmark's table is built from a run's results without tripping over any part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.plan import plan
from bench.report import report


def _agg(c: int, rate: float, p50: float) -> dict:
    s = lambda x: {"min": x * 0.9, "median": x, "max": x * 1.1}  # noqa: E731
    return {
        "concurrency": c,
        "throughput": s(rate),
        "p50": s(p50),
        "p95": s(p50 * 1.5),
        "p99": s(p50 * 2),
        "errors": 0,
        "requests": 10,
        "client_cpu_ms_per_request": 2.0,
        "server_timings_mean_ms": {"batch_size": 3.0},
        "runs": [],
    }


def _load(seconds: float, hwm: int) -> dict:
    return {"load_s": seconds, "hwm": hwm, "rss_before": 600 << 20, "model_bytes": 10**9}


def test_every_part_and_target_is_reported() -> None:
    import argparse

    p = plan(argparse.Namespace(quick=True, repeats=None, duration=None, warmup=None, huge_gb=None))
    runs = [{"img_per_s": 30.0, "latency_ms": 33.0}]
    results = {
        "model_only": {
            "reference_predict": {"1": runs, "16": runs},
            "reference_prepare_ms": {
                "decode": [5.0],
                "crop": [1.0],
                "color": [20.0],
                "ocr_brand": [200.0],
                "prepare": [221.0],
            },
            "reference_one_at_a_time": [{"latencies_ms": [250.0, 260.0]}],
            "reference_pipeline": [{"img_per_s": 6.0}],
            "backbone_predict": {"1": runs, "16": [{"img_per_s": 40.0, "latency_ms": 400.0}]},
            "backbone_one_at_a_time": [{"latencies_ms": [40.0, 41.0]}],
            "backbone_pipeline": [{"img_per_s": 38.0}],
        },
        "reference_e2e": {"1": _agg(1, 4.0, 260), "4": _agg(4, 5.0, 700)},
        "backbone_e2e": {"1": _agg(1, 20.0, 50), "16": _agg(16, 34.0, 450)},
        "batching_off": {"16": _agg(16, 22.0, 600)},
        "null_e2e": {"1": _agg(1, 45.0, 21), "16": _agg(16, 90.0, 160)},
        "peer": {"1": _agg(1, 18.0, 55), "16": _agg(16, 25.0, 550)},
        "huge": {
            "catalog_items": 100,
            "runs": [
                {
                    "cold_read": {"seconds": 1.0, "all": {"a": 1.0}},
                    "warm_read": {"seconds": 0.2, "all": {"a": 0.2}},
                    "cold": _load(1.1, 1700 << 20),
                    "warm": _load(0.5, 1700 << 20),
                }
            ],
            "read_mode": {"cold": _load(2.0, 1700 << 20), "warm": _load(1.5, 1700 << 20)},
        },
    }
    text, targets = report(results, p)
    for part in ("(1)", "(2)", "(3)", "(4)", "(5)", "(6)"):
        assert part in text
    figures = " ".join(t["figure"] for t in targets)
    for figure in ("e2e throughput", "added latency", "batching gain", "raw read time", "peak RSS"):
        assert figure in figures
    assert "x0.85 of predict@16" in text  # 34 req/s end to end over 40 img/s alone
    assert "ours/bento throughput x1.36" in text


def test_a_partial_run_still_reports() -> None:
    import argparse

    p = plan(
        argparse.Namespace(quick=False, repeats=None, duration=None, warmup=None, huge_gb=None)
    )
    text, targets = report({"null_e2e": {"1": _agg(1, 45.0, 21)}}, p)
    assert "null model, c=1" in text and targets == []


def test_the_raw_read_is_the_fastest_way_by_median_not_the_luckiest_sample() -> None:
    from bench.report import _fastest_way

    runs = [  # "b" wins one repeat by luck; "a" is faster in the other two
        {"cold_read": {"all": {"a": 2.0, "b": 1.0}}},
        {"cold_read": {"all": {"a": 2.1, "b": 3.0}}},
        {"cold_read": {"all": {"a": 1.9, "b": 2.9}}},
    ]
    way, times = _fastest_way(runs, "cold_read")
    assert way == "a"
    assert (times["min"], times["median"], times["max"]) == (1.9, 2.0, 2.1)


GOLDEN = Path(__file__).parent / "golden"


def _render(saved: Path) -> str:
    """A saved results JSON (what --json writes) as its table, then its targets as JSON."""
    results = json.loads(saved.read_text())
    text, targets = report(results, results["plan"])
    return text + "\n--- targets\n" + json.dumps(targets, indent=1) + "\n"


@pytest.mark.parametrize("run", ["full", "partial"])
def test_a_saved_run_renders_to_the_table_it_rendered_to_before(run: str) -> None:
    # The golden tables were rendered by report() before the benchmark was split into modules.
    rendered = _render(GOLDEN / f"results_{run}.json")
    assert rendered == (GOLDEN / f"report_{run}.txt").read_text()
