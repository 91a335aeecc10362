"""Every Kubernetes manifest in k8s/: valid against the API schemas (offline), consistent with
each other, and saying what the service needs (probes, GPUs, read-only model volumes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes_validate import utils as kubernetes_validate

from tests.deploy.kube import (
    IMAGES,
    K8S,
    ROOT,
    all_documents,
    container,
    containers,
    find,
    image_name,
    load,
    manifest_files,
    one,
    pod_labels,
    pod_spec,
    settings_the_code_reads,
)

NAMESPACE = "listing-recognition"
# The oldest release still supported by the big managed offerings, and the newest schema shipped.
KUBERNETES_VERSIONS = ["1.31.0", kubernetes_validate.latest_version() + ".0"]
CLUSTER_SCOPED = {"Namespace", "PersistentVolume"}
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?")
LABEL_KEY = re.compile(r"([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
WORKLOADS = [(path, doc) for path, doc in all_documents() if pod_spec(doc) is not None]


def doc_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    meta = doc["metadata"]
    return f"{path.relative_to(K8S)}:{doc['kind']}/{meta.get('name') or meta.get('generateName')}"


def test_there_are_manifests_for_every_part_of_the_service() -> None:
    kinds = {(doc["kind"], doc["metadata"].get("name") or doc["metadata"]["generateName"])
             for _, doc in all_documents()}
    for expected in [("Namespace", NAMESPACE), ("ConfigMap", "recognition-config"), ("Secret", "recognition-secrets"),
                     ("Deployment", "recognition-api"), ("Service", "recognition-api"),
                     ("HorizontalPodAutoscaler", "recognition-api"), ("PodDisruptionBudget", "recognition-api"),
                     ("Deployment", "worker-blue"), ("Deployment", "worker-green"), ("StatefulSet", "redis"),
                     ("Service", "redis"), ("PersistentVolume", "model-reference-1"),
                     ("PersistentVolumeClaim", "model-reference-1"), ("Job", "populate-model-reference-1-"),
                     ("Job", "promote-green-"), ("Job", "rollback-")]:
        assert expected in kinds, expected


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    documents = load(path)
    assert documents, f"{path} holds no manifest"
    for doc in documents:
        # strict: an unknown or misspelt field is an error, not silently dropped by the API server.
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("item", list(all_documents()), ids=doc_id)
def test_names_and_labels_are_valid_kubernetes_identifiers(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    meta = doc["metadata"]
    name = meta.get("name") or meta["generateName"].rstrip("-")
    assert DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 63 - 6, name  # room for generateName's suffix
    labels = dict(meta.get("labels", {}))
    if pod_spec(doc) is not None:
        labels |= pod_labels(doc)
    for key, value in labels.items():
        assert LABEL_KEY.fullmatch(key), key
        assert isinstance(value, str) and LABEL_VALUE.fullmatch(value) and len(value) <= 63, (key, value)


@pytest.mark.parametrize("item", list(all_documents()), ids=doc_id)
def test_every_object_lives_in_the_services_namespace(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    if doc["kind"] in CLUSTER_SCOPED:
        assert "namespace" not in doc["metadata"]
    else:
        assert doc["metadata"].get("namespace") == NAMESPACE


def declared(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in all_documents()
            if doc["kind"] == kind and "name" in doc["metadata"]}


@pytest.mark.parametrize("item", WORKLOADS, ids=doc_id)
def test_every_reference_of_a_workload_resolves_to_a_manifest(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    configmaps, secrets = declared("ConfigMap"), declared("Secret")
    claims, accounts = declared("PersistentVolumeClaim"), declared("ServiceAccount")
    spec = pod_spec(doc)
    assert spec is not None
    assert spec["serviceAccountName"] in accounts if "serviceAccountName" in spec else True
    for c in containers(doc):
        for source in c.get("envFrom", []):
            assert source["configMapRef"]["name"] in configmaps
        for item_ in c.get("env", []):
            ref = item_.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                assert ref["configMapKeyRef"]["key"] in configmaps[ref["configMapKeyRef"]["name"]]["data"]
            if "secretKeyRef" in ref:
                assert ref["secretKeyRef"]["key"] in secrets[ref["secretKeyRef"]["name"]]["stringData"]
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        templates = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        assert mounts <= {v["name"] for v in spec.get("volumes", [])} | templates
    for volume in spec.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
        if "secret" in volume:
            data = secrets[volume["secret"]["secretName"]]["stringData"]
            assert {i["key"] for i in volume["secret"].get("items", [])} <= set(data)
    if doc["kind"] in ("Deployment", "StatefulSet"):
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels(doc).items()


def test_services_budgets_autoscaler_and_network_policy_select_real_pods() -> None:
    pods = [pod_labels(doc) for _, doc in WORKLOADS]

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pods)

    for _, doc in all_documents():
        if doc["kind"] == "Service":
            assert selects(doc["spec"]["selector"]), doc["metadata"]["name"]
            workload = next(d for _, d in WORKLOADS if doc["spec"]["selector"].items() <= pod_labels(d).items())
            ports = {p["name"] for c in containers(workload) for p in c.get("ports", [])}
            assert {p["targetPort"] for p in doc["spec"]["ports"]} <= ports
        if doc["kind"] in ("PodDisruptionBudget",):
            assert selects(doc["spec"]["selector"]["matchLabels"]), doc["metadata"]["name"]
        if doc["kind"] == "NetworkPolicy":
            assert selects(doc["spec"]["podSelector"]["matchLabels"])
            for rule in doc["spec"]["ingress"]:
                for peer in rule["from"]:
                    allowed = peer["podSelector"]["matchLabels"]
                    # Every pod that talks to Redis carries the label the policy admits.
                    assert all(allowed.items() <= labels.items() for labels in pods)
        if doc["kind"] == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            deployment = find(target["kind"], target["name"])
            assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


@pytest.mark.parametrize("item", WORKLOADS, ids=doc_id)
def test_every_pod_meets_the_restricted_pod_security_standard(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    spec = pod_spec(doc)
    assert spec is not None
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= {"configMap", "secret", "emptyDir", "persistentVolumeClaim", "projected", "downwardAPI"}
    for c in containers(doc):
        context = c["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["readOnlyRootFilesystem"] is True
        assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"]


@pytest.mark.parametrize("item", WORKLOADS, ids=doc_id)
def test_every_image_is_built_by_a_dockerfile_here_or_a_tagged_public_image(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    for c in containers(doc):
        image = c["image"]
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"{image}: give a tag (and pin digests in production)"
        if image_name(image).startswith("registry.example.com/"):
            assert image_name(image) in IMAGES, image
            assert (ROOT / IMAGES[image_name(image)]).is_file()
    worker = "registry.example.com/listing-recognition/worker"
    # Whatever loads a model needs the worker image (TensorFlow); the rest takes the small API image.
    for c in containers(doc):
        loads_model = "verify" in c.get("command", []) or c["name"] == "worker"
        assert (image_name(c["image"]) == worker) == loads_model, (c["name"], c["image"])


def probe_age(probe: dict[str, Any], *, reaching_redis: bool = False) -> int:
    command = probe["exec"]["command"]
    assert command[0] == "/app/docker/bin/probe-worker-ready" and (ROOT / "docker/bin/probe-worker-ready").is_file()
    assert (command[1] == "--reaching-redis") == reaching_redis, command
    return int(command[-1])


@pytest.mark.parametrize("color", ["blue", "green"])
def test_worker_probes_allow_a_multi_gb_load_and_cannot_be_failed_by_a_busy_inference(color: str) -> None:
    deployment = find("Deployment", f"worker-{color}")
    worker = container(deployment, "worker")
    config = find("ConfigMap", "recognition-config")["data"]
    heartbeat = float(config["WORKER_HEARTBEAT_SECONDS"])
    startup, readiness, liveness = worker["startupProbe"], worker["readinessProbe"], worker["livenessProbe"]
    # A 15 GB volume over network storage: 30 minutes before the kubelet gives up.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert deployment["spec"]["progressDeadlineSeconds"] > startup["periodSeconds"] * startup["failureThreshold"]
    # The ready file is touched every heartbeat by its own thread: a few missed touches are
    # not-ready, many are dead; a probe never waits on the inference thread.
    # Not ready while Redis does not take the heartbeat; alive (no restart, no model load) all the same.
    assert probe_age(readiness, reaching_redis=True) >= 3 * heartbeat
    assert probe_age(liveness) >= 10 * probe_age(readiness, reaching_redis=True)
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60
    assert config["WORKER_READY_FILE"].startswith("/tmp/")
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert "/tmp" in mounts, "the ready file lives on the pod's own emptyDir"
    # Long enough to finish and acknowledge a batch after SIGTERM; the image execs Celery.
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= 120  # type: ignore[index]
    assert "command" not in worker and "args" not in worker


@pytest.mark.parametrize("color", ["blue", "green"])
def test_workers_get_one_gpu_each_on_gpu_nodes_and_a_new_pod_loads_before_an_old_drains(color: str) -> None:
    deployment = find("Deployment", f"worker-{color}")
    spec = pod_spec(deployment)
    assert spec is not None
    resources = container(deployment, "worker")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    # Applying the file (a code-only deploy) must not resize a color: the pipelines scale.
    assert "replicas" not in deployment["spec"]


def test_the_api_probes_use_healthz_with_an_allowed_host_and_it_stops_gracefully() -> None:
    deployment = find("Deployment", "recognition-api")
    api = container(deployment, "api")
    config = find("ConfigMap", "recognition-config")["data"]
    allowed = config["DJANGO_ALLOWED_HOSTS"].split(",")
    for probe in (api["readinessProbe"], api["livenessProbe"]):
        # /healthz, not /readyz: see the comment in k8s/api.yaml.
        assert probe["httpGet"]["path"] == "/healthz"
        host = {h["name"]: h["value"] for h in probe["httpGet"].get("httpHeaders", [])}.get("Host")
        assert host in allowed, "the kubelet's own Host (the pod IP) is not an allowed host"
    assert api["livenessProbe"]["failureThreshold"] * api["livenessProbe"]["periodSeconds"] >= 60
    pre_stop = int(api["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]  # type: ignore[index]
    assert grace > pre_stop + int(config["API_GRACEFUL_TIMEOUT"]) > pre_stop + float(config["MAX_WAIT_SECONDS"])


def model_versions() -> list[str]:
    return sorted(p.stem.removeprefix("reference-") for p in (K8S / "models").glob("reference-*.yaml")
                  if not p.stem.endswith("-populate"))


def versioned_text(path: Path, version: str) -> str:
    return (path.read_text().replace(f"reference-{version}", "reference-V")
            .replace(f"reference/{version}", "reference/V")
            .replace(f'model-version: "{version}"', 'model-version: "V"').replace(f'"{version}"]', '"V"]')
            .replace(f"verify {version}`", "verify V`"))


@pytest.mark.parametrize("version", model_versions())
def test_every_model_version_has_the_files_of_version_1_with_only_the_version_changed(version: str) -> None:
    for suffix in ("", "-populate"):
        path, first = K8S / "models" / f"reference-{version}{suffix}.yaml", K8S / "models" / f"reference-1{suffix}.yaml"
        assert path.is_file(), f"{path.name} is missing"
        assert versioned_text(path, version) == versioned_text(first, "1")
        assert versioned_text(path, version).count("reference-V") >= 2


@pytest.mark.parametrize("version", model_versions())
def test_a_model_version_is_read_only_everywhere_but_in_the_populate_step(version: str) -> None:
    volumes = K8S / "models" / f"reference-{version}.yaml"
    readonly, writable = find("PersistentVolume", f"model-reference-{version}"), \
        find("PersistentVolume", f"model-reference-{version}-populate")
    claim = find("PersistentVolumeClaim", f"model-reference-{version}")
    assert readonly["spec"]["accessModes"] == ["ReadOnlyMany"] == claim["spec"]["accessModes"]
    assert readonly["spec"]["nfs"]["readOnly"] is True and "ro" in readonly["spec"]["mountOptions"]
    assert readonly["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    # The same directory of the store behind both; each PV pre-bound to its own claim.
    assert readonly["spec"]["nfs"]["path"] == writable["spec"]["nfs"]["path"] == f"/models/reference/{version}"
    for pv in (readonly, writable):
        pvc = find("PersistentVolumeClaim", pv["spec"]["claimRef"]["name"])
        assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
        assert pvc["spec"]["storageClassName"] == "" == pv["spec"]["storageClassName"]
    assert len(load(volumes)) == 4

    job = one(K8S / "models" / f"reference-{version}-populate.yaml", "Job")
    spec = pod_spec(job)
    assert spec is not None
    claims = {v["name"]: v["persistentVolumeClaim"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    fetch, verify = spec["initContainers"][0], spec["containers"][0]
    assert fetch["command"] == ["/app/docker/bin/fetch-model-volume", version]
    assert verify["command"] == ["python3", "-m", "models_registry", "verify", version]
    fetch_claims = {claims[m["name"]]["claimName"] for m in fetch["volumeMounts"] if m["name"] in claims}
    verify_mounts = [m for m in verify["volumeMounts"] if m["name"] in claims]
    assert fetch_claims == {f"model-reference-{version}-populate"}
    assert [claims[m["name"]]["claimName"] for m in verify_mounts] == [f"model-reference-{version}"]
    assert verify_mounts[0]["readOnly"] is True and claims[verify_mounts[0]["name"]]["readOnly"] is True
    model_root = find("ConfigMap", "recognition-config")["data"]["MODEL_ROOT"]
    assert verify_mounts[0]["mountPath"] == f"{model_root}/reference/{version}"

    # Workers: only ever the read-only claim, read-only.
    for _, doc in WORKLOADS:
        for volume in pod_spec(doc).get("volumes", []):  # type: ignore[union-attr]
            source = volume.get("persistentVolumeClaim", {})
            if source.get("claimName", "").endswith("-populate"):
                assert doc["kind"] == "Job" and doc["metadata"]["generateName"] == \
                    f"populate-{source['claimName'].removesuffix('-populate')}-"
            elif source.get("claimName", "").startswith("model-reference-"):
                assert source["readOnly"] is True


@pytest.mark.parametrize("name", ["recognition-config", "worker-blue", "worker-green"])
def test_every_setting_in_a_configmap_is_one_the_code_reads(name: str) -> None:
    known = settings_the_code_reads()
    unknown = sorted(set(find("ConfigMap", name)["data"]) - known)
    assert not unknown, f"no code reads {unknown}: a typo, or a setting that was removed"


def test_containers_name_secret_files_that_the_settings_read_as_name_file() -> None:
    known = settings_the_code_reads()
    for _, doc in WORKLOADS:
        for c in containers(doc):
            for item in c.get("env", []):
                if item["name"].endswith("_FILE") and item["name"] != "WORKER_READY_FILE":
                    assert item["name"].removesuffix("_FILE") in known, item["name"]
                    mounts = [m["mountPath"] for m in c["volumeMounts"]]
                    assert any(item["value"].startswith(m + "/") for m in mounts), item


def test_rollout_jobs_never_retry_a_refusal_and_every_job_cleans_up_after_itself() -> None:
    for _, doc in WORKLOADS:
        if doc["kind"] != "Job":
            continue
        # Spinnaker does not make Job names unique since 1.22: generateName does.
        assert "name" not in doc["metadata"] and doc["metadata"]["generateName"].endswith("-")
        assert doc["spec"]["ttlSecondsAfterFinished"] > 0 and doc["spec"]["activeDeadlineSeconds"] > 0
        assert pod_spec(doc)["restartPolicy"] == "Never"  # type: ignore[index]
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "model-rollout":
            assert doc["spec"]["backoffLimit"] == 0


def test_configmaps_that_jobs_read_by_name_are_not_versioned_by_spinnaker() -> None:
    for _, doc in all_documents():
        if doc["kind"] == "ConfigMap":
            assert doc["metadata"]["annotations"]["strategy.spinnaker.io/versioned"] == "false"


def test_redis_runs_behind_sentinels_that_the_clients_url_names() -> None:
    from common.redisconn import RedisTarget

    redis = find("StatefulSet", "redis")
    env = {e["name"]: e.get("value") for e in container(redis, "redis")["env"]}
    assert redis["spec"]["replicas"] == 3 and int(env["SENTINEL_QUORUM"]) == 2
    assert {c["name"] for c in containers(redis)} == {"redis", "sentinel"}
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    url = find("Secret", "recognition-secrets")["stringData"]["redis-url"]
    target = RedisTarget.parse(url)
    pods = {f"redis-{i}.redis.{NAMESPACE}.svc.cluster.local" for i in range(redis["spec"]["replicas"])}
    assert {host for host, _ in target.sentinels} == pods
    assert target.master_name == env["MASTER_NAME"]
    assert {f"{host}:{port}" for host, port in target.sentinels} == set(env["SENTINELS"].split())
    # A replica holds every job the API acknowledges.
    assert int(find("ConfigMap", "recognition-config")["data"]["REDIS_WAIT_REPLICAS"]) >= 1