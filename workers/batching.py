"""Dynamic batching: many task threads submit, one inference thread runs batches.

A batch closes when it holds ``max_batch`` items, or when ``max_wait`` has passed
since its first item arrived, or as soon as no more items are on their way. Task
threads announce an item when they start working on its job (``arrival()``), so
the inference thread knows whether waiting can fill the batch: a lone request on
an idle worker runs at once instead of paying ``max_wait``, while under load the
batch waits (at most ``max_wait``) for the images still being decoded.

If a batch fails, its items are retried one at a time so that one bad input
fails only its own job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutcome:
    output: Any
    batch_size: int
    batch_wait_ms: float  # from submit until the batch started
    inference_ms: float


@dataclass
class _Item:
    payload: Any
    future: Future
    submitted: float


class Arrival:
    """One announced item: submit it once, or leave the ``with`` block without it."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self.submitted = False

    def submit(self, payload: Any) -> Future:
        if self.submitted:
            raise RuntimeError("this arrival was already submitted")
        self.submitted = True
        return self._batcher._enqueue(payload, announced=True)


class Batcher:
    def __init__(
        self,
        predict: Callable[[list[Any]], list[Any]],
        *,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._items: deque[_Item] = deque()
        self._incoming = 0  # announced items not yet submitted
        self._stopping = False
        self._predict_started: float | None = None  # while a batch is in the model
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Run what was submitted, then end the inference thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    @contextmanager
    def arrival(self) -> Iterator[Arrival]:
        """Announce an item that this thread will submit soon (after decoding it, say)."""
        with self._cond:
            self._incoming += 1
        arrival = Arrival(self)
        try:
            yield arrival
        finally:
            if not arrival.submitted:
                with self._cond:
                    self._incoming -= 1
                    # The batch being formed may have been waiting for this one.
                    self._cond.notify_all()

    def submit(self, payload: Any) -> Future:
        """Submit an item that was not announced."""
        return self._enqueue(payload, announced=False)

    def _enqueue(self, payload: Any, *, announced: bool) -> Future:
        future: Future = Future()
        with self._cond:
            if announced:
                self._incoming -= 1
            self._items.append(_Item(payload, future, time.perf_counter()))
            self._cond.notify_all()
        return future

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._items:
                if self._stopping:
                    return None
                self._cond.wait()
            batch = [self._items.popleft()]
            deadline = batch[0].submitted + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._items:
                    batch.append(self._items.popleft())
                    continue
                remaining = deadline - time.perf_counter()
                if self._incoming <= 0 or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run_batch(batch)

    def predicting_for(self) -> float:
        """Seconds the batch now in the model has been there; 0 when the model is idle."""
        started = self._predict_started
        return 0.0 if started is None else time.perf_counter() - started

    def _run_batch(self, batch: list[_Item]) -> None:
        started = self._predict_started = time.perf_counter()
        try:
            outputs = self._predict([item.payload for item in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"predict returned {len(outputs)} results for {len(batch)} inputs")
        except Exception as exc:
            self._predict_started = None
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            logger.warning("batch of %d failed (%s); retrying one by one", len(batch), exc)
            for item in batch:
                self._run_batch([item])
            return
        self._predict_started = None
        elapsed_ms = (time.perf_counter() - started) * 1000
        if self._on_batch:
            self._on_batch(len(batch), elapsed_ms)
        for item, output in zip(batch, outputs, strict=True):
            item.future.set_result(
                BatchOutcome(output, len(batch), (started - item.submitted) * 1000, elapsed_ms)
            )
