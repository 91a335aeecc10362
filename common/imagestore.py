"""Where uploaded photos wait for a worker: a local directory, or S3.

Configured by one URL: ``file:///var/lib/recognition/images`` or
``s3://bucket/prefix`` (a prefix is required). Keys are job ids, so a redelivered job
finds its photo again. Photos expire after ``IMAGE_TTL_SECONDS``: the workers sweep a
local store's old files (``purge_expired``); on S3 a bucket lifecycle rule scoped to the
prefix expires them, installed once by ``python manage.py install_image_lifecycle``
(``S3ImageStore.install_lifecycle``; S3 counts whole days, so the TTL is rounded up).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from common.errors import ImageUnavailable


class ImageStore(Protocol):
    url: str

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def purge_expired(self, ttl_seconds: int) -> int: ...


class LocalImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid image key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # Write then rename, so a worker never reads a half-written photo.
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ImageUnavailable() from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def purge_expired(self, ttl_seconds: int) -> int:
        cutoff = time.time() - ttl_seconds
        removed = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                try:
                    if entry.is_file() and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # another process purged it first
        return removed


class S3ImageStore:
    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None = None) -> None:
        import boto3  # imported here: only deployments that use S3 pay for it
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if not self.prefix:
            # Photos expire by a lifecycle rule on the prefix: on a whole bucket it would expire
            # everything else in it too.
            raise ValueError(f"IMAGE_STORE_URL s3://{bucket} needs a prefix, e.g. s3://{bucket}/recognition")
        self.url = f"s3://{bucket}/{self.prefix}"
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=64),
        )
        from botocore.exceptions import ClientError

        self._client_error = ClientError

    def _key(self, key: str) -> str:
        if not key or "/" in key:
            raise ValueError(f"invalid image key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
        )

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self._client_error as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise ImageUnavailable() from exc
            raise
        return response["Body"].read()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def purge_expired(self, ttl_seconds: int) -> int:
        """Nothing to do from a worker: S3 expires the photos by the prefix's lifecycle rule."""
        return 0

    def lifecycle_rule(self, ttl_seconds: int) -> dict:
        """The rule that expires this store's photos, and nothing outside its prefix."""
        return {
            "ID": f"recognition-images-expire-{self.prefix}",
            "Filter": {"Prefix": f"{self.prefix}/"},
            "Status": "Enabled",
            "Expiration": {"Days": max(1, -(-ttl_seconds // 86400))},
        }

    def install_lifecycle(self, ttl_seconds: int) -> bool:
        """Install (idempotently) the prefix's lifecycle rule, keeping the bucket's other rules;
        returns whether anything changed."""
        rule = self.lifecycle_rule(ttl_seconds)
        try:
            current = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except self._client_error as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise
            current = []
        if rule in current:
            return False
        # Keep the bucket's other rules; replace only ours.
        rules = [r for r in current if r.get("ID") != rule["ID"]] + [rule]
        self.client.put_bucket_lifecycle_configuration(
            Bucket=self.bucket, LifecycleConfiguration={"Rules": rules}
        )
        return True


def image_store_from_url(url: str, *, s3_endpoint_url: str | None = None) -> ImageStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalImageStore(Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"IMAGE_STORE_URL {url!r} has no bucket")
        return S3ImageStore(parsed.netloc, parsed.path, endpoint_url=s3_endpoint_url)
    if parsed.scheme == "":
        return LocalImageStore(Path(url).resolve())
    raise ValueError(f"IMAGE_STORE_URL {url!r}: use file:///path or s3://bucket/prefix")
