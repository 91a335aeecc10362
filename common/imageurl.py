"""Photos the client has put on S3 already: ``POST /recognize`` with ``{"image_url": "s3://bucket/key"}``.

The API reads such a photo with its own credentials, so the URL is the client's to choose only
within ``IMAGE_URL_ALLOWED``: comma-separated ``s3://bucket/prefix/`` entries, each a folder
(``s3://photos/uploads`` means ``uploads/``, never ``uploads-private/``; ``s3://photos/`` is the
whole bucket). Empty, image_url is refused.

A URL is taken only in one plain form, so that nothing between the API and S3 can read it as
another object: the scheme ``s3://`` (nothing is ever fetched over http(s) or from a file, so
there is no redirect to follow), a bucket name as S3 spells it (no user, port or host), and a key
of the characters AWS lists as safe (letters, digits, ``! - _ . * ' ( )``) in ``/``-separated
segments, none empty and none ``.`` or ``..`` (some HTTP stacks and S3-compatible servers
normalise those away: ``uploads/../private/x`` would leave the prefix).

:class:`S3ObjectReader` reads an allowed object: a HEAD first (a photo over the size limit is
refused without reading it), then a GET bounded to the limit, all within a deadline.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from common.env import ConfigurationError
from common.errors import (
    ImageEmpty,
    ImageTooLarge,
    ImageUrlForbidden,
    ImageUrlNotAllowed,
    ImageUrlNotFound,
    ImageUrlUnavailable,
)

logger = logging.getLogger(__name__)

SCHEME = "s3://"
MAX_URL_LENGTH = 2048
MAX_KEY_BYTES = 1024  # S3's own limit
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html#object-key-guidelines
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SEGMENT = re.compile(r"[A-Za-z0-9!_.*'()-]+")
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_FORBIDDEN = {"403", "AccessDenied", "Forbidden", "AllAccessDisabled", "InvalidObjectState",
              "AccountProblem", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


@dataclass(frozen=True)
class AllowedPrefix:
    bucket: str
    prefix: str  # "" (the whole bucket) or ending in "/"

    def covers(self, location: S3Location) -> bool:
        return location.bucket == self.bucket and location.key.startswith(self.prefix)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"


def _split(url: str) -> tuple[str, str] | None:
    """(bucket, path) of a plain s3:// URL, or None."""
    if not url.startswith(SCHEME):
        return None
    bucket, _, path = url[len(SCHEME):].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        return None
    return bucket, path


def _plain_segments(path: str) -> bool:
    return all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in path.split("/"))


def parse_image_url_allowed(entries: Iterable[str]) -> tuple[AllowedPrefix, ...]:
    """``IMAGE_URL_ALLOWED``'s entries, each checked: a malformed one stops the process."""
    allowed = []
    for position, entry in enumerate(entries, start=1):
        split = _split(entry)
        prefix = split[1].strip("/") if split else ""
        if split is None or "//" in split[1] or (prefix and not _plain_segments(prefix)):
            raise ConfigurationError(
                f"IMAGE_URL_ALLOWED entry {position} ({entry!r}) is not s3://bucket/prefix/ (a bucket name as S3 "
                "spells it, then a folder of letters, digits and ! - _ . * ' ( ), without . or .. segments)"
            )
        allowed.append(AllowedPrefix(split[0], f"{prefix}/" if prefix else ""))
    return tuple(allowed)


def image_url_location(url: object, *, allowed: tuple[AllowedPrefix, ...]) -> S3Location:
    """The object ``url`` names, if it is one this service may read; else ``ImageUrlNotAllowed``."""
    if not allowed:
        raise ImageUrlNotAllowed(
            "image_url is not enabled on this service (IMAGE_URL_ALLOWED is empty); upload the photo as the "
            "multipart field 'image'."
        )
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise ImageUrlNotAllowed(f"image_url must be a string of at most {MAX_URL_LENGTH} characters.")
    if not url.startswith(SCHEME):
        raise ImageUrlNotAllowed(
            "image_url must be an s3://bucket/key URL; no other scheme is accepted (nothing is fetched over "
            "http(s), from files or by following a redirect)."
        )
    split = _split(url)
    if split is None:
        raise ImageUrlNotAllowed("image_url's bucket is not a plain S3 bucket name (no user, port or host).")
    bucket, key = split
    if not key or not _plain_segments(key) or len(key.encode()) > MAX_KEY_BYTES:
        raise ImageUrlNotAllowed(
            "image_url's key must be /-separated names of letters, digits and ! - _ . * ' ( ), none empty "
            f"and none . or .., at most {MAX_KEY_BYTES} bytes."
        )
    location = S3Location(bucket, key)
    if not any(prefix.covers(location) for prefix in allowed):
        raise ImageUrlNotAllowed("image_url is not under an S3 prefix this service is configured to read.")
    return location


