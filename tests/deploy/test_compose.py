"""docker/compose.yaml: a local full stack from the repo's Dockerfiles, checked without Docker."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.kube import IMAGES, ROOT, image_env, image_name, settings_the_code_reads

COMPOSE = ROOT / "docker" / "compose.yaml"
GPU = ROOT / "docker" / "compose.gpu.yaml"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_compose_file_runs_redis_the_api_and_one_worker() -> None:
    services = compose()["services"]
    assert {"redis", "api", "worker"} <= set(services)
    assert "deploy" not in services["worker"] or services["worker"]["deploy"].get("replicas", 1) == 1
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["redis"]["healthcheck"]["test"][0] == "CMD"


def test_the_api_and_worker_are_built_from_the_repos_dockerfiles_under_the_names_k8s_uses() -> None:
    services = compose()["services"]
    expected = (("api", "Dockerfile.api"), ("worker", "Dockerfile.worker"), ("images-volume", "Dockerfile.api"))
    for name, dockerfile in expected:
        build = services[name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).is_file()
        assert build["dockerfile"] == dockerfile
        assert IMAGES[image_name(services[name]["image"])] == dockerfile


def test_the_worker_mounts_the_model_volumes_read_only_at_the_images_model_root() -> None:
    worker = compose()["services"]["worker"]
    model_root = image_env(ROOT / "Dockerfile.worker")["MODEL_ROOT"]
    mounts = [m for m in worker["volumes"] if isinstance(m, dict) and m["target"] == model_root]
    assert len(mounts) == 1
    assert mounts[0]["read_only"] is True and mounts[0]["type"] == "bind"
    # The directory scripts/setup builds the reference versions into.
    assert (COMPOSE.parent / mounts[0]["source"]).resolve() == ROOT / "var" / "models"
    assert worker["stop_grace_period"] == "120s"


def test_api_and_worker_share_the_photo_store_and_the_api_listens_on_loopback_only() -> None:
    services = compose()["services"]
    for name in ("api", "worker"):
        url = services[name]["environment"]["IMAGE_STORE_URL"]
        assert url.startswith("file:///")
        store = url.removeprefix("file://")
        assert any(isinstance(v, str) and v.endswith(":" + store) for v in services[name]["volumes"])
        assert services[name]["read_only"] is True and services[name]["tmpfs"] == ["/tmp"]
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert set(compose()["volumes"]) >= {"images", "redis-data"}


def test_every_variable_the_compose_file_sets_is_one_the_code_reads() -> None:
    known = settings_the_code_reads()
    for name in ("api", "worker"):
        unknown = set(compose()["services"][name]["environment"]) - known
        assert not unknown, f"{name}: {unknown}"


def test_the_gpu_override_only_reserves_a_gpu_for_the_worker() -> None:
    override = yaml.safe_load(GPU.read_text())
    assert set(override) == {"services"} and set(override["services"]) == {"worker"}
    devices = override["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]

