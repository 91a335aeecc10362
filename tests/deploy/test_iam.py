"""The cloud permissions of each service account (k8s/iam/<name>.json, AWS IAM policies) against
the S3 calls its code makes: every call allowed, nothing allowed that no code calls, and every
resource the configured bucket and prefix. The API reads photos by image_url only where
IMAGE_URL_ALLOWED says: its policy allows exactly those folders (none while the setting is empty)."""

from __future__ import annotations

import inspect
import json
import re

import pytest

from common.imagestore import S3ImageStore
from common.imageurl import S3ObjectReader, parse_image_url_allowed
from tests.deploy.kube import K8S, ROOT, all_documents, find, pod_spec

IAM = K8S / "iam"
# boto3 call -> the IAM action it needs
ACTIONS = {
    "put_object": "s3:PutObject",
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",  # HEAD needs GetObject
    "delete_object": "s3:DeleteObject",
    "download_file": "s3:GetObject",
    "list_objects_v2": "s3:ListBucket",
    "get_bucket_lifecycle_configuration": "s3:GetLifecycleConfiguration",
    "put_bucket_lifecycle_configuration": "s3:PutLifecycleConfiguration",
}
_CALL = re.compile(r"\b(?:self\.client|s3)\.(?:get_paginator\(\")?(\w+)")


def s3_calls(source: str) -> set[str]:
    return {name for name in _CALL.findall(source) if name in ACTIONS}


def store_methods_called(package: str, receiver: str) -> set[str]:
    """The image-store methods a package calls (``image_store().put(...)``, ``images.get(...)``)."""
    pattern = re.compile(rf"{receiver}\.(\w+)\(")
    return {m for path in (ROOT / package).glob("*.py") for m in pattern.findall(path.read_text())}


def store_calls(methods: set[str]) -> set[str]:
    return set().union(*(s3_calls(inspect.getsource(getattr(S3ImageStore, m))) for m in methods))


# The statement of the API's policy that lets it read photos by image_url.
IMAGE_URL_SID = "ReadPhotosByImageUrl"


def image_url_resources() -> list[str]:
    """The ARNs of the folders IMAGE_URL_ALLOWED (ConfigMap) lets the API read; none: image_url is off."""
    entries = find("ConfigMap", "recognition-config")["data"].get("IMAGE_URL_ALLOWED", "").split(",")
    allowed = parse_image_url_allowed(e.strip() for e in entries if e.strip())
    return [f"arn:aws:s3:::{p.bucket}/{p.prefix}*" for p in allowed]


def code_calls() -> dict[str, set[str]]:
    api = store_methods_called("recognition_api", r"image_store\(\)")
    reads = store_methods_called("recognition_api", r"image_url_reader\(\)")
    worker = store_methods_called("workers", r"images")
    assert api == {"put", "delete"} and reads == {"read"} and worker == {"get", "purge_expired"}, (api, reads, worker)
    by_url = s3_calls(inspect.getsource(S3ObjectReader)) if image_url_resources() else set()
    return {
        "recognition-api": store_calls(api) | by_url,
        "recognition-worker": store_calls(worker),
        "image-lifecycle": store_calls({"install_lifecycle"}),
        "model-populate": s3_calls((ROOT / "docker" / "bin" / "fetch-model-volume").read_text()),
        "model-rollout": set(),
        "rollout-guard": set(),
        "redis": set(),
    }


def policy(name: str) -> list[dict]:
    return json.loads((IAM / f"{name}.json").read_text())["Statement"]


def s3_url(setting: str) -> tuple[str, str]:
    bucket, _, prefix = find("ConfigMap", "recognition-config")["data"][setting].removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def test_every_service_account_that_calls_s3_has_a_policy_and_no_other_does() -> None:
    accounts = {doc["metadata"]["name"] for _, doc in all_documents() if doc["kind"] == "ServiceAccount"}
    calls = code_calls()
    assert set(calls) == accounts
    assert {p.stem for p in IAM.glob("*.json")} == {name for name, made in calls.items() if made}
    # Each pod runs under the account whose code it runs.
    used = {pod_spec(doc)["serviceAccountName"] for _, doc in all_documents() if pod_spec(doc)}  # type: ignore[index]
    assert used == accounts


