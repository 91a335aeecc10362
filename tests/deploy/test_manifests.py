"""Every Kubernetes object that k8s/ deploys -- the plain files, and each Kustomize root
rendered with `kubectl kustomize` and its placeholders resolved as the pipelines resolve them --
valid against the API schemas (offline), consistent with each other, and saying what the service
needs (probes, GPUs, read-only model volumes)."""

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
    base_name,
    container,
    containers,
    documents_of,
    find,
    image_name,
    is_hashed,
    kustomize_roots,
    kustomized,
    object_name,
    pod_labels,
    pod_spec,
    render_module,
    rendered,
    settings_the_code_reads,
    source_id,
    sources,
)

NAMESPACE = "listing-recognition"
# The oldest release still supported by the big managed offerings, and the newest schema shipped.
KUBERNETES_VERSIONS = ["1.31.0", kubernetes_validate.latest_version() + ".0"]
CLUSTER_SCOPED = {"Namespace", "PersistentVolume"}
# KEDA's kinds are checked against KEDA's own schema (test_keda.py).
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?")
LABEL_KEY = re.compile(r"([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
# Which placeholders each root leaves for the deploy to resolve; every other root has none.
PLACEHOLDERS = {
    "workers/blue": {"modelVersion"}, "workers/green": {"modelVersion"}, "models": {"modelVersion"},
    "jobs/populate": {"modelVersion"}, "jobs/verify": {"modelVersion"}, "jobs/promote": {"modelVersion"},
    "jobs/abort": {"modelVersion"}, "jobs/shadow": {"modelVersion", "shadowFraction"},
    "jobs/canary": {"modelVersion", "canaryWeight"}, "jobs/drain-wait": {"drainVersion"},
    "jobs/judge": {"modelVersion", "minJobs", "judgeTimeoutSeconds"}, "jobs/check-active": {"modelVersion"},
}
SOURCES = sources()


def workloads() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path, doc in all_documents() if pod_spec(doc) is not None]


def test_there_are_manifests_for_every_part_of_the_service() -> None:
    kinds = {(doc["kind"], base_name(doc)) for _, doc in all_documents()}
    for expected in [("Namespace", NAMESPACE), ("ConfigMap", "recognition-config"), ("Secret", "recognition-secrets"),
                     ("Deployment", "recognition-api"), ("Service", "recognition-api"),
                     ("HorizontalPodAutoscaler", "recognition-api"), ("PodDisruptionBudget", "recognition-api"),
                     ("Deployment", "worker-blue"), ("Deployment", "worker-green"),
                     ("ScaledObject", "worker-blue"), ("ScaledObject", "worker-green"),
                     ("ConfigMap", "worker-blue"), ("ConfigMap", "worker-green"),
                     ("Deployment", "rollout-guard"), ("StatefulSet", "redis"),
                     ("Service", "redis"), ("PersistentVolume", "model-reference-7"),
                     ("PersistentVolumeClaim", "model-reference-7"), ("Job", "model-populate"),
                     ("Job", "model-promote"), ("Job", "model-judge"), ("Job", "model-rollback")]:
        assert expected in kinds, expected


