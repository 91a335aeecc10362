"""The fault scenarios' table: what each scenario cost, one row each.

The scenario tests (``pytest -m chaos``, or ``scripts/chaos``) add a row each; the table is
printed at the end of the run and written to ``var/chaos.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.load import Outcome

COLUMNS = ("scenario", "accepted", "lost", "failed", "skipped", "p99 job s", "recover s", "model reloads")


@dataclass(frozen=True)
class Row:
    scenario: str
    accepted: int
    lost: int
    failed: int
    skipped: int  # past their deadline, not computed (their clients had stopped waiting)
    p99_completion_s: float
    recover_s: float
    model_reloads: int

    @classmethod
    def of(cls, scenario: str, outcome: Outcome, *, recover_s: float, model_reloads: int) -> Row:
        return cls(scenario, outcome.accepted, outcome.lost, outcome.failed, outcome.skipped,
                   round(outcome.p99_completion_s, 2), round(recover_s, 2), model_reloads)

    def cells(self) -> list[str]:
        return [self.scenario, str(self.accepted), str(self.lost), str(self.failed), str(self.skipped),
                f"{self.p99_completion_s:.2f}", f"{self.recover_s:.2f}", str(self.model_reloads)]


def model_loads(log: str) -> int:
    """How often a worker's log says it loaded its model."""
    return log.count('"message": "model loaded"')


def table(rows: list[Row]) -> str:
    cells = [list(COLUMNS), *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def save(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(row) for row in rows], indent=1))
