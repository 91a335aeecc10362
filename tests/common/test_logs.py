"""The logging filters that keep a local stack quiet without hiding what matters."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from common.logs import QuietReadiness, Throttle


def record(msg: str = "Error submitting packet", created: float = 0.0, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("datadog.dogstatsd", logging.WARNING, __file__, 1, msg, None, None)
    rec.created = created
    rec.__dict__.update(extra)
    return rec


def test_a_repeated_warning_is_logged_once_then_once_per_period_with_a_count() -> None:
    throttle = Throttle(seconds=600)
    passed = [throttle.filter(r) for r in (record(created=t) for t in (0, 5, 10, 599))]
    assert passed == [True, False, False, False]
    later = record(created=601)
    assert throttle.filter(later)
    assert "3 like it in the last 600 s not logged" in later.getMessage()


def test_only_the_readiness_503_is_dropped() -> None:
    quiet = QuietReadiness()
    assert not quiet.filter(record(status_code=503, request=SimpleNamespace(path="/readyz")))
    assert quiet.filter(record(status_code=500, request=SimpleNamespace(path="/readyz")))
    assert quiet.filter(record(status_code=503, request=SimpleNamespace(path="/v1/recognize")))
    assert quiet.filter(record())
