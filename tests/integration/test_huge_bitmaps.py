"""Small files that decode to huge bitmaps: 16 concurrent uploads of a solid 7000x7000 PNG (156 KiB,
140 MiB of pixels each) against the real stack. The API checks them without decoding their pixels; the
worker decodes them within its decode budget and gives the memory back afterwards
(benchmark with figures: ``python -m bench.memory``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Process, Stack, one_worker_stack
from harness.memory import bitmap_burst

MB = 1024 * 1024
BUDGET = 1024 * MB


@pytest.fixture
def budget_stack(tmp_path: Path, reference_model_root: Path) -> Iterator[tuple[Stack, Process, Process]]:
    with one_worker_stack(tmp_path, model_root=reference_model_root, METRICS_ENABLED="false",
                          DECODE_BUDGET_BYTES=str(BUDGET)) as running:
        yield running


@pytest.mark.chaos
def test_huge_bitmaps_cost_the_api_nothing_and_the_worker_only_its_budget_for_a_while(
    budget_stack: tuple[Stack, Process, Process],
) -> None:
    stack, api, worker = budget_stack
    burst = bitmap_burst(stack, api, worker, uploads=16, side=7000)
    print(f"huge bitmaps: api {burst.api_before / MB:.0f} -> peak {burst.api_peak / MB:.0f} MiB; worker "
          f"{burst.worker_before / MB:.0f} -> peak {burst.worker_peak / MB:.0f} -> {burst.worker_after / MB:.0f} MiB",
          file=sys.stderr)
    assert burst.answers == {"200 succeeded": 16}, burst.answers
    # Before: the API decoded every PNG to check it, +2.3 GB for this burst (its pod's limit is 1.5 GiB).
    assert burst.api_growth <= 300 * MB, burst
    # The worker decodes about BUDGET at a time (the estimate is pixels x channels x 2), and then
    # gives it back: before, it kept 4.5 GB of the 5.5 GB it had grown by.
    assert burst.worker_peak - burst.worker_before <= 2 * BUDGET, burst
    assert burst.worker_left <= 1.10, burst
