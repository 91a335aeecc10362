"""KEDA scales each color's workers on two triggers of its version (k8s/workers/base/scaling.yaml):
the backlog (its Redis list, through the Sentinel setup of k8s/redis.yaml) and the load (its
completion rate in Datadog). Every rendered ScaledObject and TriggerAuthentication is valid against
KEDA's own schema (the models cloudcoil-models-keda generates from KEDA's CRDs; strict: a field the
schema does not know fails), each trigger's metadata holds only the parameters its scaler reads, and
the workers scale up early and down slowly."""

from __future__ import annotations

import re
from typing import Any

import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication

from common.metrics import version_tags
from common.queues import queue_for
from common.redisconn import RedisTarget
from tests.deploy.kube import K8S, container, find, one, rendered

COLORS = ("blue", "green")
# A 15 GB model takes about 10 minutes to load (the startup probe allows 30).
MODEL_LOAD_SECONDS = 600
# The trigger metadata each scaler of KEDA 2.16 reads (its documentation's parameter lists;
# pkg/scalers/redis_scaler.go, datadog_scaler.go). The schema types metadata as a map of strings,
# so a misspelt parameter (`timeWindowInSeconds` for `timeWindowOffset`) passes it, and KEDA
# ignores it.
SCALER_PARAMETERS = {
    "redis-sentinel": {"addresses", "hosts", "ports", "addressesFromEnv", "hostsFromEnv", "portsFromEnv",
                       "usernameFromEnv", "passwordFromEnv", "sentinelUsernameFromEnv",
                       "sentinelPasswordFromEnv", "sentinelMaster", "sentinelMasterFromEnv", "databaseIndex",
                       "listName", "listLength", "activationListLength", "enableTLS", "unsafeSsl"},
    "datadog": {"query", "queryValue", "activationQueryValue", "queryAggregator", "age", "timeWindowOffset",
                "lastAvailablePointOffset", "metricUnavailableValue", "type",
                # with the Datadog Cluster Agent as proxy instead of the REST API
                "useClusterAgentProxy", "datadogMetricName", "datadogMetricNamespace", "targetValue",
                "activationTargetValue"},
}
# What the workers send per finished job (common/metrics.py): a count, by version, queue, status.
COMPLETED = "recognition.job.completed"
COMPLETED_TAGS = {"model_version", "queue", "status", "error_code"}
DATADOG_QUERY = re.compile(
    r"sum:(?P<metric>[\w.]+)\{(?P<scope>[^{}]*)\}\.as_rate\(\)\.rollup\(sum, ?(?P<rollup>\d+)\)")


def keda_objects(color: str, version: str = "7") -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The color's ScaledObject, and its TriggerAuthentications by name."""
    docs = rendered(K8S / "workers" / color, modelVersion=version)
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    return one(docs, "ScaledObject"), auths


