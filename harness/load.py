"""Clients that keep posting photos to a stack, and the count of what became of their jobs.

For the fault scenarios: a job is *accepted* when the API answered 200 or 202 with its id;
afterwards each accepted job is *succeeded*, *failed* (ended with an error code) or *lost*
(its record is gone, or it never finished within the time given).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import redis

from common.jobstore import JobStore
from harness.stack import Stack


@dataclass
class Outcome:
    accepted: int
    succeeded: int
    failed: int  # ended with an error code, but for deadline_exceeded
    lost: int
    answers: dict[str, int]
    p99_completion_s: float
    skipped: int = 0  # not computed: its deadline had passed (its client had stopped waiting)
    p50_completion_s: float = 0.0


@dataclass
class Load:
    """``clients`` threads, each posting ``photo`` with ``?wait=`` in a loop until ``stop``."""

    stack: Stack
    photo: bytes
    clients: int = 4
    wait_seconds: float = 5.0
    # How much of a 429's or 503's Retry-After a client waits before it posts again: the fault
    # scenarios come back early (a quarter) to see recovery; a well-behaved app waits it all (1).
    backoff: float = 0.25
    accepted: list[str] = field(default_factory=list)
    answers: Counter = field(default_factory=Counter)
    retry_after: Counter = field(default_factory=Counter)  # the Retry-After values of 429s and 503s
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.wait_seconds + 30)

    def _client(self) -> None:
        with self.stack.client(timeout=self.wait_seconds + 30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"/recognize?wait={self.wait_seconds}",
                                           files={"image": ("photo.jpg", self.photo, "image/jpeg")})
                    answer = str(response.status_code)
                    if response.status_code in (200, 202):
                        with self._lock:
                            self.accepted.append(response.json()["id"])
                    elif response.status_code in (429, 503):
                        with self._lock:
                            self.retry_after[response.headers.get("Retry-After", "none")] += 1
                        time.sleep(float(response.headers.get("Retry-After", "1")) * self.backoff)
                except Exception as exc:  # the API itself away: counted, and tried again
                    answer = type(exc).__name__
                    time.sleep(0.2)
                with self._lock:
                    self.answers[answer] += 1

    def outcome(self, client: redis.Redis, prefix: str, *, within: float) -> Outcome:
        """Wait up to ``within`` seconds for every accepted job to end, then count."""
        jobs = JobStore(client, prefix)
        deadline = time.monotonic() + within
        while True:
            records = [jobs.get(job_id) or {} for job_id in self.accepted]
            if all(r.get("status") in ("succeeded", "failed") for r in records) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        statuses = Counter(r.get("status", "missing") for r in records)
        skipped = sum(1 for r in records if r.get("error_code") == "deadline_exceeded")
        completion = sorted(float(r["finished_at"]) - float(r["created_at"]) for r in records
                            if r.get("status") == "succeeded")
        return Outcome(
            accepted=len(records), succeeded=statuses["succeeded"], failed=statuses["failed"] - skipped,
            lost=len(records) - statuses["succeeded"] - statuses["failed"], answers=dict(self.answers),
            p99_completion_s=_quantile(completion, 0.99), skipped=skipped,
            p50_completion_s=_quantile(completion, 0.5),
        )


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0

