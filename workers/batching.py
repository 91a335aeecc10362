"""Dynamic batching: many task threads submit, one inference thread runs batches.

A batch closes when it holds ``max_batch`` items or ``max_wait`` has passed since
its first item arrived, whichever comes first. If a batch fails, its items are
retried one at a time so that one bad input fails only its own job.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
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


_STOP = object()


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
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def submit(self, payload: Any) -> Future:
        future: Future = Future()
        self._queue.put(_Item(payload, future, time.perf_counter()))
        return future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = first.submitted + self.max_wait_s
            stopping = False
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._run_batch(batch)
            if stopping:
                return

    def _run_batch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            outputs = self._predict([item.payload for item in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"predict returned {len(outputs)} results for {len(batch)} inputs")
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            logger.warning("batch of %d failed (%s); retrying one by one", len(batch), exc)
            for item in batch:
                self._run_batch([item])
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        if self._on_batch:
            self._on_batch(len(batch), elapsed_ms)
        for item, output in zip(batch, outputs, strict=True):
            item.future.set_result(
                BatchOutcome(output, len(batch), (started - item.submitted) * 1000, elapsed_ms)
            )