def trigger(scaled: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [t for t in scaled["spec"]["triggers"] if t["type"] == kind]
    return found


def strictly(model: Any, doc: dict[str, Any]) -> None:
    """Validate DOC with KEDA's model, and fail on anything the model dropped or coerced: the
    models ignore unknown fields and coerce "15" to 15, where KEDA's CRD would not."""
    parsed = model.model_validate(doc)
    assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc


@pytest.mark.parametrize("version", ["1", "2024.06.1"])
@pytest.mark.parametrize("color", COLORS)
def test_every_rendered_scaledobject_and_triggerauthentication_is_valid_for_keda(color: str,
                                                                                   version: str) -> None:
    scaled, auths = keda_objects(color, version)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    strictly(ScaledObject, scaled)
    assert set(auths) == {f"worker-redis-{color}", f"worker-datadog-{color}"}
    for auth in auths.values():
        assert auth["apiVersion"] == "keda.sh/v1alpha1"
        strictly(TriggerAuthentication, auth)
    # Each trigger names its own authentication, with the color's suffix (kustomizeconfig.yaml).
    assert {t["type"]: t["authenticationRef"]["name"] for t in scaled["spec"]["triggers"]} == {
        "redis-sentinel": f"worker-redis-{color}", "datadog": f"worker-datadog-{color}"}


def test_the_strict_check_catches_a_misspelt_field_and_a_number_where_keda_wants_a_string() -> None:
    scaled, _ = keda_objects("blue")
    misspelt = {**scaled, "spec": {**scaled["spec"], "minReplicas": 2}}
    with pytest.raises(AssertionError):
        strictly(ScaledObject, misspelt)
    for kind, key in (("redis-sentinel", "listLength"), ("datadog", "queryValue")):
        triggers = [{**t, "metadata": {**t["metadata"], key: 50}} if t["type"] == kind else t
                    for t in scaled["spec"]["triggers"]]
        numeric = {**scaled, "spec": {**scaled["spec"], "triggers": triggers}}
        with pytest.raises(Exception):  # noqa: B017 -- pydantic's ValidationError or the round trip
            strictly(ScaledObject, numeric)


@pytest.mark.parametrize("color", COLORS)
def test_each_trigger_holds_only_parameters_its_scaler_reads(color: str) -> None:
    scaled, _ = keda_objects(color)
    assert [t["type"] for t in scaled["spec"]["triggers"]] == ["redis-sentinel", "datadog"]
    for t in scaled["spec"]["triggers"]:
        assert set(t["metadata"]) <= SCALER_PARAMETERS[t["type"]], t["type"]
        assert all(isinstance(v, str) for v in t["metadata"].values())
    # A misspelling is caught here, not by the schema.
    assert "timeWindowInSeconds" not in SCALER_PARAMETERS["datadog"]


@pytest.mark.parametrize("color", COLORS)
def test_the_backlog_trigger_reads_the_version_s_list_through_the_sentinels_the_clients_use(
        color: str) -> None:
    scaled, auths = keda_objects(color, "5")
    backlog = trigger(scaled, "redis-sentinel")
    assert scaled["spec"]["triggers"][0] is backlog  # first: the pipelines' tests read the list there
    meta = backlog["metadata"]
    redis_env = {e["name"]: e.get("value") for e in container(find("StatefulSet", "redis"), "redis")["env"]}
    target = RedisTarget.parse(find("Secret", "recognition-secrets")["stringData"]["redis-url"])
    assert meta["addresses"].split(",") == redis_env["SENTINELS"].split()
    assert {tuple(a.rsplit(":", 1)) for a in meta["addresses"].split(",")} == \
        {(host, str(port)) for host, port in target.sentinels}
    assert meta["sentinelMaster"] == redis_env["MASTER_NAME"] == target.master_name
    assert meta["databaseIndex"] == "0" and find("Secret", "recognition-secrets")["stringData"]["redis-url"] \
        .endswith("/0")
    # kombu's Redis transport keeps the queue as a list named exactly like the queue.
    assert meta["listName"] == queue_for("5") == "recognize.5"
    assert int(meta["listLength"]) > 0 and int(meta["activationListLength"]) == 0
    # The password from the service's Secret; the sentinels have none of their own.
    assert auths[backlog["authenticationRef"]["name"]]["spec"] == {"secretTargetRef": [
        {"parameter": "password", "name": "recognition-secrets", "key": "redis-password"}]}
    assert "redis-password" in find("Secret", "recognition-secrets")["stringData"]
    redis_password = next(e for e in container(find("StatefulSet", "redis"), "redis")["env"]
                          if e["name"] == "REDIS_PASSWORD")
    assert redis_password["valueFrom"]["secretKeyRef"] == {"name": "recognition-secrets",
                                                          "key": "redis-password"}


@pytest.mark.parametrize("version", ["5", "2024.06.1"])
@pytest.mark.parametrize("color", COLORS)
def test_the_load_trigger_reads_the_version_s_completion_rate_from_datadog(color: str, version: str) -> None:
    scaled, auths = keda_objects(color, version)
    load = trigger(scaled, "datadog")
    meta = load["metadata"]
    # One series: the sum over every worker of the version's finished jobs, per second, by minute.
    query = DATADOG_QUERY.fullmatch(meta["query"])
    assert query, meta["query"]
    assert query["metric"] == COMPLETED
    assert [t.split(":", 1) for t in query["scope"].split(",")] == [["model_version", version]]
    assert query["scope"] == version_tags(version)[0]  # the tag exactly as the workers send it
    assert {t.split(":", 1)[0] for t in version_tags(version, queue_for(version))} <= COMPLETED_TAGS
    assert " by " not in meta["query"] and "queryAggregator" not in meta
    # AverageValue (desired = ceil(rate / queryValue)), as the backlog trigger.
    assert load["metricType"] == trigger(scaled, "redis-sentinel")["metricType"] == "AverageValue"
    assert float(meta["queryValue"]) > 0 and float(meta["activationQueryValue"]) == 0
    # Whole minutes, the newest (still filling) skipped, and enough of them in the window for
    # Datadog's intake delay; no data at all is a rate of 0, not an error.
    rollup, age, skipped = int(query["rollup"]), int(meta["age"]), int(meta["lastAvailablePointOffset"])
    assert rollup == 60 and skipped == 1 and age >= (skipped + 3) * rollup
    assert "timeWindowOffset" not in meta
    assert meta["metricUnavailableValue"] == "0"
    # The HPA reads KEDA's last poll instead of querying Datadog again (its API is rate-limited).
    assert load["useCachedMetrics"] is True


def test_the_load_target_is_the_per_worker_rate_at_seventy_percent() -> None:
    """The per-worker rate is a deployment setting; the target follows from it (and the simulation
    assumes the same rate: tests/bench/test_scaling.py)."""
    scaled, _ = keda_objects("blue")
    target = float(trigger(scaled, "datadog")["metadata"]["queryValue"])
    text = (K8S / "workers" / "base" / "scaling.yaml").read_text()
    per_worker = float(re.search(r"(\d+(?:\.\d+)?) photos/s \(the assumption bench/scaling\.py", text)[1])
    assert target == int(per_worker * 0.7)


@pytest.mark.parametrize("color", COLORS)
def test_the_datadog_keys_come_from_the_documented_secret(color: str) -> None:
    scaled, auths = keda_objects(color)
    auth = auths[trigger(scaled, "datadog")["authenticationRef"]["name"]]
    refs = auth["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in refs} == {"apiKey", "appKey", "datadogSite"}
    assert {r["name"] for r in refs} == {"datadog-keys"}
    example = find("Secret", "datadog-keys")
    assert example["metadata"]["namespace"] == scaled["metadata"]["namespace"]
    assert {r["key"] for r in refs} == set(example["stringData"])


def test_keda_s_operator_may_reach_redis_and_its_sentinels() -> None:
    policy = find("NetworkPolicy", "redis-clients")
    keda = [rule for rule in policy["spec"]["ingress"] if "namespaceSelector" in rule["from"][0]]
    assert len(keda) == 1
    assert keda[0]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}
    assert {p["port"] for p in keda[0]["ports"]} == {6379, 26379}


@pytest.mark.parametrize("color", COLORS)
def test_workers_scale_up_early_and_down_slowly_around_the_model_load(color: str) -> None:
    scaled, _ = keda_objects(color)
    spec = scaled["spec"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    # Up: no stabilization; the most generous policy wins, at least doubling within a minute.
    assert up["stabilizationWindowSeconds"] == 0 and up["selectPolicy"] == "Max"
    assert any(p["type"] == "Percent" and p["value"] >= 100 and p["periodSeconds"] <= 60
               for p in up["policies"])
    # Down: the highest recommendation of several model loads wins, then one pod at a time,
    # minutes apart; the slowest policy applies.
    assert down["stabilizationWindowSeconds"] >= 3 * MODEL_LOAD_SECONDS
    assert down["selectPolicy"] == "Min"
    period = down["policies"][0]["periodSeconds"]
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": period}]
    assert down["policies"][0]["periodSeconds"] >= MODEL_LOAD_SECONDS / 2
    # 1 -> 0 only for a color whose minimum is 0, after its list stayed empty this long.
    assert spec["cooldownPeriod"] >= 3 * MODEL_LOAD_SECONDS
    assert spec["pollingInterval"] <= 30
    # No fallback: neither Redis nor Datadog being unreadable may set the count. Without one, the
    # HPA scales up on the metrics it has and never down while one is missing; with one, KEDA
    # would set fallback.replicas itself whenever the list is empty (bench/scaling.py shows both).
    assert "fallback" not in spec
    # The counts are the pipelines' (patched, kept by `kubectl apply`), not the manifest's.
    assert "minReplicaCount" not in spec and "maxReplicaCount" not in spec
