"""The requests of this process that wait for a thread of Gunicorn's pool.

A request that waits for its job (``?wait=N``) holds a thread while it waits. When every thread
waits, the next request — a Kubernetes probe, a new upload — queues behind them for as long as
their waits last (up to ``MAX_WAIT_SECONDS``): the readiness probe fails and the pod is taken out
of the Service, while its threads are only waiting. So Gunicorn's worker
(``recognition_api.gunicorn_worker``) tells this module what it hands to its pool, when a thread
starts on it and when it is done; a waiting request that has waited a while makes way for a queued
request when every thread is busy: its wait ends (202, the job goes on and the client reads it
later) and its thread takes the queued request.

Only a queued connection with bytes to read counts as a request: a connection opened without a
request yet, or a kept-alive one that became readable because its client closed it, makes nobody
give up a wait. Each queued request is made way for once (a thread that frees up on its own may
take it first; that costs at most one wait cut for nothing).
"""

from __future__ import annotations

import select
import threading

_NOT_A_REQUEST = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


class ThreadQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.threads = 0  # the pool's size; 0 (not under Gunicorn's worker): never make way
        self._busy = 0  # threads working on a connection (a waiting request's among them)
        self._queued: dict[int, int] = {}  # handed to the pool, not yet started: key -> socket fd
        self._promised = 0  # queued requests a waiting request has made way for

    @property
    def queued(self) -> int:
        return len(self._queued)

    def added(self, key: int, fd: int) -> None:
        with self._lock:
            self._queued[key] = fd

    def started(self, key: int) -> None:
        with self._lock:
            self._queued.pop(key, None)
            self._promised = max(0, min(self._promised - 1, len(self._queued)))
            self._busy += 1

    def finished(self) -> None:
        with self._lock:
            self._busy = max(0, self._busy - 1)

    def make_way(self) -> bool:
        """True (once per queued request) when every thread is busy and a queued connection holds a
        request that nobody has made way for yet: the caller then ends its wait, freeing its thread."""
        if not self.threads or self._busy < self.threads or not self._queued:  # the common case, unlocked
            return False
        with self._lock:
            if self._busy < self.threads or _requests(self._queued.values()) <= self._promised:
                return False
            self._promised += 1
            return True


def _requests(fds: object) -> int:
    """How many of these sockets have bytes to read that are not only the end of the stream."""
    poller = select.poll()
    for fd in fds:  # type: ignore[attr-defined]
        poller.register(fd, select.POLLIN | select.POLLRDHUP)
    return sum(1 for _, events in poller.poll(0) if events & select.POLLIN and not events & _NOT_A_REQUEST)


QUEUE = ThreadQueue()
