"""Overload: many clients posting ``?wait=N`` at once, more than the workers can compute, then a
new request some seconds after they stopped. What the API admitted and refused, how long the
admitted jobs took, and how soon a new request is served again.

Shared by the integration test (``tests/integration/test_overload.py``) and the benchmark
(``python -m bench.overload``), which runs it longer and prints the table.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from harness.load import Load, Outcome
from harness.stack import Stack


@dataclass
class Overload:
    clients: int
    wait_seconds: float
    seconds: float
    outcome: Outcome
    retry_after: Counter = field(default_factory=Counter)  # values of Retry-After on 429s and 503s
    recovery_status: int = 0
    recovery_job_status: str = ""
    recovery_seconds: float = 0.0  # the new request's answer time
    pause_seconds: float = 0.0  # between the load's end and the new request

    @property
    def offered(self) -> int:
        return sum(self.outcome.answers.values())

    @property
    def rejected(self) -> int:
        return self.outcome.answers.get("429", 0)

    def row(self) -> dict[str, object]:
        return {"offered load": f"{self.clients} clients x ?wait={self.wait_seconds:g} for {self.seconds:g} s",
                "requests": self.offered, "accepted": self.outcome.accepted, "429": self.rejected,
                "other": self.offered - self.outcome.accepted - self.rejected,
                "accepted p50 s": round(self.outcome.p50_completion_s, 2),
                "accepted p99 s": round(self.outcome.p99_completion_s, 2),
                "succeeded": self.outcome.succeeded, "skipped (deadline)": self.outcome.skipped,
                "lost": self.outcome.lost,
                f"new request {self.pause_seconds:g} s after": f"{self.recovery_status} {self.recovery_job_status} "
                                                                 f"in {self.recovery_seconds:.2f} s"}


def overload(stack: Stack, photo: bytes, *, clients: int = 64, wait_seconds: float = 2.0, seconds: float = 60.0,
             pause_seconds: float = 10.0, backoff: float = 1.0, warm_up_seconds: float = 5.0) -> Overload:
    """``clients`` well-behaved clients (each waits a refusal's whole Retry-After, ``backoff``=1), on
    a stack that has been serving: ``warm_up_seconds`` of 4 clients first (not counted), so that the
    workers' completion rate is known, as it is in production. (Right after a cold start there is
    no estimate yet, and a burst is admitted until there is.)"""
    if warm_up_seconds > 0:
        warm_up = Load(stack, photo, clients=4, wait_seconds=wait_seconds, backoff=backoff).start()
        time.sleep(warm_up_seconds)
        warm_up.stop()
    load = Load(stack, photo, clients=clients, wait_seconds=wait_seconds, backoff=backoff)
    load.start()
    time.sleep(seconds)
    load.stop()
    stopped = time.monotonic()
    time.sleep(max(0.0, pause_seconds - (time.monotonic() - stopped)))
    with stack.client(timeout=30) as client:
        started = time.perf_counter()
        response = client.post(f"/recognize?wait={max(wait_seconds, 5.0):g}",
                               files={"image": ("photo.jpg", photo, "image/jpeg")})
        recovery = time.perf_counter() - started
    body = response.json()
    outcome = load.outcome(stack.redis(), stack.env["REDIS_KEY_PREFIX"], within=120)
    return Overload(clients, wait_seconds, seconds, outcome, retry_after=load.retry_after,
                    recovery_status=response.status_code,
                    recovery_job_status=body.get("status") or (body.get("error") or {}).get("code", ""),
                    recovery_seconds=recovery, pause_seconds=pause_seconds)
