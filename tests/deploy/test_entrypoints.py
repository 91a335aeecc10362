"""The images' entrypoints and the manifests' commands, run for real here outside Docker.

Each container runs as the kubelet would start it: the image's ENV and CMD (Dockerfile.*),
then the ConfigMaps and Secret files the manifest names, its command with $(VAR) expanded,
and container paths mapped onto a temporary directory (/app is this repository). The API
image is a virtualenv holding nothing but requirements/api.txt; the worker image is the
project's full environment (the real TensorFlow worker is covered by tests/integration; here
it loads a null model volume so the whole rollout runs in seconds).

The manifests are the Kustomize roots of k8s/ rendered as the pipelines deploy them (blue
serving version 1, green getting version 2). The rollout rehearsal follows the pipelines:
populate and verify a volume from S3 (moto), start the green workers, check the version is
servable, promote it, serve a photo through the API, start the rollout guard, wait for blue's
queue to drain, and see a rollback refused while blue has no workers.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from common.queues import queue_for
from harness import Process, free_port, spawn, start_redis, wait_until
from tests.deploy.kube import (
    K8S,
    ROOT,
    PathMap,
    base_env,
    base_name,
    configmaps,
    container,
    container_argv,
    container_env,
    image_env,
    image_json_argv,
    one,
    rendered,
    require_kubectl,
    requirement_pins,
    secret_files,
    site_of,
)

pytestmark = pytest.mark.integration

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BLUE_VERSION, GREEN_VERSION = "1", "2"
ROOTS = ("api", "guard", "workers/blue", "workers/green", "jobs/populate", "jobs/status", "jobs/verify",
         "jobs/promote", "jobs/drain-wait", "jobs/rollback")


def deployed(root: str) -> list[dict[str, Any]]:
    """A root as the pipelines deploy it in this rehearsal."""
    version = BLUE_VERSION if root == "workers/blue" else GREEN_VERSION
    return rendered(K8S / root, modelVersion=version, drainVersion=BLUE_VERSION)


@cache
def all_configmaps() -> dict[str, dict[str, str]]:
    """The ConfigMaps the rendered roots create, by their (hashed) names."""
    return {name: data for root in ROOTS for name, data in configmaps(deployed(root)).items()}


def setting_map(name: str) -> dict[str, str]:
    """A ConfigMap's data by its name without the hash suffix."""
    (data,) = {json.dumps(d["data"], sort_keys=True) for root in ROOTS for d in deployed(root)
               if d["kind"] == "ConfigMap" and base_name(d) == name}
    return json.loads(data)


def workload(root: str, kind: str) -> dict[str, Any]:
    return one(deployed(root), kind)


