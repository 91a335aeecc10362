"""The requests of this process that wait for a thread of Gunicorn's pool.

A request that waits for its job (``?wait=N``) holds a thread while it waits. When every thread
waits, the next request — a Kubernetes probe, a new upload — queues behind them for as long as
their waits last (up to ``MAX_WAIT_SECONDS``): the readiness probe fails and the pod is taken out
of the Service, while its threads are only waiting. So Gunicorn's worker
(``recognition_api.gunicorn_worker``) counts the requests it has queued for a thread, and a waiting
request that has waited a while makes way for one of them: its wait ends (202, the job goes on and
the client reads it later) and its thread takes the queued request. Each queued request is made way
for once.
"""

from __future__ import annotations

import threading


class ThreadQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued = 0  # handed to the pool, not yet started on a thread
        self._promised = 0  # of those, how many a waiting request has made way for

    @property
    def queued(self) -> int:
        return self._queued

    def added(self) -> None:
        with self._lock:
            self._queued += 1

    def started(self) -> None:
        with self._lock:
            self._queued = max(0, self._queued - 1)
            self._promised = max(0, self._promised - 1)

    def make_way(self) -> bool:
        """True (once per queued request) when a request waits for a thread that nobody has made
        way for yet: the caller then ends its wait, freeing its thread for it."""
        if not self._queued:  # the common case, without the lock
            return False
        with self._lock:
            if self._queued > self._promised:
                self._promised += 1
                return True
            return False


QUEUE = ThreadQueue()
