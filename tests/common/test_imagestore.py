"""Image stores: a local directory, and S3 against a real S3-compatible HTTP server (moto)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import boto3
import pytest

from common.errors import ImageUnavailable
from common.imagestore import LocalImageStore, S3ImageStore, image_store_from_url


def test_the_local_store_round_trips_and_expires(tmp_path: Path) -> None:
    store = image_store_from_url((tmp_path / "images").as_uri())
    assert isinstance(store, LocalImageStore)
    store.put("abc", b"photo", "image/jpeg")
    assert store.get("abc") == b"photo"
    old = time.time() - 7200
    os.utime(tmp_path / "images" / "abc", (old, old))
    store.put("fresh", b"new", "image/jpeg")
    assert store.purge_expired(3600) == 1
    with pytest.raises(ImageUnavailable):
        store.get("abc")
    assert store.get("fresh") == b"new"


def test_the_local_store_refuses_keys_that_escape_its_directory(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    for key in ("../etc/passwd", ".hidden", ""):
        with pytest.raises(ValueError):
            store.put(key, b"x", "image/jpeg")


def test_it_rejects_an_unknown_store_url() -> None:
    with pytest.raises(ValueError, match="file:///path or s3://bucket/prefix"):
        image_store_from_url("ftp://example/images")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_the_s3_store_talks_to_a_real_s3_endpoint(s3_endpoint: str, aws_env: None) -> None:
    raw = boto3.client("s3", endpoint_url=s3_endpoint)
    raw.create_bucket(Bucket="photos")
    store = image_store_from_url("s3://photos/uploads", s3_endpoint_url=s3_endpoint)
    assert isinstance(store, S3ImageStore)
    store.put("job1", b"\xff\xd8jpeg", "image/jpeg")
    head = raw.head_object(Bucket="photos", Key="uploads/job1")
    assert head["ContentType"] == "image/jpeg"
    assert store.get("job1") == b"\xff\xd8jpeg"
    store.delete("job1")
    with pytest.raises(ImageUnavailable):
        store.get("job1")


def test_the_s3_store_expires_images_with_a_rule_on_its_prefix_installed_once_keeping_other_rules(
    s3_endpoint: str, aws_env: None
) -> None:
    raw = boto3.client("s3", endpoint_url=s3_endpoint)
    raw.create_bucket(Bucket="photos2")
    other = {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    raw.put_bucket_lifecycle_configuration(Bucket="photos2", LifecycleConfiguration={"Rules": [other]})
    store = image_store_from_url("s3://photos2/uploads", s3_endpoint_url=s3_endpoint)
    assert store.purge_expired(3600) == 0  # a worker's sweep never touches the bucket's rules
    assert raw.get_bucket_lifecycle_configuration(Bucket="photos2")["Rules"] == [other]
    assert store.install_lifecycle(ttl_seconds=3600) is True
    assert store.install_lifecycle(ttl_seconds=3600) is False  # idempotent
    rules = {r["ID"]: r for r in raw.get_bucket_lifecycle_configuration(Bucket="photos2")["Rules"]}
    assert set(rules) == {"logs", "recognition-images-expire-uploads"}
    mine = rules["recognition-images-expire-uploads"]
    assert mine["Expiration"]["Days"] == 1
    assert mine["Filter"]["Prefix"] == "uploads/"


def test_an_s3_store_without_a_prefix_is_refused() -> None:
    for url in ("s3://photos", "s3://photos/", "s3://photos//"):
        with pytest.raises(ValueError, match="needs a prefix"):
            image_store_from_url(url)


def test_the_lifecycle_command_installs_the_rule_for_the_configured_store(
    s3_endpoint: str, aws_env: None, settings,  # type: ignore[no-untyped-def]
) -> None:
    import io

    from django.core.management import CommandError, call_command

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="photos3")
    settings.IMAGE_STORE_URL = "s3://photos3/recognition"
    settings.S3_ENDPOINT_URL = s3_endpoint
    settings.IMAGE_TTL_SECONDS = 3 * 86400
    out = io.StringIO()
    call_command("install_image_lifecycle", "--dry-run", stdout=out)
    assert '"Days": 3' in out.getvalue() and '"Prefix": "recognition/"' in out.getvalue()
    assert "NoSuchLifecycleConfiguration" in _lifecycle_error(s3_endpoint, "photos3")
    call_command("install_image_lifecycle", stdout=out)
    call_command("install_image_lifecycle", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines.count("installed") == 1 and lines.count("already installed") == 1
    settings.IMAGE_STORE_URL = "file:///tmp/images"
    with pytest.raises(CommandError, match="not on S3"):
        call_command("install_image_lifecycle", stdout=out)


def _lifecycle_error(endpoint: str, bucket: str) -> str:
    try:
        boto3.client("s3", endpoint_url=endpoint).get_bucket_lifecycle_configuration(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001  (the error's text is what is checked)
        return str(exc)
    return ""
