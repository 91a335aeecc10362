"""The decode budget: bytes in flight, waiting, giving up, and memory given back."""

from __future__ import annotations

import threading
import time

import pytest

from common.membudget import DecodeBudget, DecodeBudgetExceeded, fix_mmap_threshold, release_free_memory


def test_a_reservation_waits_until_the_others_leave_room() -> None:
    budget = DecodeBudget(100)
    first = budget.reserve(60, timeout=0)
    first.__enter__()
    entered = threading.Event()

    def second() -> None:
        with budget.reserve(60, timeout=5):
            entered.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not entered.wait(0.2), "60 + 60 bytes ran within a budget of 100"
    first.__exit__(None, None, None)
    assert entered.wait(5)
    thread.join()
    assert budget.in_flight == 0 and budget.peak == 60


def test_a_reservation_gives_up_when_its_time_is_out() -> None:
    budget = DecodeBudget(100)
    with budget.reserve(100, timeout=0):
        started = time.monotonic()
        with pytest.raises(DecodeBudgetExceeded, match="budget of 100"), budget.reserve(1, timeout=0.1):
            pass
        assert time.monotonic() - started >= 0.1
    assert budget.in_flight == 0


def test_a_decode_larger_than_the_whole_budget_runs_alone() -> None:
    budget = DecodeBudget(100)
    with budget.reserve(10_000, timeout=0):
        assert budget.in_flight == 100


def test_memory_is_given_back_to_the_system_on_glibc() -> None:
    assert release_free_memory() is True
    assert fix_mmap_threshold(128 * 1024) is True
