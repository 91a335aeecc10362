"""The rollout judge: promote, roll back or wait, from live figures (``common.livestats``).

A candidate version is compared with a baseline (the active version over the same window, or,
for the guard, the figures the previous version had when it was replaced) on error rate, p95
latency, null rate per field, and, where there is enough of it, seller-feedback accuracy per
field. Shadow agreement per field is a tripwire, not a verdict: a field whose agreement with the
active version falls below its floor holds the decision (wait) until feedback shows whether the
candidate is better or worse there. Thresholds come from a small TOML file (``config/judge.toml``, or
``JUDGE_CONFIG``). The verdict is ``promote`` (exit 0) when every check passes, ``rollback``
(exit 1) when any fails, and ``wait`` (exit 2) while a version has too few jobs to tell.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.livestats import FIELDS, Comparison, Figures

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "judge.toml"
EXIT_CODES = {"promote": 0, "rollback": 1, "wait": 2}


def parse_duration(text: str | int | float) -> float:
    """Seconds in "90s", "10m", "1h", "2d" or a bare number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 1h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@dataclass(frozen=True)
class JudgeConfig:
    window_seconds: float = 1800.0
    min_jobs: int = 50
    min_feedback: int = 30
    min_compared: int = 30
    error_codes: tuple[str, ...] = ("inference_failed", "delivery_limit_exceeded", "deadline_exceeded")
    error_max_increase: float = 0.02
    p95_max_ratio: float = 1.5
    p95_slack_ms: float = 50.0
    null_max_increase: float = 0.15
    accuracy_max_drop: float = 0.05
    agreement_min: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> JudgeConfig:
        path = Path(path or os.environ.get("JUDGE_CONFIG") or DEFAULT_CONFIG)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read the judge's config {path}: {exc}") from exc
        judge = data.get("judge", {})
        agreement = data.get("agreement", {}).get("min", {})
        unknown = sorted(set(agreement) - set(FIELDS))
        if unknown:
            raise ValueError(f"{path}: [agreement] min names unknown fields {unknown}; fields are {list(FIELDS)}")
        return cls(
            window_seconds=parse_duration(judge.get("window", "30m")),
            min_jobs=int(judge.get("min_jobs", 50)),
            min_feedback=int(judge.get("min_feedback", 30)),
            min_compared=int(judge.get("min_compared", 30)),
            error_codes=tuple(judge.get("error_codes", cls.error_codes)),
            error_max_increase=float(data.get("error_rate", {}).get("max_increase", 0.02)),
            p95_max_ratio=float(data.get("latency_p95", {}).get("max_ratio", 1.5)),
            p95_slack_ms=float(data.get("latency_p95", {}).get("slack_ms", 50)),
            null_max_increase=float(data.get("null_rate", {}).get("max_increase", 0.15)),
            accuracy_max_drop=float(data.get("accuracy", {}).get("max_drop", 0.05)),
            agreement_min={k: float(v) for k, v in agreement.items()},
        )


@dataclass(frozen=True)
class Check:
    name: str
    field: str
    candidate: float | None
    baseline: float | None
    limit: str
    verdict: str  # "pass", "fail", "wait" (too little data, blocks a decision) or "n/a" (reported only)
    note: str = ""


@dataclass(frozen=True)
class Judgment:
    candidate: str
    against: str
    verdict: str  # "promote", "rollback" or "wait"
    checks: list[Check]

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "fail"]

    def reason(self) -> str:
        """The failed checks in one line (what the history records)."""
        return "; ".join(f"{c.name}{'[' + c.field + ']' if c.field else ''} {_fmt(c.name, c.candidate)} vs "
                         f"{_fmt(c.name, c.baseline)} ({c.limit})" for c in self.failed)

    def table(self) -> str:
        lines = [f"candidate {self.candidate} against {self.against}",
                 f"{'check':14} {'field':9} {'candidate':>10} {'baseline':>10}  {'limit':26} verdict"]
        for c in self.checks:
            lines.append(f"{c.name:14} {c.field or '-':9} {_fmt(c.name, c.candidate):>10} "
                         f"{_fmt(c.name, c.baseline):>10}  {c.limit:26} {c.verdict}"
                         + (f"  ({c.note})" if c.note else ""))
        lines.append(f"verdict: {self.verdict} (exit {self.exit_code})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "against": self.against, "verdict": self.verdict,
                "exit_code": self.exit_code, "checks": [c.__dict__ for c in self.checks]}


