"""GET /v1/rollout: the rollout report for a key with the ops scope, the same report the
registry CLI's ``status --json`` prints (common.rolloutreport builds it for both)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rest_framework.test import APIClient

from common import heartbeat, livestats
from common.queues import queue_for
from common.rollout import rollout_key, verified_key
from recognition_api.auth import new_key
from tests.recognition_api.conftest import Api

RESULT = {"name": {"value": "Red cup", "confidence": 0.9},
          "category": {"value": "kitchen_tableware", "confidence": 0.9},
          "brand": {"value": None, "confidence": 0.0}, "color": {"value": "red", "confidence": 0.5}}


@pytest.fixture
def ops_client(api: Api, settings) -> APIClient:  # type: ignore[no-untyped-def]
    """A client whose key has the ops scope, next to the fixture's plain key ("app")."""
    key, digest = new_key()
    settings.API_KEYS = f"{settings.API_KEYS},ops:{digest};scopes=ops"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.fixture
def seeded(api: Api) -> dict[str, str]:
    """Active = the fixture's version with two ready workers and feedback, a canary at 25 % that
    is also the shadow at 50 %, with one comparison and two queued messages."""
    active, candidate = api.version, f"{api.version}c"
    client, prefix = api.redis, api.prefix
    client.hset(rollout_key(prefix), mapping={"active": active, "canary": candidate, "canary_weight": "0.25",
                                              "shadow": candidate, "shadow_fraction": "0.5",
                                              "updated_by": "me@host", "updated_at": "1700000000.5"})
    for worker in ("w1", "w2"):
        heartbeat.beat(client, prefix=prefix, version=active, worker_id=f"{worker}:1", ttl_seconds=60, info={})
    heartbeat.beat(client, prefix=prefix, version=candidate, worker_id="w3:1", ttl_seconds=60, info={})
    client.hset(verified_key(prefix, active), "manifest_sha256", "abc")
    client.rpush(queue_for(candidate), b"m1", b"m2")
    pipe = client.pipeline()
    for _ in range(3):
        livestats.record_finish(pipe, prefix=prefix, version=active, status="succeeded", latency_ms=300, result=RESULT)
    livestats.record_comparison(pipe, prefix=prefix, candidate=candidate, active=active,
                                outcomes=livestats.compare_results(RESULT, RESULT), active_ms=200, candidate_ms=300)
    livestats.record_feedback(pipe, prefix=prefix, version=active, source="live",
                              outcomes={"category": "accepted", "color": "changed"})
    pipe.execute()
    yield {"active": active, "candidate": candidate}
    client.delete(queue_for(candidate))


def test_without_a_key_it_is_401(api: Api) -> None:
    api.client.credentials()
    response = api.client.get("/v1/rollout")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_with_a_wrong_key_it_is_401(api: Api) -> None:
    api.client.credentials(HTTP_AUTHORIZATION="Bearer rk_not-a-key")
    response = api.client.get("/v1/rollout")
    assert response.status_code == 401
    assert response.json()["error"] == {"code": "invalid_api_key", "message": "This API key is not valid."}


def test_a_key_without_the_ops_scope_is_refused_with_403(api: Api) -> None:
    response = api.client.get("/v1/rollout")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "permission_denied" and "'ops' scope" in error["message"]


def test_an_ops_key_reads_the_rollout_state(api: Api, ops_client: APIClient, seeded: dict[str, str]) -> None:
    response = ops_client.get("/v1/rollout")
    assert response.status_code == 200, response.content
    body = response.json()
    active, candidate = seeded["active"], seeded["candidate"]
    assert {k: body[k] for k in ("active", "previous", "canary", "canary_weight", "shadow", "shadow_fraction",
                                 "updated_by", "updated_at", "window_seconds")} == {
        "active": active, "previous": None, "canary": candidate, "canary_weight": 0.25, "shadow": candidate,
        "shadow_fraction": 0.5, "updated_by": "me@host", "updated_at": 1700000000.5, "window_seconds": 86400.0}
    rows = {row["version"]: row for row in body["versions"]}
    assert set(rows) == {active, candidate}
    assert (rows[active]["role"], rows[active]["ready_workers"], rows[active]["verified"], rows[active]["jobs"]) == (
        "active", 2, True, 3)
    assert rows[active]["accuracy"] == {"name": None, "category": 1.0, "brand": None, "color": 0.0}
    assert rows[active]["feedback"] == {"name": 0, "category": 1, "brand": 0, "color": 1}
    assert "shadow_agreement" not in rows[active]
    assert (rows[candidate]["role"], rows[candidate]["ready_workers"], rows[candidate]["queue_depth"],
            rows[candidate]["queue"], rows[candidate]["verified"]) == ("canary", 1, 2, queue_for(candidate), False)
    assert rows[candidate]["shadow_agreement"] == {"name": 1.0, "category": 1.0, "brand": 1.0, "color": 1.0}
    assert rows[candidate]["shadow_compared"] == 1


def test_the_window_is_a_number_of_seconds(api: Api, ops_client: APIClient) -> None:
    assert ops_client.get("/v1/rollout?window=3600").json()["window_seconds"] == 3600.0
    response = ops_client.get("/v1/rollout?window=24h")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameter"
    assert ops_client.get("/v1/rollout?window=10").status_code == 400


def test_the_api_answers_what_the_registry_cli_prints(api: Api, ops_client: APIClient, seeded: dict[str, str]) -> None:
    from models_registry.cli import cli

    printed = CliRunner().invoke(cli, ["status", "--json"], catch_exceptions=False)
    assert printed.exit_code == 0, printed.output
    assert ops_client.get("/v1/rollout").json() == json.loads(printed.output)


def test_the_registry_cli_prints_the_same_table(api: Api, seeded: dict[str, str]) -> None:
    from models_registry.cli import cli

    active, candidate = seeded["active"], seeded["candidate"]
    lines = CliRunner().invoke(cli, ["status"], catch_exceptions=False).output.splitlines()
    assert lines[0] == f"active: {active}   previous: -   canary: {candidate} at 25%   shadow: {candidate} at 50%"
    assert lines[2].split() == [active, "active", "2", "0", "yes", "3", "-/100%/-/0%"]
    assert lines[3].split() == [candidate, "canary", "1", "2", "no", "0", "-/-/-/-"]
    assert lines[4].strip() == f"shadow agreement with {active}: 100%/100%/100%/100% (1 compared)"


def test_redis_down_is_503_not_500(api: Api, ops_client: APIClient, settings) -> None:  # type: ignore[no-untyped-def]
    from tests.recognition_api.conftest import reset_services

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    reset_services()
    response = ops_client.get("/v1/rollout")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable" and response["Retry-After"]
