"""The Datadog monitors that mirror the rollout judge (k8s/datadog/canary-judge.json): well-formed
monitor definitions, only metrics and tags the service sends, the judge's thresholds from
config/judge.toml, and placeholders that leave nothing behind once replaced."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest

from tests.deploy.kube import K8S, ROOT

MONITORS_FILE = K8S / "datadog" / "canary-judge.json"
JUDGE = tomllib.loads((ROOT / "config" / "judge.toml").read_text())
FIELDS = ("name", "category", "brand", "color")
# What the service sends through DogStatsD (prefix recognition.): type and tags.
METRICS = {
    "recognition.job.completed": ("count", {"model_version", "queue", "status", "error_code"}),
    "recognition.job.latency": ("distribution", {"model_version", "role"}),
    "recognition.job.field_null": ("count", {"model_version", "field", "role"}),
    **{f"recognition.feedback.{o}": ("count", {"model_version", "field", "source"})
       for o in ("accepted", "changed", "filled", "blank")},
    "recognition.shadow.compared": ("count", {"model_version", "against", "field", "outcome"}),
    "recognition.queue.depth": ("gauge", {"model_version", "queue"}),
    "recognition.workers.ready": ("gauge", {"model_version"}),
}
TERM = re.compile(r"(?P<agg>sum|avg|min|max|p\d+):(?P<metric>recognition\.[\w.]+)\{(?P<scope>[^{}]*)\}"
                  r"(?P<as_count>\.as_count\(\))?")
PLACEHOLDER = re.compile(r"\$\{(?P<name>\w+)(?:\.(?P<key>\w+))?\}")
THRESHOLD = re.compile(r"\s(?P<op>>=|<=|>|<)\s(?P<value>-?\d+(?:\.\d+)?)$")
DATADOG_TEMPLATE_TAGS = re.compile(r"\{\{[#/]?(is_alert|is_recovery|is_warning|is_no_data|value|threshold)"
                                   r"\}\}")


def monitors() -> list[dict[str, Any]]:
    return json.loads(MONITORS_FILE.read_text())


def key(monitor: dict[str, Any]) -> str:
    (value,) = [t.split(":", 1)[1] for t in monitor["tags"] if t.startswith("judge_check:")]
    return value


def checks() -> dict[str, dict[str, Any]]:
    return {key(m): m for m in monitors() if m["type"] == "query alert"}


def verdicts() -> dict[str, dict[str, Any]]:
    return {key(m): m for m in monitors() if m["type"] == "composite"}


def threshold(monitor: dict[str, Any]) -> tuple[str, float]:
    match = THRESHOLD.search(monitor["query"])
    assert match, monitor["query"]
    return match["op"], float(match["value"])


def render(text: str, ids: dict[str, int] | None = None) -> str:
    values = {"candidate": "2", "active": "1", "notify": "@slack-ml-rollouts"}
    return PLACEHOLDER.sub(lambda m: str(ids[m["key"]]) if m["name"] == "monitor_id" and ids
                           else values[m["name"]], text)


def terms(monitor: dict[str, Any]) -> list[re.Match[str]]:
    """The metric terms of a query, versions filled in (candidate 2, active 1)."""
    return list(TERM.finditer(render(monitor["query"])))


# --- shape ----------------------------------------------------------------------------------


def test_every_monitor_has_what_the_monitor_api_requires() -> None:
    found = monitors()
    assert isinstance(found, list) and found
    for m in found:
        assert set(m) == {"name", "type", "query", "message", "tags", "options"}, m.get("name")
        assert m["type"] in ("query alert", "composite")
        assert all(isinstance(m[k], str) and m[k].strip() for k in ("name", "query", "message"))
        assert all(re.fullmatch(r"[a-z_]+:\S+", t) for t in m["tags"]), m["tags"]
        assert {"judge:canary", "candidate:${candidate}", "active:${active}"} <= set(m["tags"])
        assert m["options"]["notify_no_data"] is False and isinstance(m["options"]["include_tags"], bool)
        if m["type"] == "query alert":
            assert isinstance(m["options"]["thresholds"]["critical"], int | float)
            assert m["options"]["require_full_window"] is False  # sparse counts
    assert len({m["name"] for m in found}) == len(found)
    assert len({key(m) for m in found}) == len(found)


def test_the_threshold_in_each_query_is_its_critical_threshold() -> None:
    for m in checks().values():
        assert threshold(m)[1] == m["options"]["thresholds"]["critical"], m["name"]


def test_every_metric_and_tag_is_one_the_service_sends() -> None:
    for m in checks().values():
        found = terms(m)
        assert found and len(found) == m["query"].count("recognition."), m["query"]
        for term in found:
            kind, tags = METRICS[term["metric"]]
            if kind == "count":
                assert term["agg"] == "sum" and term["as_count"], term[0]
            elif kind == "distribution":
                assert term["agg"].startswith("p") and m["query"].startswith("percentile("), term[0]
            used = {re.split(r":| IN ", part, maxsplit=1)[0] for part in term["scope"].split(" AND ")}
            assert used <= tags, f"{term['metric']} has no tag {used - tags}"


def test_every_query_reads_the_judges_window() -> None:
    window = f"(last_{JUDGE['judge']['window']}):"
    for m in checks().values():
        assert m["query"].startswith(("sum" + window, "percentile" + window)), m["query"]


# --- the judge's checks and thresholds --------------------------------------------------------


def test_the_checks_are_the_judges() -> None:
    assert set(checks()) == {
        "error_rate", "latency_p95",
        *(f"null_rate_{f}" for f in FIELDS), *(f"accuracy_{f}" for f in FIELDS),
        *(f"agreement_{f}" for f in JUDGE["agreement"]["min"]),
        "min_jobs_candidate", "min_jobs_active",
        *(f"min_feedback_{f}_{side}" for f in FIELDS for side in ("candidate", "active")),
        *(f"min_compared_{f}" for f in JUDGE["agreement"]["min"]),
    }


def test_the_error_rate_check_is_the_judges() -> None:
    m = checks()["error_rate"]
    assert threshold(m) == (">", JUDGE["error_rate"]["max_increase"])
    for codes in re.findall(r"error_code IN \(([^)]*)\)", m["query"]):
        assert [c.strip() for c in codes.split(",")] == JUDGE["judge"]["error_codes"]
    assert m["query"].count("error_code IN") == 2 and m["query"].count("status:failed") == 2


def test_the_latency_check_is_the_judges() -> None:
    m = checks()["latency_p95"]
    assert threshold(m) == (">", JUDGE["latency_p95"]["slack_ms"])
    ratio = JUDGE["latency_p95"]["max_ratio"]
    assert render(m["query"]) == (f"percentile(last_{JUDGE['judge']['window']}):"
                                  "p95:recognition.job.latency{model_version:2} - "
                                  f"{ratio:g} * p95:recognition.job.latency{{model_version:1}} "
                                  f"> {JUDGE['latency_p95']['slack_ms']}")


@pytest.mark.parametrize("field", FIELDS)
def test_the_null_rate_and_accuracy_checks_are_the_judges(field: str) -> None:
    null, accuracy = checks()[f"null_rate_{field}"], checks()[f"accuracy_{field}"]
    assert threshold(null) == (">", JUDGE["null_rate"]["max_increase"])
    assert threshold(accuracy) == (">", JUDGE["accuracy"]["max_drop"])
    assert all(t["scope"].endswith(f"field:{field}") or t["scope"].endswith("status:succeeded")
               for t in terms(null))
    assert all(t["scope"].endswith(f"field:{field}") for t in terms(accuracy))
    # a drop: the active version's accuracy minus the candidate's
    active, candidate = accuracy["query"].split(") - (")
    assert "${active}" in active and "${candidate}" not in active and "${active}" not in candidate


def test_the_agreement_checks_are_the_judges() -> None:
    for field, least in JUDGE["agreement"]["min"].items():
        m = checks()[f"agreement_{field}"]
        assert threshold(m) == ("<", least)
        assert "outcome IN (same, both_null)" in m["query"] and "against:${active}" in m["query"]


def test_the_volume_gates_are_the_judges() -> None:
    for k, m in checks().items():
        for prefix, least in (("min_jobs_", "min_jobs"), ("min_feedback_", "min_feedback"),
                              ("min_compared_", "min_compared")):
            if k.startswith(prefix):
                assert threshold(m) == ("<", JUDGE["judge"][least]), k
                assert "judge_role:gate" in m["tags"]


def test_each_check_rolls_back_only_past_its_gates() -> None:
    gates = {k for k in checks() if k.startswith("min_")}
    judged = set(checks()) - gates
    assert set(verdicts()) == {f"{k}_verdict" for k in judged}
    for k in judged:
        query = verdicts()[f"{k}_verdict"]["query"]
        field = k.rsplit("_", 1)[-1]
        if k.startswith("agreement_"):
            # Agreement alone never rolls back (models_registry/judge.py): under its floor it holds the
            # decision while either side lacks feedback on the field, and accuracy decides after.
            assert query == (f"${{monitor_id.{k}}} && !${{monitor_id.min_compared_{field}}} && "
                             f"(${{monitor_id.min_feedback_{field}_candidate}} || "
                             f"${{monitor_id.min_feedback_{field}_active}})")
            assert verdicts()[f"{k}_verdict"]["name"].startswith("[canary judge] HOLD ")
            continue
        terms = query.split(" && ")
        assert terms[0] == f"${{monitor_id.{k}}}"
        waits = {t.removeprefix("!${monitor_id.").removesuffix("}") for t in terms[1:]}
        assert all(t.startswith("!") for t in terms[1:]) and waits <= gates
        if k.startswith("accuracy_"):  # judged on enough feedback, whatever the job count
            assert waits == {f"min_feedback_{field}_candidate", f"min_feedback_{field}_active"}
        else:  # the judge waits while either side has too few jobs
            assert waits == {"min_jobs_candidate", "min_jobs_active"}


def test_only_the_verdicts_notify() -> None:
    for m in monitors():
        assert ("${notify}" in m["message"]) == (m["type"] == "composite")
        assert "@" not in m["message"]


# --- placeholders -----------------------------------------------------------------------------


def test_the_placeholders_are_the_documented_ones() -> None:
    text = MONITORS_FILE.read_text()
    names = {m["name"] for m in PLACEHOLDER.finditer(text)}
    assert names == {"candidate", "active", "notify", "monitor_id"}
    ids = {m["key"] for m in PLACEHOLDER.finditer(text) if m["name"] == "monitor_id"}
    assert ids <= set(checks())
    readme = (K8S / "datadog" / "README.md").read_text()
    assert all(f"${{{n}}}" in readme for n in ("candidate", "active", "notify"))
    assert "${monitor_id.<judge_check>}" in readme
    assert "POST /api/v1/monitor" in readme and 'resource "datadog_monitor"' in readme


def test_substituting_the_placeholders_leaves_no_braces() -> None:
    ids = {k: 1000 + i for i, k in enumerate(sorted(checks()))}
    rendered = json.loads(render(MONITORS_FILE.read_text(), ids))
    for m in rendered:
        for text in (m["name"], m["query"], m["message"], *m["tags"]):
            assert "$" not in text, text
        assert not re.search(r"[{}]", m["name"] + "".join(m["tags"]))
        assert not re.search(r"[{}]", TERM.sub("", m["query"])), m["query"]  # only tag scopes are left
        assert not re.search(r"[{}]", DATADOG_TEMPLATE_TAGS.sub("", m["message"])), m["message"]
        assert re.search(r"model_version:[12]\b", m["query"]) or m["type"] == "composite"
    composite = next(m for m in rendered if key(m) == "error_rate_verdict")
    assert composite["query"] == (f"{ids['error_rate']} && !{ids['min_jobs_candidate']} "
                                  f"&& !{ids['min_jobs_active']}")
    assert "candidate:2" in composite["tags"] and composite["message"].endswith("@slack-ml-rollouts")