class S3ObjectReader:
    """Reads allowed objects for the API: a HEAD, then a GET of at most ``max_bytes``, given
    ``timeout_seconds`` in all. Each S3 request waits a quarter of it per connect or read and is
    tried twice at most, so an S3 that stops answering holds a request twice that at worst."""

    def __init__(self, *, endpoint_url: str | None, timeout_seconds: float) -> None:
        import boto3  # imported here: only deployments that use S3 pay for it
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
        from urllib3.exceptions import HTTPError

        self.timeout_seconds = timeout_seconds
        per_call = max(0.05, timeout_seconds / 4)
        # A session of its own: creating clients from boto3's default session is not thread-safe.
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(connect_timeout=per_call, read_timeout=per_call,
                          retries={"total_max_attempts": 2, "mode": "standard"}, max_pool_connections=64),
        )
        self._client_error = ClientError
        self._botocore_error = BotoCoreError
        self._urllib3_error = HTTPError  # from the body's read1, which botocore does not wrap

    def read(self, location: S3Location, *, max_bytes: int) -> bytes:
        deadline = time.monotonic() + self.timeout_seconds
        with self._errors(location):
            head = self.client.head_object(Bucket=location.bucket, Key=location.key)
        size = int(head.get("ContentLength") or 0)
        if size > max_bytes:
            raise ImageTooLarge(f"The object at image_url is {size:,} bytes; the image limit is {max_bytes:,} bytes.")
        if size == 0:
            raise ImageEmpty("The object at image_url is empty (0 bytes).")
        self._check_deadline(deadline, location)
        with self._errors(location):
            # Bounded even if the object was replaced by a bigger one since the HEAD.
            response = self.client.get_object(Bucket=location.bucket, Key=location.key, Range=f"bytes=0-{max_bytes}")
            body = response["Body"]
            # One recv at a time (urllib3's read1), so that the deadline holds however slowly the body
            # comes: StreamingBody.read(n) waits for all n bytes.
            raw = getattr(body, "_raw_stream", None)
            read = raw.read1 if callable(getattr(raw, "read1", None)) else body.read
            try:
                data = bytearray()
                while chunk := read(256 * 1024):
                    data += chunk
                    if len(data) > max_bytes:
                        raise ImageTooLarge(f"The object at image_url is over the image limit of {max_bytes:,} bytes.")
                    self._check_deadline(deadline, location)
            finally:
                body.close()
        return bytes(data)

    def _check_deadline(self, deadline: float, location: S3Location) -> None:
        if time.monotonic() > deadline:
            logger.warning("image_url read timed out", extra={"image_url": str(location)})
            raise ImageUrlUnavailable(f"Reading image_url from S3 took over {self.timeout_seconds:g} s; retry shortly.")

    @contextmanager
    def _errors(self, location: S3Location) -> Iterator[None]:
        """What S3's answers and failures mean to the client that sent image_url."""
        where = str(location)
        try:
            yield
        except self._client_error as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise ImageUrlNotFound(f"There is no object at {where} (or no such bucket).") from exc
            if code in _FORBIDDEN:
                # Without s3:ListBucket on the bucket, S3 answers 403 for a missing object too.
                logger.warning("image_url access denied", extra={"image_url": where, "s3_code": code})
                raise ImageUrlForbidden(
                    f"This service may not read {where} (S3 answered {code}); the object may also not exist."
                ) from exc
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            logger.warning("image_url read failed", extra={"image_url": where, "s3_code": code, "s3_status": status})
            raise ImageUrlUnavailable() from exc
        except (self._botocore_error, self._urllib3_error, OSError) as exc:  # timeouts, refusals, broken streams
            logger.warning("image_url read failed", extra={"image_url": where, "error": type(exc).__name__})
            raise ImageUrlUnavailable() from exc
