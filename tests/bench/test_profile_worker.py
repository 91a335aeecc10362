"""The worker profiler's attribution of py-spy samples to steps (the profiler itself runs a real
worker: `python -m bench.profile_worker`, not a test)."""

from __future__ import annotations

from bench.profile_worker import parse_raw


def test_each_sample_counts_for_the_innermost_step_it_is_in() -> None:
    raw = "\n".join([
        "thread (0x1);run (celery/worker/strategy.py:10);recognize (workers/tasks.py:30);"
        "claim (/app/common/jobstore.py:500);execute (redis/client.py:1) 3",
        "thread (0x1);recognize (workers/tasks.py:30);decode_rgb (/app/common/imaging.py:220);"
        "load (PIL/ImageFile.py:300) 5",
        "thread (0x1);recognize (workers/tasks.py:30);info (/usr/lib/python3.11/logging/__init__.py:1) 2",
        "thread (0x2);_brpop_read (kombu/transport/redis.py:1500) 4",
        "thread (0x3);something (elsewhere.py:1) 1",
        "not a sample line",
    ])
    assert parse_raw(raw) == {
        "claim script": 3,
        "decode": 5,
        "logging (JSON lines)": 2,
        "Celery: message in (BRPOP, QoS, unacked store)": 4,
        "other": 1,
    }
