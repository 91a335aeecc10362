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


def test_a_lone_item_on_an_idle_batcher_runs_without_waiting(sizes: list[int]) -> None:
    # max_wait is far beyond the test's patience: only the "nothing else is coming" rule
    # can let this item through in time.
    batcher = make(sizes, max_batch=16, max_wait_s=30)
    with batcher.arrival() as arrival:
        future = arrival.submit(21)
    outcome = future.result(5)
    assert outcome.output == 42 and outcome.batch_size == 1
    assert outcome.batch_wait_ms < 5000
    batcher.stop(5)


def test_a_batch_waits_for_announced_items_and_takes_them() -> None:
    sizes: list[int] = []
    batcher = make(sizes, max_batch=8, max_wait_s=30)
    release = threading.Event()
    results: list[int] = []

    def slow_task() -> None:  # announced at once, submitted only when released
        with batcher.arrival() as arrival:
            release.wait(5)
            results.append(arrival.submit(5).result(5).output)

    thread = threading.Thread(target=slow_task)
    with batcher.arrival() as arrival:
        thread.start()
        time.sleep(0.05)  # the slow task has announced itself
        first = arrival.submit(1)
    time.sleep(0.1)
    assert not first.done(), "the batch must wait for the announced item"
    release.set()
    thread.join(5)
    assert first.result(5).output == 2 and first.result(5).batch_size == 2
    assert results == [10]
    assert sizes == [2]
    batcher.stop(5)


def test_an_announced_item_that_never_comes_releases_the_batch(sizes: list[int]) -> None:
    batcher = make(sizes, max_batch=8, max_wait_s=30)
    gave_up = threading.Event()

    def failing_task() -> None:
        with batcher.arrival():
            gave_up.wait(5)  # e.g. its image failed to decode: nothing is submitted

    thread = threading.Thread(target=failing_task)
    thread.start()
    time.sleep(0.05)
    future = batcher.submit(3)
    time.sleep(0.1)
    assert not future.done()
    gave_up.set()
    thread.join(5)
    assert future.result(5).output == 6 and future.result(5).batch_size == 1
    batcher.stop(5)


def test_an_announced_batch_still_closes_at_the_maximum_wait(sizes: list[int]) -> None:
    batcher = make(sizes, max_batch=8, max_wait_s=0.05)
    never = threading.Event()
    thread = threading.Thread(target=lambda: _announce_until(batcher, never))
    thread.start()
    time.sleep(0.05)
    outcome = batcher.submit(4).result(5)  # would wait forever without the deadline
    assert outcome.output == 8 and outcome.batch_size == 1
    never.set()
    thread.join(5)
    batcher.stop(5)


def _announce_until(batcher: Batcher, event: threading.Event) -> None:
    with batcher.arrival():
        event.wait(5)


def test_an_arrival_submits_once(sizes: list[int]) -> None:
    batcher = make(sizes)
    with batcher.arrival() as arrival:
        arrival.submit(1).result(5)
        with pytest.raises(RuntimeError, match="already submitted"):
            arrival.submit(2)
    batcher.stop(5)
