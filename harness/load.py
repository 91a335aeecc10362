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
    failed: int
    lost: int
    answers: dict[str, int]
    p99_completion_s: float


@dataclass
class Load:
    """``clients`` threads, each posting ``photo`` with ``?wait=`` in a loop until ``stop``."""

    stack: Stack
    photo: bytes
    clients: int = 4
    wait_seconds: float = 5.0
    accepted: list[str] = field(default_factory=list)
    answers: Counter = field(default_factory=Counter)
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
                        time.sleep(float(response.headers.get("Retry-After", "1")) / 4)
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
        completion = sorted(float(r["finished_at"]) - float(r["created_at"]) for r in records if r.get("finished_at"))
        p99 = completion[min(len(completion) - 1, int(len(completion) * 0.99))] if completion else 0.0
        return Outcome(
            accepted=len(records), succeeded=statuses["succeeded"], failed=statuses["failed"],
            lost=len(records) - statuses["succeeded"] - statuses["failed"], answers=dict(self.answers),
            p99_completion_s=p99,
        )

