"""KEDA scales each color's workers on its version's Redis list (k8s/workers/base/scaling.yaml):
every rendered ScaledObject and TriggerAuthentication valid against KEDA's own schema (the models
cloudcoil-models-keda generates from KEDA's CRDs; strict: a field the schema does not know fails),
pointed at the Sentinel setup of k8s/redis.yaml, and scaling up early and down slowly."""

from __future__ import annotations

from typing import Any

import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication

from common.queues import queue_for
from common.redisconn import RedisTarget
from tests.deploy.kube import K8S, container, find, one, rendered

COLORS = ("blue", "green")
# A 15 GB model takes about 10 minutes to load (the startup probe allows 30).
MODEL_LOAD_SECONDS = 600


def keda_objects(color: str, version: str = "7") -> tuple[dict[str, Any], dict[str, Any]]:
    docs = rendered(K8S / "workers" / color, modelVersion=version)
    return one(docs, "ScaledObject"), one(docs, "TriggerAuthentication")


def strictly(model: Any, doc: dict[str, Any]) -> None:
    """Validate DOC with KEDA's model, and fail on anything the model dropped or coerced: the
    models ignore unknown fields and coerce "15" to 15, where KEDA's CRD would not."""
    parsed = model.model_validate(doc)
    assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc


@pytest.mark.parametrize("version", ["1", "2024.06.1"])
@pytest.mark.parametrize("color", COLORS)
def test_every_rendered_scaledobject_and_triggerauthentication_is_valid_for_keda(color: str, version: str) -> None:
    scaled, auth = keda_objects(color, version)
    assert scaled["apiVersion"] == auth["apiVersion"] == "keda.sh/v1alpha1"
    strictly(ScaledObject, scaled)
    strictly(TriggerAuthentication, auth)


def test_the_strict_check_catches_a_misspelt_field_and_a_number_where_keda_wants_a_string() -> None:
    scaled, _ = keda_objects("blue")
    misspelt = {**scaled, "spec": {**scaled["spec"], "minReplicas": 2}}
    with pytest.raises(AssertionError):
        strictly(ScaledObject, misspelt)
    trigger = scaled["spec"]["triggers"][0]
    numeric = {**scaled, "spec": {**scaled["spec"], "triggers": [
        {**trigger, "metadata": {**trigger["metadata"], "listLength": 50}}]}}
    with pytest.raises(Exception):  # noqa: B017 -- pydantic's ValidationError or the round trip
        strictly(ScaledObject, numeric)


@pytest.mark.parametrize("color", COLORS)
def test_the_trigger_reads_the_version_s_list_through_the_sentinels_the_clients_use(color: str) -> None:
    scaled, auth = keda_objects(color, "5")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-sentinel"
    meta = trigger["metadata"]
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
    assert auth["spec"] == {"secretTargetRef": [
        {"parameter": "password", "name": "recognition-secrets", "key": "redis-password"}]}
    assert "redis-password" in find("Secret", "recognition-secrets")["stringData"]
    redis_password = next(e for e in container(find("StatefulSet", "redis"), "redis")["env"]
                          if e["name"] == "REDIS_PASSWORD")
    assert redis_password["valueFrom"]["secretKeyRef"] == {"name": "recognition-secrets", "key": "redis-password"}


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
    assert any(p["type"] == "Percent" and p["value"] >= 100 and p["periodSeconds"] <= 60 for p in up["policies"])
    # Down: the highest recommendation of several model loads wins, then one pod at a time,
    # minutes apart; the slowest policy applies.
    assert down["stabilizationWindowSeconds"] >= 3 * MODEL_LOAD_SECONDS
    assert down["selectPolicy"] == "Min"
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": down["policies"][0]["periodSeconds"]}]
    assert down["policies"][0]["periodSeconds"] >= MODEL_LOAD_SECONDS / 2
    # 1 -> 0 only for a color whose minimum is 0, after its list stayed empty this long.
    assert spec["cooldownPeriod"] >= 3 * MODEL_LOAD_SECONDS
    assert spec["pollingInterval"] <= 30
    # A Redis that cannot be read must not scale workers down: no fallback count.
    assert "fallback" not in spec
    # The counts are the pipelines' (patched, kept by `kubectl apply`), not the manifest's.
    assert "minReplicaCount" not in spec and "maxReplicaCount" not in spec