def test_the_roots_are_the_ones_the_pipelines_and_the_readme_name() -> None:
    roots = {source_id(root) for root in kustomize_roots()}
    assert roots == {"api", "guard", "models", "workers/blue", "workers/green"} | {
        f"jobs/{name}" for name in ("status", "verify", "shadow", "canary", "judge", "promote", "abort",
                                    "drain-wait", "check-active", "rollback", "populate", "image-lifecycle")}
    # The near-duplicates are gone: one base per kind of object, the color and version supplied.
    assert not list(K8S.glob("worker-*.yaml")) and not list((K8S / "models").glob("reference-*.yaml"))
    assert not list((K8S / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("root", kustomize_roots(), ids=source_id)
def test_each_root_leaves_exactly_its_placeholders_for_the_deploy(root: Path) -> None:
    raw = kustomized(root)
    assert render_module().placeholders(raw) == PLACEHOLDERS.get(source_id(root), set())
    resolved = rendered(root)
    assert render_module().placeholders(resolved) == set()
    assert "${" not in repr(resolved)


def test_a_placeholder_without_a_value_is_an_error_not_left_in_the_manifest() -> None:
    with pytest.raises(KeyError, match="modelVersion"):
        render_module().resolve(kustomized(K8S / "workers" / "blue"), {})
    with pytest.raises(ValueError, match="plain"):
        render_module().placeholders({"command": ["echo", "${#toInt('1')}"]})


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("source", SOURCES, ids=source_id)
def test_every_manifest_validates_against_the_kubernetes_schemas(source: Path, version: str) -> None:
    documents = documents_of(source)
    assert documents, f"{source} holds no manifest"
    for doc in documents:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        # strict: an unknown or misspelt field is an error, not silently dropped by the API server.
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("source", SOURCES, ids=source_id)
def test_names_and_labels_are_valid_kubernetes_identifiers(source: Path) -> None:
    for doc in documents_of(source, modelVersion="2024.06.1", drainVersion="2024.05.3"):
        name = object_name(doc)
        assert DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 63 - 6, name  # room for a Job's pod suffix
        labels = dict(doc["metadata"].get("labels", {}))
        if pod_spec(doc) is not None:
            labels |= pod_labels(doc)
        for key, value in labels.items():
            assert LABEL_KEY.fullmatch(key), key
            assert isinstance(value, str) and LABEL_VALUE.fullmatch(value) and len(value) <= 63, (key, value)


@pytest.mark.parametrize("source", SOURCES, ids=source_id)
def test_every_object_lives_in_the_services_namespace(source: Path) -> None:
    for doc in documents_of(source):
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, object_name(doc)


def test_every_root_that_reads_the_settings_renders_the_same_hashed_configmap() -> None:
    """The settings are one ConfigMap, recognition-config-<hash of its content>: the same name
    from every root, so that the pipelines' stages deploy it idempotently, and a changed setting
    is a new name in every pod template that reads it (the pods roll)."""
    names = {}
    for root in kustomize_roots():
        maps = [doc for doc in rendered(root) if doc["kind"] == "ConfigMap" and base_name(doc) == "recognition-config"]
        referenced = any(c.get("envFrom") for doc in rendered(root) for c in containers(doc))
        assert bool(maps) == referenced, root
        if maps:
            names[source_id(root)] = maps[0]["metadata"]["name"]
    assert len(set(names.values())) == 1 and is_hashed(next(iter(names.values()))), names
    for source, doc in all_documents():
        if doc["kind"] != "ConfigMap":
            continue
        # The one plain ConfigMap, redis.yaml's scripts, is applied by hand with its StatefulSet.
        assert is_hashed(object_name(doc)) or source.name == "redis.yaml", object_name(doc)
        # Versioned by Kustomize (or not at all); Spinnaker must not add its own -vNNN suffix.
        assert doc["metadata"]["annotations"]["strategy.spinnaker.io/versioned"] == "false"


def test_a_changed_setting_renames_the_configmap_in_every_pod_template(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("datadog", "spinnaker", "iam"))
    env = copy / "config" / "recognition-config.env"
    env.write_text(env.read_text().replace("LOG_LEVEL=INFO", "LOG_LEVEL=DEBUG"))
    for root in ("api", "guard", "workers/blue", "jobs/promote"):
        before = [d for d in rendered(K8S / root) if pod_spec(d)][0]
        after = [d for d in rendered(copy / root) if pod_spec(d)][0]
        before_ref = containers(before)[0]["envFrom"][0]["configMapRef"]["name"]
        after_ref = containers(after)[0]["envFrom"][0]["configMapRef"]["name"]
        assert before_ref != after_ref and after_ref.startswith("recognition-config-"), root


def declared(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in all_documents()
            if doc["kind"] == kind and "name" in doc["metadata"]}


@pytest.mark.parametrize("source", [s for s in SOURCES if s.is_dir() or s.name == "redis.yaml"], ids=source_id)
def test_every_reference_of_a_workload_resolves_to_a_manifest(source: Path) -> None:
    configmaps, secrets = declared("ConfigMap"), declared("Secret")
    claims, accounts = declared("PersistentVolumeClaim"), declared("ServiceAccount")
    for doc in documents_of(source):
        spec = pod_spec(doc)
        if spec is None:
            continue
        assert spec["serviceAccountName"] in accounts
        local = {d["metadata"]["name"] for d in documents_of(source) if d["kind"] == "ConfigMap"}
        for c in containers(doc):
            for env_source in c.get("envFrom", []):
                # A generated ConfigMap travels with the workload that reads it (same root).
                assert env_source["configMapRef"]["name"] in local
            for item in c.get("env", []):
                ref = item.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in local
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


def test_services_budgets_and_the_network_policy_select_real_pods() -> None:
    pods = [pod_labels(doc) for _, doc in workloads()]

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pods)

    for _, doc in all_documents():
        if doc["kind"] == "Service":
            assert selects(doc["spec"]["selector"]), doc["metadata"]["name"]
            workload = next(d for _, d in workloads() if doc["spec"]["selector"].items() <= pod_labels(d).items())
            ports = {p["name"] for c in containers(workload) for p in c.get("ports", [])}
            assert {p["targetPort"] for p in doc["spec"]["ports"]} <= ports
        if doc["kind"] in ("PodDisruptionBudget",):
            assert selects(doc["spec"]["selector"]["matchLabels"]), doc["metadata"]["name"]
        if doc["kind"] == "NetworkPolicy":
            assert selects(doc["spec"]["podSelector"]["matchLabels"])
            own = [peer for rule in doc["spec"]["ingress"] for peer in rule["from"] if "namespaceSelector" not in peer]
            assert len(own) == 1
            # Every pod of the service (the guard and the Jobs included) carries the label the
            # policy admits; the only other peer is KEDA's operator, in its own namespace.
            assert all(own[0]["podSelector"]["matchLabels"].items() <= labels.items() for labels in pods)
        if doc["kind"] == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            deployment = find(target["kind"], target["name"])
            assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


def test_the_guard_runs_once_with_the_jobs_security_context_and_reaches_redis_and_datadog() -> None:
    guard = find("Deployment", "rollout-guard")
    spec = pod_spec(guard)
    assert spec is not None and guard["spec"]["replicas"] == 1 and guard["spec"]["strategy"]["type"] == "Recreate"
    job = find("Job", "model-promote")
    assert spec["securityContext"] == pod_spec(job)["securityContext"]  # type: ignore[index]
    assert spec["serviceAccountName"] == "rollout-guard"
    c = container(guard, "guard")
    assert c["command"] == ["python3", "-m", "models_registry", "guard", "--window", "10m", "--interval", "30"]
    assert c["securityContext"] == container(job, "promote")["securityContext"]
    assert image_name(c["image"]) == "registry.example.com/listing-recognition/api"
    env = {e["name"]: e for e in c["env"]}
    assert env["REDIS_URL_FILE"]["value"] == "/run/secrets/recognition/redis-url"
    # DogStatsD on the node, as the API and the workers send it.
    api_env = {e["name"]: e for e in container(find("Deployment", "recognition-api"), "api")["env"]}
    assert env["DD_AGENT_HOST"] == api_env["DD_AGENT_HOST"]


@pytest.mark.parametrize("source", [s for s in SOURCES if s.is_dir() or s.name == "redis.yaml"], ids=source_id)
def test_every_pod_meets_the_restricted_pod_security_standard(source: Path) -> None:
    for doc in documents_of(source):
        spec = pod_spec(doc)
        if spec is None:
            continue
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


def test_every_image_is_built_by_a_dockerfile_here_or_a_tagged_public_image() -> None:
    worker = "registry.example.com/listing-recognition/worker"
    for _, doc in workloads():
        for c in containers(doc):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest", f"{image}: give a tag (and pin digests in production)"
            if image_name(image).startswith("registry.example.com/"):
                assert image_name(image) in IMAGES, image
                assert (ROOT / IMAGES[image_name(image)]).is_file()
            # Whatever loads a model needs the worker image (TensorFlow); the rest takes the small API image.
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
    # Applying the manifests (a code-only deploy) must not resize a color: KEDA owns the count.
    assert "replicas" not in deployment["spec"]


def test_the_api_probes_use_healthz_with_an_allowed_host_and_it_stops_gracefully() -> None:
    deployment = find("Deployment", "recognition-api")
    api = container(deployment, "api")
    config = find("ConfigMap", "recognition-config")["data"]
    allowed = config["DJANGO_ALLOWED_HOSTS"].split(",")
    for probe in (api["readinessProbe"], api["livenessProbe"]):
        # /healthz, not /readyz: see the comment in k8s/api/api.yaml.
        assert probe["httpGet"]["path"] == "/healthz"
        host = {h["name"]: h["value"] for h in probe["httpGet"].get("httpHeaders", [])}.get("Host")
        assert host in allowed, "the kubelet's own Host (the pod IP) is not an allowed host"
    assert api["livenessProbe"]["failureThreshold"] * api["livenessProbe"]["periodSeconds"] >= 60
    pre_stop = int(api["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]  # type: ignore[index]
    assert grace > pre_stop + int(config["API_GRACEFUL_TIMEOUT"]) > pre_stop + float(config["MAX_WAIT_SECONDS"])


@pytest.mark.parametrize("version", ["1", "2", "17", "2024.06.1"])
def test_a_model_version_is_read_only_everywhere_but_in_the_populate_step(version: str) -> None:
    """Any version renders from the same files: no per-version copy to keep in step."""
    volumes = rendered(K8S / "models", modelVersion=version)
    assert sorted(d["kind"] for d in volumes) == ["PersistentVolume"] * 2 + ["PersistentVolumeClaim"] * 2
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in volumes}
    readonly = by_name["PersistentVolume", f"model-reference-{version}"]
    writable = by_name["PersistentVolume", f"model-reference-{version}-populate"]
    claim = by_name["PersistentVolumeClaim", f"model-reference-{version}"]
    assert readonly["spec"]["accessModes"] == ["ReadOnlyMany"] == claim["spec"]["accessModes"]
    assert readonly["spec"]["nfs"]["readOnly"] is True and "ro" in readonly["spec"]["mountOptions"]
    assert readonly["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    # The same directory of the store behind both; each PV pre-bound to its own claim.
    assert readonly["spec"]["nfs"]["path"] == writable["spec"]["nfs"]["path"] == f"/models/reference/{version}"
    for pv in (readonly, writable):
        pvc = by_name["PersistentVolumeClaim", pv["spec"]["claimRef"]["name"]]
        assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
        assert pvc["spec"]["storageClassName"] == "" == pv["spec"]["storageClassName"]
        assert pv["metadata"]["labels"]["model-version"] == version == pvc["metadata"]["labels"]["model-version"]

    job = next(d for d in rendered(K8S / "jobs" / "populate", modelVersion=version) if d["kind"] == "Job")
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

    # Everything else: only ever the read-only claim, read-only.
    for _, doc in all_documents(modelVersion=version):
        for volume in (pod_spec(doc) or {}).get("volumes", []):
            source = volume.get("persistentVolumeClaim", {})
            if source.get("claimName", "").endswith("-populate"):
                assert doc["kind"] == "Job" and doc["metadata"]["name"] == "model-populate"
            elif source.get("claimName", "").startswith("model-reference-"):
                assert source["readOnly"] is True


@pytest.mark.parametrize("name", ["recognition-config", "worker-blue", "worker-green"])
def test_every_setting_in_a_configmap_is_one_the_code_reads(name: str) -> None:
    known = settings_the_code_reads()
    unknown = sorted(set(find("ConfigMap", name)["data"]) - known)
    assert not unknown, f"no code reads {unknown}: a typo, or a setting that was removed"


def test_containers_name_secret_files_that_the_settings_read_as_name_file() -> None:
    known = settings_the_code_reads()
    for _, doc in workloads():
        for c in containers(doc):
            for item in c.get("env", []):
                if item["name"].endswith("_FILE") and item["name"] != "WORKER_READY_FILE":
                    assert item["name"].removesuffix("_FILE") in known, item["name"]
                    mounts = [m["mountPath"] for m in c["volumeMounts"]]
                    assert any(item["value"].startswith(m + "/") for m in mounts), item


def test_rollout_jobs_never_retry_a_refusal_and_every_job_is_recreated_and_cleans_up() -> None:
    jobs = [doc for _, doc in workloads() if doc["kind"] == "Job"]
    assert len(jobs) == 12
    for doc in jobs:
        # Kustomize needs a name; Spinnaker's recreate strategy deletes the last run's Job first.
        assert "generateName" not in doc["metadata"]
        assert doc["metadata"]["annotations"]["strategy.spinnaker.io/recreate"] == "true"
        assert doc["spec"]["ttlSecondsAfterFinished"] > 0 and doc["spec"]["activeDeadlineSeconds"] > 0
        assert pod_spec(doc)["restartPolicy"] == "Never"  # type: ignore[index]
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "model-rollout":
            assert doc["spec"]["backoffLimit"] == 0


def test_the_rollout_jobs_run_the_registry_commands_of_the_pipeline() -> None:
    values = {"modelVersion": "3", "drainVersion": "2", "shadowFraction": "0.2", "canaryWeight": "0.05",
              "minJobs": "80", "judgeTimeoutSeconds": "5400"}
    cli = ["python3", "-m", "models_registry"]
    expected = {
        "status": cli + ["status"],
        "shadow": cli + ["shadow", "3", "--fraction", "0.2"],
        "canary": cli + ["canary", "3", "--weight", "0.05"],
        "judge": cli + ["judge", "3", "--min-jobs", "80", "--wait", "5400", "--interval", "60", "--report-only"],
        "promote": cli + ["promote", "3"],
        "abort": cli + ["abort", "3", "--reason", "judge"],
        "rollback": cli + ["rollback"],
        "drain-wait": ["/app/docker/bin/wait-queue-drained", "2", "--timeout", "3600"],
    }
    for name, command in expected.items():
        job = next(d for d in rendered(K8S / "jobs" / name, **values) if d["kind"] == "Job")
        assert job["metadata"]["name"] == f"model-{name}"
        (c,) = containers(job)
        assert c["name"] == name and c["command"] == command, name
    verify = containers(next(d for d in rendered(K8S / "jobs" / "verify", **values) if d["kind"] == "Job"))[0]
    assert verify["command"][:2] == ["python3", "-c"] and verify["command"][-1] == "3"
    # The judge waits for data inside its Job: the Job's deadline is above the longest wait.
    judge = next(d for d in rendered(K8S / "jobs" / "judge", **values) if d["kind"] == "Job")
    assert judge["spec"]["activeDeadlineSeconds"] >= 86400
    drain = next(d for d in rendered(K8S / "jobs" / "drain-wait", **values) if d["kind"] == "Job")
    assert drain["spec"]["activeDeadlineSeconds"] > 3600


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


def test_without_kubectl_the_render_tests_skip_and_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.deploy import kube

    monkeypatch.setattr(kube.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="kubectl is not installed"):
        kube.rendered(K8S / "api")
