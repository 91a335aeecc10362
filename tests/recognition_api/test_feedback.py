"""Seller feedback and shadow copies through the API in-process, on a real Redis."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from common import livestats
from common.queues import queue_for
from common.rollout import rollout_key
from recognition_api.auth import new_key
from tests.recognition_api.conftest import Api, post

RESULT = {
    "name": {"value": "Red mug", "confidence": 0.6},
    "category": {"value": "kitchen_tableware", "confidence": 0.8},
    "brand": {"value": None, "confidence": 0.1},
    "color": {"value": "red", "confidence": 0.7},
}


def finished_job(api: Api, result: dict = RESULT) -> str:  # type: ignore[assignment]
    job_id = post(api).json()["id"]
    api.jobs().succeed(job_id, result=result, timings={}, model_version=api.version)
    return job_id


def feedback(api: Api, job_id: str, body: object):  # type: ignore[no-untyped-def]
    return api.client.post(f"/v1/recognitions/{job_id}/feedback", body, format="json")


def counted(api: Api, version: str) -> dict[str, dict[str, dict[str, int]]]:
    return livestats.feedback_by_source(api.redis, prefix=api.prefix, version=version, window_seconds=600)


def test_feedback_is_kept_once_and_counted_per_version_and_field(api: Api) -> None:
    job_id = finished_job(api)
    response = feedback(api, job_id, {"name": "Red mug", "category": "home", "brand": "Nordvik"})
    assert response.status_code == 201, response.content
    assert response.json()["outcomes"] == {"name": "accepted", "category": "changed", "brand": "filled"}
    assert response.json()["model"]["version"] == api.version
    assert counted(api, api.version) == {"live": {"name": {"accepted": 1}, "category": {"changed": 1},
                                                  "brand": {"filled": 1}}}
    again = feedback(api, job_id, {"color": "blue"})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "feedback_exists")
    assert counted(api, api.version)["live"].get("color") is None


def test_feedback_needs_a_succeeded_job_of_the_same_key(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    queued = post(api).json()["id"]
    response = feedback(api, queued, {"color": "red"})
    assert (response.status_code, response.json()["error"]["code"]) == (409, "job_not_succeeded")
    job_id = finished_job(api)
    other_key, digest = new_key()
    settings.API_KEYS = f"{settings.API_KEYS},other:{digest}"
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {other_key}")
    response = other.post(f"/v1/recognitions/{job_id}/feedback", {"color": "red"}, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "job_not_found")
    assert not counted(api, api.version)


@pytest.mark.parametrize("body", [{}, {"colour": "red"}, {"color": 5 * "x" * 100}, ["red"]])
def test_malformed_feedback_is_a_400_with_its_code(api: Api, body: object) -> None:
    response = feedback(api, finished_job(api), body)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_parameter"), response.content


def test_feedback_must_be_json(api: Api) -> None:
    response = api.client.post(f"/v1/recognitions/{finished_job(api)}/feedback", {"color": "red"},
                               format="multipart")
    assert (response.status_code, response.json()["error"]["code"]) == (415, "unsupported_media_type")


def test_a_shadow_copy_is_queued_for_the_shadow_version_and_never_shown(api: Api) -> None:
    shadow_version = f"{api.version}s"
    api.redis.hset(rollout_key(api.prefix), mapping={"shadow": shadow_version, "shadow_fraction": "1.0"})
    try:
        job_id = post(api).json()["id"]
        record = api.jobs().get(job_id)
        assert record is not None and record["model_version"] == api.version
        shadow = api.jobs().get(record["shadow_id"])
        assert shadow is not None
        assert (shadow["model_version"], shadow["shadow_of"], shadow["image_key"]) == (
            shadow_version, job_id, record["image_key"])
        assert "client" not in shadow and shadow["deadline"] == record["deadline"]
        assert api.redis.llen(queue_for(shadow_version)) == 1
        response = api.client.get(f"/v1/recognitions/{record['shadow_id']}")
        assert response.status_code == 404
        # The seller's feedback scores the shadow version's answer too.
        api.jobs().succeed(job_id, result=RESULT, timings={}, model_version=api.version)
        api.jobs().succeed(record["shadow_id"], result={**RESULT, "color": {"value": "orange", "confidence": 0.5}},
                           timings={}, model_version=shadow_version)
        assert feedback(api, job_id, {"color": "red"}).status_code == 201
        assert counted(api, shadow_version) == {"shadow": {"color": {"changed": 1}}}
        assert counted(api, api.version) == {"live": {"color": {"accepted": 1}}}
        assert feedback(api, record["shadow_id"], {"color": "red"}).status_code == 404
    finally:
        api.redis.delete(queue_for(shadow_version))


def test_a_shadow_copy_is_dropped_not_queued_while_its_queue_is_behind(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    shadow_version = f"{api.version}s"
    settings.SHADOW_MAX_QUEUE_DEPTH = 1
    api.redis.hset(rollout_key(api.prefix), mapping={"shadow": shadow_version, "shadow_fraction": "1.0"})
    try:
        first, second = post(api).json()["id"], post(api)
        assert second.status_code == 202
        assert api.redis.llen(queue_for(shadow_version)) == 1
        assert "shadow_id" in api.jobs().get(first) and "shadow_id" not in api.jobs().get(second.json()["id"])
        figures = livestats.version_figures(api.redis, prefix=api.prefix, version=shadow_version, window_seconds=600)
        assert figures.shadow_dropped == 1
    finally:
        api.redis.delete(queue_for(shadow_version))
