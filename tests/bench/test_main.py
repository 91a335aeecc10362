"""`python -m bench` prints and writes, for the same figures, what it did before it was split into
modules: its measuring steps are stubbed here to return a saved run's figures."""

from __future__ import annotations

import copy
import json
import os
import types
from pathlib import Path

import pytest

import bench.__main__ as entry
import bench.parts as parts

GOLDEN = Path(__file__).parent / "golden"
SAVED = json.loads((GOLDEN / "results_full.json").read_text())
MEASURED_SIDE_BY_SIDE = ("model_only", "backbone_e2e", "batching_off", "null_e2e", "peer", "huge")


def _stub_the_measurements(monkeypatch: pytest.MonkeyPatch, *, peer_fails: bool) -> None:
    def compare(run: parts.Run) -> dict:
        if peer_fails:
            raise RuntimeError("the BentoML peer did not answer in 180 s")
        return copy.deepcopy({k: SAVED[k] for k in MEASURED_SIDE_BY_SIDE})

    ticks = iter([0.0, SAVED["elapsed_s"]])
    now = types.SimpleNamespace(strftime=lambda _format: SAVED["started"])
    monkeypatch.setattr(entry, "check_prerequisites", lambda cli, selected: None)
    monkeypatch.setattr(entry, "machine", lambda: copy.deepcopy(SAVED["machine"]))
    monkeypatch.setattr(entry, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    clock = types.SimpleNamespace(now=lambda tz: now)
    monkeypatch.setattr(entry, "dt", types.SimpleNamespace(datetime=clock, UTC=None))
    monkeypatch.setattr(os, "getloadavg", lambda: tuple(SAVED["machine"]["load_avg_end"]))
    monkeypatch.setattr(parts, "write_images", lambda directory: [])
    monkeypatch.setattr(parts, "prepare_volumes", lambda models: None)
    monkeypatch.setattr(parts, "scenario", lambda *a: copy.deepcopy(SAVED["reference_e2e"]))
    monkeypatch.setattr(parts, "compare", compare)


@pytest.mark.parametrize("mode", ["full", "quick"])
def test_it_prints_and_writes_what_it_did_before_the_split(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # The golden files were captured from the single-module main() with the same figures; in the
    # quick run the side-by-side part fails, so its failure line and exit status are checked too.
    _stub_the_measurements(monkeypatch, peer_fails=mode == "quick")
    written = tmp_path / "results.json"
    argv = ["--only", "2", "--workdir", str(tmp_path / "work"), "--keep", "--json", str(written)]
    rc = entry.main(argv + (["--quick"] if mode == "quick" else []))
    printed = capsys.readouterr().out + f"--- rc {rc}\n"
    assert printed == (GOLDEN / f"stdout_{mode}.txt").read_text()
    assert written.read_text() == (GOLDEN / f"written_{mode}.json").read_text()
