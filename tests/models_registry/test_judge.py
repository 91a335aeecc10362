"""The rollout judge's verdicts on figures made by hand, and its config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.livestats import Comparison, Figures, latency_bucket
from models_registry.judge import DEFAULT_CONFIG, JudgeConfig, judge, parse_duration

CONFIG = JudgeConfig(min_jobs=50, min_feedback=30, min_compared=30, agreement_min={"category": 0.5})


def figures(version: str, *, jobs: int = 100, failed: int = 0, ms: float = 100.0, blank_brand: float = 0.5,
            accepted: int = 0, changed: int = 0) -> Figures:
    succeeded = jobs - failed
    return Figures(version=version, jobs=jobs, failed=failed, errors={"inference_failed": failed} if failed else {},
                   nulls={"brand": round(succeeded * blank_brand)}, latency={latency_bucket(ms): succeeded},
                   feedback={"category": {"accepted": accepted, "changed": changed}})


def verdict_of(candidate: Figures, baseline: Figures, **kwargs) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    judgment = judge(candidate, baseline, config=CONFIG, **kwargs)
    return judgment.verdict, [f"{c.name}:{c.field}" for c in judgment.failed]


def test_a_candidate_as_good_as_the_active_version_is_promoted() -> None:
    judgment = judge(figures("2"), figures("1"), config=CONFIG)
    assert (judgment.verdict, judgment.exit_code) == ("promote", 0)
    assert "verdict: promote (exit 0)" in judgment.table()


def test_too_few_jobs_on_either_side_means_wait() -> None:
    assert verdict_of(figures("2", jobs=49), figures("1")) == ("wait", [])
    assert verdict_of(figures("2"), figures("1", jobs=10)) == ("wait", [])
    assert judge(figures("2", jobs=10), figures("1"), config=CONFIG, min_jobs=10).verdict == "promote"


def test_more_errors_slower_answers_or_more_blanks_roll_back() -> None:
    assert verdict_of(figures("2", failed=5), figures("1", failed=1)) == ("rollback", ["error_rate:"])
    assert verdict_of(figures("2", failed=2), figures("1", failed=1)) == ("promote", [])
    assert verdict_of(figures("2", ms=400), figures("1", ms=100)) == ("rollback", ["latency_p95:"])
    assert verdict_of(figures("2", ms=150), figures("1", ms=100)) == ("promote", [])
    assert verdict_of(figures("2", blank_brand=0.8), figures("1")) == ("rollback", ["null_rate:brand"])


def test_accuracy_counts_only_with_enough_feedback_on_both_sides() -> None:
    worse = figures("2", accepted=10, changed=30)
    assert verdict_of(worse, figures("1", accepted=30, changed=10)) == ("rollback", ["accuracy:category"])
    few = judge(figures("2", accepted=2, changed=8), figures("1", accepted=30, changed=10), config=CONFIG)
    assert few.verdict == "promote"
    assert [c.verdict for c in few.checks if c.name == "accuracy" and c.field == "category"] == ["n/a"]


def test_a_collapse_of_shadow_agreement_waits_for_feedback_which_then_decides() -> None:
    collapse = Comparison("2", "1", n=100, outcomes={"category": {"same": 10, "differ": 90}})
    waiting = judge(figures("2"), figures("1"), config=CONFIG, comparison=collapse)
    assert waiting.verdict == "wait"
    assert [c.verdict for c in waiting.checks if c.name == "agreement" and c.field == "category"] == ["wait"]
    # A candidate that disagrees because it is better is promoted; one that is worse rolls back.
    better = judge(figures("2", accepted=35, changed=5), figures("1", accepted=20, changed=20), config=CONFIG,
                   comparison=collapse)
    assert better.verdict == "promote"
    worse = judge(figures("2", accepted=5, changed=35), figures("1", accepted=20, changed=20), config=CONFIG,
                  comparison=collapse)
    assert worse.verdict == "rollback" and worse.reason().startswith("accuracy[category]")
    fine = Comparison("2", "1", n=40, outcomes={"category": {"same": 30, "differ": 10}})
    assert judge(figures("2"), figures("1"), config=CONFIG, comparison=fine).verdict == "promote"


def test_the_repository_s_config_file_loads_and_durations_parse(tmp_path: Path) -> None:
    config = JudgeConfig.load(DEFAULT_CONFIG)
    assert config.window_seconds == 1800 and config.min_jobs > 0 and config.agreement_min
    assert [parse_duration(x) for x in ("90s", "10m", "1h", "2d", "45", 7)] == [90, 600, 3600, 172800, 45, 7]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("ten minutes")
    bad = tmp_path / "judge.toml"
    bad.write_text("[agreement]\nmin = { colour = 0.5 }\n")
    with pytest.raises(ValueError, match="unknown fields"):
        JudgeConfig.load(bad)
