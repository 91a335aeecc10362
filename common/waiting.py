"""Waiting for jobs without a Redis connection per waiting request.

Each API process keeps one subscription, on a channel of its own, and puts that
channel in the records of the jobs it creates (field ``notify``); the finish
script publishes the job id there besides the job's own ``done:<id>`` channel.
The listener thread wakes the request threads waiting for those jobs.

A waiter re-reads the record whenever it is woken; pub/sub delivers at most once,
so the listener wakes every waiter after each (re)subscription, and waiters also
re-read the record every ``recheck_seconds`` — a notification lost to a broken
connection, or a job finished by a worker that predates this channel, then costs
at most that long instead of the whole wait.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import redis

logger = logging.getLogger(__name__)


class FinishListener:
    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        *,
        recheck_seconds: float = 1.0,
        reconnect_seconds: float = 0.5,
    ) -> None:
        self.client = client
        self.channel = channel
        self.recheck_seconds = recheck_seconds
        self.reconnect_seconds = reconnect_seconds
        self.pid = os.getpid()
        self._waiters: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finish-listener", daemon=True)

    @classmethod
    def for_process(cls, client: redis.Redis, prefix: str, **kwargs: float) -> FinishListener:
        channel = f"{prefix}notify:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        return cls(client, channel, **kwargs)

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def start(self, ready_timeout: float = 0.0) -> FinishListener:
        self._thread.start()
        if ready_timeout > 0:
            self._subscribed.wait(ready_timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with suppress(redis.RedisError):
            self.client.publish(self.channel, "")  # ends the listener's blocking read now
        self._thread.join(timeout)

    @contextmanager
    def registered(self, job_id: str) -> Iterator[threading.Event]:
        event = threading.Event()
        with self._lock:
            self._waiters[job_id] = event
        try:
            yield event
        finally:
            with self._lock:
                self._waiters.pop(job_id, None)

    def wait(
        self,
        event: threading.Event,
        read: Callable[[], dict[str, str] | None],
        is_done: Callable[[dict[str, str]], bool],
        timeout: float,
        *,
        read_first: bool = True,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, str] | None:
        """Read the record until it is done or ``timeout`` has passed; sleep between reads
        until woken (or for ``recheck_seconds``). ``read_first=False``: the caller registered
        ``event`` before the job existed, so a job not yet read cannot have finished unseen:
        the first read waits for the wake-up (a job is never done the moment it is created, and
        that read was one Redis round trip per waiting request for nothing). ``stop``: asked
        after each read; true ends the wait early, with the record as it is."""
        deadline = time.monotonic() + timeout
        if not read_first:
            event.wait(min(timeout, self.recheck_seconds))
        while True:
            event.clear()  # before the read: a wake-up after it is never lost
            record = read()
            remaining = deadline - time.monotonic()
            if record is None or is_done(record) or remaining <= 0 or (stop is not None and stop()):
                return record
            event.wait(min(remaining, self.recheck_seconds))

    def _wake_all(self) -> None:
        with self._lock:
            events = list(self._waiters.values())
        for event in events:
            event.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._subscribed.set()
                        self._wake_all()  # anything finished while we were not listening
                    elif message["type"] == "message":
                        job_id = message["data"]
                        job_id = job_id.decode() if isinstance(job_id, bytes) else str(job_id)
                        with self._lock:
                            event = self._waiters.get(job_id)
                        if event is not None:
                            event.set()
            except redis.RedisError as exc:
                if self._subscribed.is_set():
                    logger.warning("finish listener lost Redis (%s); reconnecting", exc)
                self._subscribed.clear()
                self._wake_all()
                self._stopping.wait(self.reconnect_seconds)
            finally:
                with suppress(Exception):  # closing a broken connection
                    pubsub.close()
        self._subscribed.clear()