@dataclass
class Cluster:
    """What the containers share: Redis, S3 (moto), the model store, the Secret's values."""

    tmp: Path
    redis_url: str
    s3_url: str
    api_bin: Path
    worker_bin: Path
    api_key: str
    secrets: dict[str, dict[str, str]]

    @property
    def model_store(self) -> Path:
        return self.tmp / "model-store"

    def paths(self, pod: str) -> PathMap:
        # Each pod has its own /tmp (an emptyDir) and secret files; the model store is shared.
        return PathMap({"/app": ROOT, "/models": self.model_store, "/tmp": self.tmp / pod / "tmp",
                        "/run/secrets/recognition": self.tmp / pod / "secrets"})

    def prepare(self, doc: dict[str, Any], name: str, pod: str, *, api_image: bool,
                **extra: str) -> tuple[list[str], dict[str, str]]:
        """argv and environment of container `name` of the manifest `doc`, as pod `pod`."""
        dockerfile = ROOT / ("Dockerfile.api" if api_image else "Dockerfile.worker")
        paths = self.paths(pod)
        (self.tmp / pod / "tmp").mkdir(parents=True, exist_ok=True)
        secret_files(doc, name, self.secrets, paths)
        env = container_env(doc, name, image=image_env(dockerfile), configmaps=all_configmaps(),
                            secrets=self.secrets)
        env = {key: paths(value) for key, value in env.items()}
        bin_dir = self.api_bin if api_image else self.worker_bin
        env |= base_env(f"{bin_dir}:/usr/bin:/bin") | AWS | {"S3_ENDPOINT_URL": self.s3_url} | extra
        argv = [paths(arg) for arg in container_argv(doc, name, env, image_json_argv(dockerfile, "CMD"))]
        return argv, env

    def run(self, doc: dict[str, Any], name: str, pod: str, *, api_image: bool,
            timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        argv, env = self.prepare(doc, name, pod, api_image=api_image, **extra)
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    def start(self, doc: dict[str, Any], name: str, pod: str, *, api_image: bool, **extra: str) -> Process:
        argv, env = self.prepare(doc, name, pod, api_image=api_image, **extra)
        return spawn(pod, argv, env, self.tmp / "logs")

    def probe(self, doc: dict[str, Any], name: str, pod: str, kind: str) -> bool:
        """Run an exec probe of the container the way the kubelet does: inside its environment."""
        argv, env = self.prepare(doc, name, pod, api_image=False)
        command = [self.paths(pod)(arg) for arg in container(doc, name)[kind]["exec"]["command"]]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from recognition_api.auth import new_key

    require_kubectl()
    tmp = tmp_path_factory.mktemp("cluster")
    redis_process, redis_url = start_redis(tmp)
    # A replica, as k8s/redis.yaml has: the API acknowledges a job once one holds it (config.yaml).
    replica_process, _ = start_redis(tmp / "replica", replica_of=int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    port = free_port()
    moto = spawn("moto", [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                 {**os.environ, **AWS}, tmp / "logs")
    s3_url = f"http://127.0.0.1:{port}"
    api_bin = site_of(list(requirement_pins(ROOT / "requirements" / "api.txt")), tmp / "api-image")
    key, digest = new_key()
    secrets = {"recognition-secrets": {"api-keys": f"tests:{digest}", "redis-url": redis_url,
                                       "django-secret-key": "tests", "redis-password": ""}}
    try:
        wait_until(lambda: httpx.get(s3_url).status_code < 500, 30, "moto_server")
        yield Cluster(tmp, redis_url, s3_url, api_bin, Path(sys.executable).parent, key, secrets)
    finally:
        moto.stop()
        replica_process.kill()
        redis_process.kill()


def s3(cluster: Cluster):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=cluster.s3_url, **{
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"})


def upload_volume(cluster: Cluster, version: str) -> None:
    """What an ML engineer does after `models_registry build`: the version directory to S3."""
    from models_registry.build import build_null

    source = cluster.tmp / "built"
    build_null(source, version)
    bucket, _, prefix = setting_map("recognition-config")["MODEL_SOURCE_URL"].removeprefix("s3://").partition("/")
    client = s3(cluster)
    client.create_bucket(Bucket=bucket)
    for path in sorted((source / "reference" / version).rglob("*")):
        if path.is_file():
            key = f"{prefix}/reference/{version}/{path.relative_to(source / 'reference' / version)}"
            client.upload_file(str(path), bucket, key)


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def probe_http(probe: dict[str, Any], port: int) -> int:
    headers = {h["name"]: h["value"] for h in probe["httpGet"].get("httpHeaders", [])}
    return httpx.get(f"http://127.0.0.1:{port}{probe['httpGet']['path']}", headers=headers, timeout=5).status_code


def test_the_api_image_cannot_import_tensorflow_keras_or_the_test_tools(cluster: Cluster) -> None:
    python = str(cluster.api_bin / "python3")
    assert subprocess.run([python, "-c", "import django, celery, numpy, PIL, boto3, redis"], cwd=ROOT).returncode == 0
    for module in ("tensorflow", "keras", "onnxruntime", "cv2", "moto", "pytest"):
        result = subprocess.run([python, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True)
        assert "ModuleNotFoundError" in result.stderr, module


def test_the_worker_probe_passes_on_a_fresh_ready_file_only(tmp_path: Path) -> None:
    probe = ROOT / "docker" / "bin" / "probe-worker-ready"
    ready = tmp_path / "worker-ready"
    env = {"PATH": "/usr/bin:/bin", "WORKER_READY_FILE": str(ready)}

    def passes(*args: str) -> bool:
        return subprocess.run([str(probe), *args], env=env, capture_output=True).returncode == 0

    assert not passes("20")
    ready.write_text(f"{time.time()}\n")
    assert passes("20")
    assert passes("20", str(ready))
    stale = time.time() - 60
    os.utime(ready, (stale, stale))
    assert not passes("20") and passes("300")
    assert subprocess.run([str(probe)], env=env, capture_output=True).returncode != 0  # no age given


def test_the_readiness_probe_also_needs_redis_to_have_taken_the_heartbeat_lately(tmp_path: Path) -> None:
    probe = ROOT / "docker" / "bin" / "probe-worker-ready"
    ready = tmp_path / "worker-ready"
    env = {"PATH": "/usr/bin:/bin", "WORKER_READY_FILE": str(ready)}

    def ready_now(*args: str) -> bool:
        return subprocess.run([str(probe), "--reaching-redis", *args], env=env, capture_output=True).returncode == 0

    ready.write_text(f"{time.time()}\n")
    assert ready_now("20")
    ready.write_text(f"{time.time() - 60}\n")  # touched now (alive), Redis unreachable for a minute
    assert not ready_now("20")
    assert subprocess.run([str(probe), "20"], env=env).returncode == 0, "alive all the same"
    ready.write_text("0.0\n")  # Redis never took a heartbeat
    assert not ready_now("20")


def test_the_populate_step_refuses_a_version_that_is_not_in_s3(cluster: Cluster) -> None:
    job = one(rendered(K8S / "jobs" / "populate", modelVersion="9"), "Job")
    (cluster.model_store / "reference" / "9").mkdir(parents=True)
    s3(cluster).create_bucket(Bucket="example-models")
    result = cluster.run(job, "fetch", "populate-missing", api_image=True)
    assert result.returncode == 1 and "no manifest.json under s3://example-models/models/reference/9/" in result.stderr
    assert not any((cluster.model_store / "reference" / "9").iterdir())


def test_the_manifests_commands_roll_out_a_model_version_end_to_end(cluster: Cluster) -> None:
    client = redis.Redis.from_url(cluster.redis_url)
    config = setting_map("recognition-config")
    green = workload("workers/green", "Deployment")
    version = setting_map("worker-green")["WORKER_MODEL_VERSION"]
    assert version == GREEN_VERSION
    processes: list[Process] = []
    try:
        # 1. model-volume.json: fetch from S3 through the writable claim, verify read-only.
        upload_volume(cluster, version)
        s3(cluster).create_bucket(Bucket=config["IMAGE_STORE_URL"].removeprefix("s3://").split("/")[0])
        (cluster.model_store / "reference" / version).mkdir(parents=True)  # the volume's mount point
        populate = workload("jobs/populate", "Job")
        fetched = cluster.run(populate, "fetch", "populate", api_image=True)
        assert fetched.returncode == 0, fetched.stderr
        assert (cluster.model_store / "reference" / version / "manifest.json").is_file()
        verified = cluster.run(populate, "verify", "populate", api_image=False, timeout=120)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "golden outputs match" in verified.stdout and "recorded in Redis" in verified.stdout
        again = cluster.run(populate, "fetch", "populate-again", api_image=True)
        assert again.returncode == 0 and "never written again" in again.stdout

        # 2. model-rollout.json: the green workers start; their probes pass once the model is in.
        ready_file = cluster.paths("worker-green")(config["WORKER_READY_FILE"])
        Path(ready_file).parent.mkdir(parents=True, exist_ok=True)
        Path(ready_file).write_text("left by a container of this pod that crashed\n")
        worker = cluster.start(green, "worker", "worker-green", api_image=False)
        processes.append(worker)
        # The entrypoint removes the old ready file before anything else, so a restarted
        # container is not ready until its own model is loaded.
        wait_until(lambda: not Path(ready_file).exists() or "crashed" not in Path(ready_file).read_text(), 5,
                   "the stale ready file to go")
        wait_until(lambda: cluster.probe(green, "worker", "worker-green", "readinessProbe"), 60,
                   "the green worker's readiness probe")
        for kind in ("startupProbe", "livenessProbe"):
            assert cluster.probe(green, "worker", "worker-green", kind), kind
        status = cluster.run(workload("jobs/status", "Job"), "status", "status", api_image=True)
        assert status.returncode == 0, status.stderr
        # version, role (none yet), ready workers, queue depth, verified
        assert [version, "1", "0", "yes"] in [line.split()[:4] for line in status.stdout.splitlines()], status.stdout

        # The API, from its manifest and image: probes, Docker's healthcheck, readiness.
        port = free_port()
        api_doc = workload("api", "Deployment")
        api = cluster.start(api_doc, "api", "api", api_image=True, API_BIND=f"127.0.0.1:{port}")
        processes.append(api)
        api_container = container(api_doc, "api")
        wait_until(lambda: probe_http(api_container["readinessProbe"], port) == 200, 30, "the API's readiness probe")
        assert probe_http(api_container["livenessProbe"], port) == 200
        # Docker's HEALTHCHECK, in the container's environment (API_BIND as the image sets it).
        _, env = cluster.prepare(api_doc, "api", "api", api_image=True, API_BIND=f"0.0.0.0:{port}")
        healthcheck = [cluster.paths("api")(a) for a in image_json_argv(ROOT / "Dockerfile.api", "HEALTHCHECK")]
        assert subprocess.run(healthcheck, cwd=ROOT, env=env).returncode == 0
        # Not ready until a version with ready workers is active, and still in the Service.
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", headers={"Host": "localhost"}).status_code == 503

        # Promote the green version (manual judgment: continue).
        # model-rollout.json: the candidate is servable (verified, ready workers) ...
        verify = cluster.run(workload("jobs/verify", "Job"), "verify", "verify", api_image=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert f"version {version}: verified, 1 ready workers" in verify.stdout
        # ... and the same check stops the pipeline for a version nobody populated.
        unknown = cluster.run(one(rendered(K8S / "jobs" / "verify", modelVersion="99"), "Job"), "verify", "verify",
                              api_image=True)
        assert unknown.returncode == 1 and "version 99 has not passed verify" in unknown.stderr
        # ... and the judge says promote (the judge's own tests cover its verdicts).
        promoted = cluster.run(workload("jobs/promote", "Job"), "promote", "promote", api_image=True)
        assert promoted.returncode == 0, promoted.stderr
        assert f"active: {version}" in promoted.stdout
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", headers={"Host": "localhost"}).status_code == 200
        answer = httpx.post(f"http://127.0.0.1:{port}/recognize?wait=10",
                            headers={"Authorization": f"Bearer {cluster.api_key}", "Host": "localhost"},
                            files={"image": ("photo.jpg", jpeg(), "image/jpeg")}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "succeeded" and answer.json()["model"]["version"] == version

        # Keep: wait until blue's queue is drained before blue is scaled down.
        blue_version = setting_map("worker-blue")["WORKER_MODEL_VERSION"]
        assert blue_version == BLUE_VERSION
        client.rpush(queue_for(blue_version), json.dumps({"stranded": True}))
        # The rollout guard, from its manifest: it starts watching, and publishes its gauges.
        guard = cluster.start(workload("guard", "Deployment"), "guard", "guard", api_image=True)
        processes.append(guard)
        wait_until(lambda: "guard: checking every 30 s over the last 10m" in guard.output(), 30,
                   "the guard to start")
        assert guard.alive(), guard.output()

        drain = cluster.start(workload("jobs/drain-wait", "Job"), "drain-wait", "drain", api_image=True)
        processes.append(drain)
        wait_until(lambda: "still holds 1 jobs" in drain.output(), 15, "the drain wait to see the stranded job")
        assert drain.alive(), drain.output()
        client.delete(queue_for(blue_version))
        wait_until(lambda: not drain.alive(), 15, "the drain wait")
        assert drain.popen.returncode == 0, drain.output()
        assert f"{queue_for(blue_version)} is empty" in drain.output()

        # Roll back: refused while blue has no ready workers (model-rollback.json scales it up first).
        rolled = cluster.run(workload("jobs/rollback", "Job"), "rollback", "rollback", api_image=True)
        assert rolled.returncode == 1 and "refused" in rolled.stderr

        # Scale-down: SIGTERM drains the worker; it stops advertising readiness and exits cleanly.
        worker.popen.send_signal(signal.SIGTERM)
        worker.popen.wait(120)
        assert worker.popen.returncode == 0, worker.output()[-3000:]
        assert not cluster.probe(green, "worker", "worker-green", "readinessProbe")
        assert api.stop() == 0
    finally:
        for process in reversed(processes):
            process.stop(timeout=30)
        client.close()