@pytest.mark.parametrize("name", sorted(p.stem for p in IAM.glob("*.json")))
def test_a_policy_allows_exactly_the_calls_its_code_makes_on_the_configured_bucket(name: str) -> None:
    bucket, prefix = s3_url("MODEL_SOURCE_URL" if name == "model-populate" else "IMAGE_STORE_URL")
    reads = image_url_resources() if name == "recognition-api" else []
    check_policy(name, policy(name), calls=code_calls()[name], bucket=bucket, prefix=prefix, image_url_reads=reads)


def test_the_api_may_read_by_image_url_exactly_the_folders_configured() -> None:
    store = {"Sid": "StoreAndForgetPhotos", "Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"],
             "Resource": "arn:aws:s3:::photos/recognition/*"}
    reads = ["arn:aws:s3:::listing/uploads/*", "arn:aws:s3:::other/*"]
    by_url = {"Sid": IMAGE_URL_SID, "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": reads}
    calls = {"put_object", "delete_object"} | s3_calls(inspect.getsource(S3ObjectReader))
    assert calls == {"put_object", "delete_object", "head_object", "get_object"}

    def check(statements: list[dict], reads: list[str], calls: set[str] = calls) -> None:
        check_policy("recognition-api", statements, calls=calls, bucket="photos", prefix="recognition",
                     image_url_reads=reads)

    check([store, by_url], reads)
    check([store], [], calls={"put_object", "delete_object"})  # image_url off: no read at all
    with pytest.raises(AssertionError, match="allowed"):
        check([store], reads)  # configured, but the role may not read
    with pytest.raises(AssertionError, match="image_url"):
        check([store, {**by_url, "Resource": "arn:aws:s3:::listing/*"}], reads)  # wider than configured
    with pytest.raises(AssertionError, match="image_url"):
        check([store, {**by_url, "Resource": reads[:1]}], reads)  # a configured folder missing


def check_policy(name: str, statements: list[dict], *, calls: set[str], bucket: str, prefix: str,
                 image_url_reads: list[str]) -> None:
    allowed = {action for statement in statements for action in statement["Action"]}
    needed = {ACTIONS[call] for call in calls}
    assert allowed == needed, f"{name}: allowed {sorted(allowed)}, the code calls {sorted(needed)}"
    by_url = [s for s in statements if s.get("Sid") == IMAGE_URL_SID]
    if image_url_reads:
        assert len(by_url) == 1 and by_url[0]["Action"] == ["s3:GetObject"], f"{name}: one {IMAGE_URL_SID} statement"
        resources = by_url[0]["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        assert sorted(resources) == sorted(image_url_reads), (
            f"{name}: image_url reads {sorted(resources)}, IMAGE_URL_ALLOWED is {sorted(image_url_reads)}")
    else:
        assert not by_url, f"{name}: {IMAGE_URL_SID} while IMAGE_URL_ALLOWED is empty (image_url is off)"
    for statement in statements:
        assert statement["Effect"] == "Allow"
        if statement in by_url:
            continue
        resource = statement["Resource"]
        if any(action in ("s3:ListBucket", "s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration")
               for action in statement["Action"]):
            assert resource == f"arn:aws:s3:::{bucket}"  # bucket-level actions
        else:
            assert resource == f"arn:aws:s3:::{bucket}/{prefix}/*", f"{name}: {resource} is wider than the prefix"
        if "s3:ListBucket" in statement["Action"]:
            assert statement["Condition"]["StringLike"]["s3:prefix"] == [f"{prefix}/*"]