def _fmt(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name == "jobs" or name.endswith("count"):
        return f"{value:.0f}"
    if name == "latency_p95":
        return f"{value:.0f} ms"
    return f"{value:.1%}"


def judge(
    candidate: Figures, baseline: Figures, *, config: JudgeConfig, min_jobs: int | None = None,
    comparison: Comparison | None = None,
) -> Judgment:
    """Compare ``candidate`` with ``baseline``; see the module's docstring."""
    need = config.min_jobs if min_jobs is None else min_jobs
    checks: list[Check] = []
    enough = candidate.jobs >= need and baseline.jobs >= need
    checks.append(Check("jobs", "", candidate.jobs, baseline.jobs, f">= {need} each",
                        "pass" if enough else "wait"))

    def compare(name: str, fld: str, c: float | None, b: float | None, limit: str, ok: bool | None) -> None:
        if not enough or c is None or b is None or ok is None:
            checks.append(Check(name, fld, c, b, limit, "wait", "" if enough else "too few jobs"))
        else:
            checks.append(Check(name, fld, c, b, limit, "pass" if ok else "fail"))

    c_err, b_err = candidate.error_rate(config.error_codes), baseline.error_rate(config.error_codes)
    compare("error_rate", "", c_err, b_err, f"<= baseline + {config.error_max_increase:.0%}",
            None if c_err is None or b_err is None else c_err <= b_err + config.error_max_increase)
    c_p95, b_p95 = candidate.p95_ms(), baseline.p95_ms()
    compare("latency_p95", "", c_p95, b_p95, f"<= {config.p95_max_ratio:g}x baseline + {config.p95_slack_ms:g} ms",
            None if c_p95 is None or b_p95 is None
            else c_p95 <= b_p95 * config.p95_max_ratio + config.p95_slack_ms)
    for name in FIELDS:
        c_null, b_null = candidate.null_rate(name), baseline.null_rate(name)
        compare("null_rate", name, c_null, b_null, f"<= baseline + {config.null_max_increase:.0%}",
                None if c_null is None or b_null is None else c_null <= b_null + config.null_max_increase)
    for name in FIELDS:
        c_acc, b_acc = candidate.accuracy(name), baseline.accuracy(name)
        counts = (candidate.feedback_count(name), baseline.feedback_count(name))
        limit = f">= baseline - {config.accuracy_max_drop:.0%}"
        if min(counts) < config.min_feedback:
            checks.append(Check("accuracy", name, c_acc, b_acc, limit, "n/a",
                                f"feedback {counts[0]}/{counts[1]}, need {config.min_feedback} each"))
        else:
            ok = c_acc is not None and b_acc is not None and c_acc >= b_acc - config.accuracy_max_drop
            checks.append(Check("accuracy", name, c_acc, b_acc, limit, "pass" if ok else "fail",
                                f"feedback {counts[0]}/{counts[1]}"))
    if comparison is not None:
        # Disagreeing with the active version is not being wrong (a better model disagrees where
        # the old one erred), so agreement alone never rolls back: a field that disagrees more
        # than its floor waits for sellers' feedback, and where that exists accuracy decides.
        judged_by_accuracy = {c.field for c in checks if c.name == "accuracy" and c.verdict in ("pass", "fail")}
        for name in FIELDS:
            agreement, n = comparison.agreement(name), comparison.compared(name)
            floor = config.agreement_min.get(name)
            if floor is None:
                checks.append(Check("agreement", name, agreement, None, "reported only", "n/a", f"{n} compared"))
            elif n < config.min_compared:
                checks.append(Check("agreement", name, agreement, None, f">= {floor:.0%}", "n/a",
                                    f"{n} compared, need {config.min_compared}"))
            elif agreement is not None and agreement >= floor:
                checks.append(Check("agreement", name, agreement, None, f">= {floor:.0%}", "pass", f"{n} compared"))
            elif name in judged_by_accuracy:
                checks.append(Check("agreement", name, agreement, None, f">= {floor:.0%}", "n/a",
                                    f"{n} compared; below the floor, accuracy decides"))
            else:
                checks.append(Check("agreement", name, agreement, None, f">= {floor:.0%}", "wait",
                                    f"{n} compared; below the floor: waiting for {config.min_feedback} "
                                    "feedback on this field"))
    verdicts = {c.verdict for c in checks}
    verdict = "rollback" if "fail" in verdicts else "wait" if "wait" in verdicts else "promote"
    return Judgment(candidate.version, baseline.version, verdict, checks)
