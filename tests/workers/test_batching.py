"""The batcher: batches form by size or time, and one bad input fails alone."""

from __future__ import annotations

import threading
import time

import pytest

from workers.batching import Batcher


def double(batch: list[int]) -> list[int]:
    if any(x < 0 for x in batch):
        raise ValueError("negative input")
    return [2 * x for x in batch]


@pytest.fixture
def sizes() -> list[int]:
    return []


def make(sizes: list[int], max_batch: int = 4, max_wait_s: float = 0.05) -> Batcher:
    batcher = Batcher(double, max_batch=max_batch, max_wait_s=max_wait_s,
                      on_batch=lambda n, _ms: sizes.append(n))
    batcher.start()
    return batcher


def test_it_batches_up_to_the_maximum_size(sizes: list[int]) -> None:
    gate = threading.Event()

    def slow_double(batch: list[int]) -> list[int]:
        gate.wait(5)
        return double(batch)

    batcher = Batcher(slow_double, max_batch=4, max_wait_s=1.0, on_batch=lambda n, _: sizes.append(n))
    batcher.start()
    first = batcher.submit(0)  # occupies the inference thread while the rest queue up
    time.sleep(0.05)
    gate.set()
    futures = [batcher.submit(i) for i in range(1, 10)]
    assert [f.result(5).output for f in [first, *futures]] == [2 * i for i in range(10)]
    batcher.stop(5)
    assert max(sizes) == 4
    assert sum(sizes) == 10


def test_a_lone_item_waits_at_most_the_maximum_wait(sizes: list[int]) -> None:
    batcher = make(sizes, max_batch=64, max_wait_s=0.05)
    started = time.perf_counter()
    outcome = batcher.submit(21).result(5)
    assert outcome.output == 42 and outcome.batch_size == 1
    assert time.perf_counter() - started < 2
    batcher.stop(5)


def test_batched_results_equal_one_by_one_results(sizes: list[int]) -> None:
    batcher = make(sizes, max_batch=8, max_wait_s=0.2)
    futures = [batcher.submit(i) for i in range(8)]
    together = [f.result(5).output for f in futures]
    alone = [batcher.submit(i).result(5).output for i in range(8)]
    assert together == alone
    batcher.stop(5)


def test_a_bad_input_fails_only_its_own_future(sizes: list[int]) -> None:
    batcher = make(sizes, max_batch=8, max_wait_s=0.2)
    futures = [batcher.submit(x) for x in (1, -1, 3)]
    assert futures[0].result(5).output == 2
    with pytest.raises(ValueError, match="negative"):
        futures[1].result(5)
    assert futures[2].result(5).output == 6
    batcher.stop(5)


def test_a_predict_returning_the_wrong_count_is_an_error() -> None:
    batcher = Batcher(lambda batch: [], max_batch=2, max_wait_s=0.01)
    batcher.start()
    with pytest.raises(RuntimeError, match="0 results for 1 inputs"):
        batcher.submit(1).result(5)
    batcher.stop(5)
