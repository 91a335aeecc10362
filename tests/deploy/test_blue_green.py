"""worker-blue and worker-green: the same workers, apart from their color and model version."""

from __future__ import annotations

from typing import Any

from tests.deploy.kube import K8S, load

# Where the two colors may differ, and nowhere else (paths into the documents, in file order).
MAY_DIFFER = {
    "ConfigMap.metadata.name", "ConfigMap.metadata.labels.color", "ConfigMap.data.WORKER_MODEL_VERSION",
    "Deployment.metadata.name", "Deployment.metadata.labels.color", "Deployment.metadata.labels.model-version",
    "Deployment.spec.selector.matchLabels.color",
    "Deployment.spec.template.metadata.labels.color", "Deployment.spec.template.metadata.labels.model-version",
    "Deployment.spec.template.spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution.0"
    ".podAffinityTerm.labelSelector.matchLabels.color",
    "Deployment.spec.template.spec.containers.0.env.0.valueFrom.configMapKeyRef.name",
    "Deployment.spec.template.spec.containers.0.volumeMounts.0.mountPath",
    "Deployment.spec.template.spec.volumes.0.persistentVolumeClaim.claimName",
    "PodDisruptionBudget.metadata.name", "PodDisruptionBudget.metadata.labels.color",
    "PodDisruptionBudget.spec.selector.matchLabels.color",
}


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


def color_documents(color: str) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in load(K8S / f"worker-{color}.yaml")}


def version_of(color: str) -> str:
    return color_documents(color)["ConfigMap"]["data"]["WORKER_MODEL_VERSION"]


def test_blue_and_green_hold_the_same_kinds_of_objects() -> None:
    assert [d["kind"] for d in load(K8S / "worker-blue.yaml")] == [d["kind"] for d in load(K8S / "worker-green.yaml")]
    assert set(color_documents("blue")) == {"ConfigMap", "Deployment", "PodDisruptionBudget"}


def test_blue_and_green_workers_differ_only_in_color_model_version_queue_and_volume() -> None:
    blue, green = color_documents("blue"), color_documents("green")
    found: dict[str, tuple[Any, Any]] = {}
    for kind in blue:
        found |= {f"{kind}.{path}": values for path, values in differences(blue[kind], green[kind]).items()}
    assert set(found) <= MAY_DIFFER, f"blue and green also differ in {sorted(set(found) - MAY_DIFFER)}"
    # ... and there, only by the color and the version.
    v_blue, v_green = version_of("blue"), version_of("green")
    for path, (a, b) in found.items():
        assert isinstance(a, str) and isinstance(b, str), path
        swapped = a.replace("blue", "green")
        for template in ("model-reference-{}", "/reference/{}"):
            swapped = swapped.replace(template.format(v_blue), template.format(v_green))
        if swapped == v_blue:
            swapped = v_green
        assert swapped == b, f"{path}: {a!r} -> {b!r}"


def test_the_two_colors_run_different_model_versions() -> None:
    assert version_of("blue") != version_of("green")


def test_each_color_mounts_labels_and_queues_the_version_its_configmap_names() -> None:
    for color in ("blue", "green"):
        docs = color_documents(color)
        version = version_of(color)
        deployment = docs["Deployment"]
        pod = deployment["spec"]["template"]
        worker = pod["spec"]["containers"][0]
        labels = deployment["metadata"]["labels"], pod["metadata"]["labels"]
        assert labels[0]["model-version"] == version == labels[1]["model-version"]
        # The start script derives the queue recognize.<version> from WORKER_MODEL_VERSION.
        assert worker["env"][0] == {"name": "WORKER_MODEL_VERSION", "valueFrom": {
            "configMapKeyRef": {"name": f"worker-{color}", "key": "WORKER_MODEL_VERSION"}}}
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == f"model-reference-{version}"
        assert worker["volumeMounts"][0]["mountPath"] == f"/models/reference/{version}"
        assert (K8S / "models" / f"reference-{version}.yaml").is_file()


def test_the_rollout_jobs_of_the_two_colors_differ_only_in_color() -> None:
    for kind in ("promote", "drain-wait"):
        blue = (K8S / "jobs" / f"{kind}-blue.yaml").read_text()
        green = (K8S / "jobs" / f"{kind}-green.yaml").read_text()
        assert blue.replace("blue", "green") == green
        assert "configMapKeyRef" in blue and "name: worker-blue" in blue
