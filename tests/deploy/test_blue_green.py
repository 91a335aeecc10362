"""worker-blue and worker-green: one Kustomize base (k8s/workers/base) rendered per color
(k8s/workers/colors/<color>) with the model version the deploy gives, so the two colors can
differ only in color and version -- checked here on the rendered output, for several versions."""

from __future__ import annotations

from typing import Any

import pytest

from common.queues import queue_for
from tests.deploy.kube import K8S, base_name, container, pod_spec, rendered

COLORS = ("blue", "green")
VERSIONS = ("1", "2", "17", "2024.06.1")


def color_documents(color: str, version: str) -> dict[str, dict[str, Any]]:
    """The color's objects by kind (the TriggerAuthentications by kind and what they authenticate,
    "TriggerAuthentication/redis" and "TriggerAuthentication/datadog"), apart from the shared
    settings (recognition-config)."""
    docs = [d for d in rendered(K8S / "workers" / color, modelVersion=version)
            if base_name(d) != "recognition-config"]
    by_kind = {d["kind"] if d["kind"] != "TriggerAuthentication"
               else f"TriggerAuthentication/{d['metadata']['name'].split('-')[1]}": d for d in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    return by_kind


def differences(a: Any, b: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in a.keys() | b.keys():
            out |= differences(a.get(key), b.get(key), f"{path}.{key}".lstrip("."))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = {}
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            out |= differences(x, y, f"{path}.{index}")
        return out
    return {} if a == b else {path: (a, b)}


def test_each_color_renders_the_same_kinds_of_objects() -> None:
    for color in COLORS:
        assert set(color_documents(color, "1")) == {
            "ConfigMap", "Deployment", "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication/redis",
            "TriggerAuthentication/datadog"}


@pytest.mark.parametrize(("v_blue", "v_green"), [("1", "2"), ("2", "2"), ("17", "2024.06.1")])
def test_blue_and_green_differ_only_in_color_and_model_version(v_blue: str, v_green: str) -> None:
    blue, green = color_documents("blue", v_blue), color_documents("green", v_green)
    found: dict[str, tuple[Any, Any]] = {}
    for kind in blue:
        found |= {f"{kind}.{path}": values for path, values in differences(blue[kind], green[kind]).items()}
    assert found
    for path, (a, b) in found.items():
        assert isinstance(a, str) and isinstance(b, str), path
        if a == v_blue and b == v_green:
            continue
        swapped = a.replace("blue", "green")
        for template in ("model-reference-{}", "/reference/{}", "recognize.{}", "model_version:{}"):
            swapped = swapped.replace(template.format(v_blue), template.format(v_green))
        assert swapped == b, f"{path}: {a!r} -> {b!r}"
    if v_blue == v_green:
        assert all("blue" in a for a, _ in found.values()), "same version: only the color differs"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("color", COLORS)
def test_a_color_names_labels_mounts_and_queues_the_version_it_is_given(color: str, version: str) -> None:
    docs = color_documents(color, version)
    deployment, budget, config = docs["Deployment"], docs["PodDisruptionBudget"], docs["ConfigMap"]
    scaled = docs["ScaledObject"]
    assert deployment["metadata"]["name"] == budget["metadata"]["name"] == scaled["metadata"]["name"] \
        == f"worker-{color}"
    assert base_name(config) == f"worker-{color}" and config["metadata"]["name"] != f"worker-{color}"
    pod = deployment["spec"]["template"]
    for labels in (deployment["metadata"]["labels"], pod["metadata"]["labels"], scaled["metadata"]["labels"]):
        assert labels["color"] == color and labels["model-version"] == version
    # Every selector is the color's own: the two colors never select each other's pods.
    anti = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    for selector in (deployment["spec"]["selector"]["matchLabels"], budget["spec"]["selector"]["matchLabels"],
                     anti["podAffinityTerm"]["labelSelector"]["matchLabels"]):
        assert selector["color"] == color and selector["app.kubernetes.io/component"] == "worker"
    # The start script derives the queue recognize.<version> from WORKER_MODEL_VERSION.
    worker = container(deployment, "worker")
    assert worker["env"][0] == {"name": "WORKER_MODEL_VERSION", "valueFrom": {
        "configMapKeyRef": {"name": config["metadata"]["name"], "key": "WORKER_MODEL_VERSION"}}}
    assert config["data"] == {"WORKER_MODEL_VERSION": version}
    # The version's read-only claim, read-only in the pod's volume and in the mount.
    spec = pod_spec(deployment)
    assert spec is not None
    model = next(v for v in spec["volumes"] if v["name"] == "model")
    assert model["persistentVolumeClaim"] == {"claimName": f"model-reference-{version}", "readOnly": True}
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "model")
    assert mount == {"name": "model", "mountPath": f"/models/reference/{version}", "readOnly": True}
    assert all(m.get("readOnly") for m in worker["volumeMounts"] if m["name"] != "tmp")
    # KEDA scales this Deployment on this version's queue, with this color's credentials.
    assert scaled["spec"]["scaleTargetRef"] == {"name": f"worker-{color}"}
    backlog, load = scaled["spec"]["triggers"]
    assert backlog["metadata"]["listName"] == queue_for(version)
    assert load["metadata"]["query"].startswith(f"sum:recognition.job.completed{{model_version:{version}}}")
    for trigger, kind in ((backlog, "redis"), (load, "datadog")):
        auth = docs[f"TriggerAuthentication/{kind}"]
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        assert color in auth["metadata"]["name"]
    # Neither the Deployment nor the ScaledObject fixes a count: the pipelines' patches own them.
    assert "replicas" not in deployment["spec"]
    assert "minReplicaCount" not in scaled["spec"] and "maxReplicaCount" not in scaled["spec"]


def test_the_version_is_in_the_color_s_configmap_so_a_new_version_rolls_the_pods() -> None:
    old, new = color_documents("green", "1"), color_documents("green", "2")
    assert old["Deployment"]["spec"]["template"] != new["Deployment"]["spec"]["template"]
