"""Overload against the real stack: more clients than one worker with the reference model can
serve, each waiting 2 s for its result. The excess is refused with 429 and a Retry-After, the
admitted jobs finish about within their clients' wait, nothing is lost, and a new request right
after the peak is served at once (benchmark with figures: ``python -m bench.overload``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from harness import Process, Stack, one_worker_stack
from harness.chaos import Row, model_loads
from harness.overload import overload
from tests.conftest import jpeg_bytes


@pytest.fixture
def stack_of_one(tmp_path: Path, reference_model_root: Path) -> Iterator[tuple[Stack, Process, Process]]:
    with one_worker_stack(tmp_path, model_root=reference_model_root, METRICS_ENABLED="false",
                          WORKER_HEARTBEAT_SECONDS="2") as running:
        yield running


@pytest.mark.chaos
def test_the_excess_of_an_overload_is_refused_and_the_admitted_jobs_finish_in_time(
    stack_of_one: tuple[Stack, Process, Process], coffee: Image.Image, chaos_rows: list[Row],
) -> None:
    stack, _, worker = stack_of_one
    result = overload(stack, jpeg_bytes(coffee, quality=90), clients=64, wait_seconds=2,
                      seconds=20, pause_seconds=5)
    outcome = result.outcome
    print(f"overload: {result.row()}; Retry-After {dict(result.retry_after)}", file=sys.stderr)
    chaos_rows.append(Row.of("64 clients ?wait=2 for 20 s at one worker (overload)", outcome,
                             recover_s=result.recovery_seconds,
                             model_reloads=model_loads(worker.output()) - 1))
    assert result.rejected > 0, f"nothing was refused: {outcome.answers}"
    assert result.retry_after and all(int(value) >= 1 for value in result.retry_after), result.retry_after
    assert outcome.accepted > 100 and outcome.lost == 0 and outcome.failed == 0, outcome
    # Before admission by deadline, jobs piled up: the p99 grew to 12.6 s in 30 s of this load.
    # Here the admitted jobs' p99 stays near the clients' 2 s (1.95 s over 60 s in the benchmark);
    # the bound leaves room for a slower CI machine.
    assert outcome.p99_completion_s <= 4.0, outcome
    assert (result.recovery_status, result.recovery_job_status) == (200, "succeeded")
    assert result.recovery_seconds < 5.0
