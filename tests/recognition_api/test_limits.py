"""Per-key ownership and limits, in-process on a real Redis: a job is its key's; a key has a rate,
a share of the queue, and (for a shared mobile key) a rate per device."""

from __future__ import annotations

from rest_framework.test import APIClient

from recognition_api.auth import new_key
from tests.recognition_api.conftest import Api, photo


def with_keys(api: Api, settings, **entries: str) -> dict[str, APIClient]:  # type: ignore[no-untyped-def]
    """Replace API_KEYS with one key per entry (``name="<options>"``); a client for each."""
    clients, lines = {}, []
    for name, options in entries.items():
        key, digest = new_key()
        lines.append(f"{name}:{digest}{';' + options if options else ''}")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        clients[name] = client
    settings.API_KEYS = ",".join(lines)
    return clients


def post(client: APIClient, **headers: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/recognize", {"image": photo()}, format="multipart", **headers)


def test_a_job_is_visible_only_to_its_key_and_to_ops(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    keys = with_keys(api, settings, shop="", other="", support="scopes=ops")
    job_id = post(keys["shop"]).json()["id"]
    assert keys["shop"].get(f"/v1/recognitions/{job_id}").status_code == 202
    refused = keys["other"].get(f"/v1/recognitions/{job_id}?wait=1")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "job_not_found"
    assert keys["support"].get(f"/v1/recognitions/{job_id}").json()["id"] == job_id


def test_a_key_over_its_rate_gets_429_with_retry_after_and_leaves_nothing(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    keys = with_keys(api, settings, slow="rate=0.5;burst=2", fast="")
    assert [post(keys["slow"]).status_code for _ in range(2)] == [202, 202]
    refused = post(keys["slow"])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 2
    assert post(keys["fast"]).status_code == 202  # one key's limit is its own
    assert len(api.messages()) == 3 and len(api.stored_images()) == 3


def test_a_shared_key_is_limited_per_device_that_names_itself(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    keys = with_keys(api, settings, app="device_rate=0.5")
    phone = {"HTTP_X_DEVICE_ID": "install-1"}
    assert [post(keys["app"], **phone).status_code for _ in range(3)] == [202] * 3  # its burst
    assert post(keys["app"], **phone).status_code == 429
    assert post(keys["app"], HTTP_X_DEVICE_ID="install-2").status_code == 202
    assert post(keys["app"]).status_code == 202  # without the header only the key's own rate applies


def test_a_key_holding_its_share_of_the_queue_waits_for_its_jobs_to_finish(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    keys = with_keys(api, settings, batch="max_jobs=2", app="")
    first = post(keys["batch"]).json()["id"]
    assert post(keys["batch"]).status_code == 202
    refused = post(keys["batch"])
    assert refused.status_code == 429 and "2 unfinished jobs" in refused.json()["error"]["message"]
    assert post(keys["app"]).status_code == 202  # the others still get in
    api.jobs().fail(first, "image_decode_failed", "x", model_version=api.version)
    assert post(keys["batch"]).status_code == 202  # a finished job frees its place


def test_a_late_job_is_refused_before_its_upload_is_stored(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    import time

    jobs = api.jobs()
    ids = []
    for _ in range(30):  # a backlog, and a completion rate to estimate its wait with
        ids.append(jobs.new_id())
        jobs.create(job_id=ids[-1], fields={}, default_version=api.version, max_queue_depth=0, canary_draw=0.5)
    for job_id in ids[:10]:
        jobs.succeed(job_id, result={}, timings={}, model_version=api.version)
    time.sleep(1.1)  # completions are counted by the second
    refused = api.client.post("/v1/recognize?wait=1", {"image": photo()}, format="multipart")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
    assert int(refused["Retry-After"]) >= 1
    assert "more than the 1 s this request allows" in refused.json()["error"]["message"]
    assert api.stored_images() == [] and api.messages() == []
    assert api.client.post("/v1/recognize", {"image": photo()}, format="multipart").status_code == 202  # async fits
