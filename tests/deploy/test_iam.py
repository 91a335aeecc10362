"""The cloud permissions of each service account (k8s/iam/<name>.json, AWS IAM policies) against
the S3 calls its code makes: every call allowed, nothing allowed that no code calls, and every
resource the configured bucket and prefix."""

from __future__ import annotations

import inspect
import json
import re

import pytest

from common.imagestore import S3ImageStore
from tests.deploy.kube import K8S, ROOT, all_documents, find, pod_spec

IAM = K8S / "iam"
# boto3 call -> the IAM action it needs
ACTIONS = {
    "put_object": "s3:PutObject",
    "get_object": "s3:GetObject",
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


def code_calls() -> dict[str, set[str]]:
    api = store_methods_called("recognition_api", r"image_store\(\)")
    worker = store_methods_called("workers", r"images")
    assert api == {"put", "delete"} and worker == {"get", "purge_expired"}, (api, worker)
    return {
        "recognition-api": store_calls(api),
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
    allowed = {action for statement in policy(name) for action in statement["Action"]}
    needed = {ACTIONS[call] for call in code_calls()[name]}
    assert allowed == needed, f"{name}: allowed {sorted(allowed)}, the code calls {sorted(needed)}"
    bucket, prefix = s3_url("MODEL_SOURCE_URL" if name == "model-populate" else "IMAGE_STORE_URL")
    for statement in policy(name):
        assert statement["Effect"] == "Allow"
        resource = statement["Resource"]
        if any(action in ("s3:ListBucket", "s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration")
               for action in statement["Action"]):
            assert resource == f"arn:aws:s3:::{bucket}"  # bucket-level actions
        else:
            assert resource == f"arn:aws:s3:::{bucket}/{prefix}/*", f"{name}: {resource} is wider than the prefix"
        if "s3:ListBucket" in statement["Action"]:
            assert statement["Condition"]["StringLike"]["s3:prefix"] == [f"{prefix}/*"]

