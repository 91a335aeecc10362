"""IMAGE_URL_ALLOWED and the image_url a client sends: which S3 objects the API may read for it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.env import ConfigurationError
from common.errors import ImageUrlNotAllowed
from common.imageurl import AllowedPrefix, S3Location, image_url_location, parse_image_url_allowed
from harness import ROOT

ALLOWED = parse_image_url_allowed(["s3://listing-photos/uploads/", "s3://other-photos/app/v2"])


def test_each_entry_is_a_folder_of_a_bucket() -> None:
    assert parse_image_url_allowed([
        "s3://listing-photos/uploads/", "s3://listing-photos/uploads", "s3://b.example-1/a/b/", "s3://whole", "s3://w22/",
    ]) == (
        AllowedPrefix("listing-photos", "uploads/"), AllowedPrefix("listing-photos", "uploads/"),
        AllowedPrefix("b.example-1", "a/b/"), AllowedPrefix("whole", ""), AllowedPrefix("w22", ""),
    )
    assert parse_image_url_allowed([]) == ()


@pytest.mark.parametrize("entry", [
    "https://listing-photos/uploads/", "listing-photos/uploads/", "S3://listing-photos/uploads/",
    "s3://Listing-Photos/uploads/", "s3://listing-photos:9000/uploads/", "s3://me@listing-photos/uploads/",
    "s3://listing-photos/../uploads/", "s3://listing-photos/uploads/../x/", "s3://listing-photos/./uploads/",
    "s3://listing-photos/a//b/", "s3://listing-photos/up loads/", "s3://listing-photos/uploads?x=1",
    "s3://x/uploads/", "s3://a..b/uploads/",
])
def test_a_malformed_entry_is_refused_with_its_position(entry: str) -> None:
    with pytest.raises(ConfigurationError, match=r"IMAGE_URL_ALLOWED entry 2 \("):
        parse_image_url_allowed(["s3://fine/ok/", entry])


def test_a_malformed_setting_stops_the_process_with_a_reason() -> None:
    env = {**os.environ, "IMAGE_URL_ALLOWED": "s3://listing-photos/uploads/,https://cdn.example/photos/"}
    result = subprocess.run([sys.executable, "-c", "import config.settings"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ConfigurationError: IMAGE_URL_ALLOWED entry 2 ('https://cdn.example/photos/')" in result.stderr


@pytest.mark.parametrize("url", [
    "s3://listing-photos/uploads/1234/front.jpg",
    "s3://listing-photos/uploads/a!b_c-d.e*f'(g).heic",
    "s3://listing-photos/uploads/x",
    "s3://other-photos/app/v2/photo.png",
])
def test_an_object_under_an_allowed_folder_is_read(url: str) -> None:
    location = image_url_location(url, allowed=ALLOWED)
    assert str(location) == url
    assert location == S3Location(url[5:].split("/", 1)[0], url[5:].split("/", 1)[1])


def test_a_whole_bucket_entry_allows_every_plain_key_in_it() -> None:
    allowed = parse_image_url_allowed(["s3://whole"])
    assert image_url_location("s3://whole/a/b.jpg", allowed=allowed) == S3Location("whole", "a/b.jpg")
    with pytest.raises(ImageUrlNotAllowed):
        image_url_location("s3://wholesale/a.jpg", allowed=allowed)


@pytest.mark.parametrize("url", [
    # other schemes: nothing is fetched over the web or from files, so there is no redirect to follow
    "https://listing-photos.s3.amazonaws.com/uploads/x.jpg", "http://listing-photos/uploads/x.jpg",
    "file:///etc/passwd", "ftp://listing-photos/uploads/x.jpg", "S3://listing-photos/uploads/x.jpg",
    "s3:/listing-photos/uploads/x.jpg", "//listing-photos/uploads/x.jpg", "listing-photos/uploads/x.jpg",
    " s3://listing-photos/uploads/x.jpg", "",
    # other hosts and buckets
    "s3://other-bucket/uploads/x.jpg", "s3://listing-photos.evil.example/uploads/x.jpg",
    "s3://me@listing-photos/uploads/x.jpg", "s3://listing-photos:443/uploads/x.jpg", "s3://LISTING-PHOTOS/uploads/x",
    # other prefixes, and ones that only look alike
    "s3://listing-photos/private/x.jpg", "s3://listing-photos/uploads-private/x.jpg", "s3://listing-photos/Uploads/x",
    "s3://listing-photos/uploads", "s3://listing-photos/uploads/", "s3://other-photos/app/v3/x.jpg",
    # traversal, and keys that an HTTP stack or server might read as another
    "s3://listing-photos/uploads/../private/x.jpg", "s3://listing-photos/uploads/./x.jpg",
    "s3://listing-photos/uploads//x.jpg", "s3://listing-photos//uploads/x.jpg", "s3://listing-photos/uploads/..",
    "s3://listing-photos/uploads/%2e%2e/private/x.jpg", "s3://listing-photos/uploads/..%2fprivate",
    "s3://listing-photos/uploads\\..\\private\\x.jpg", "s3://listing-photos/uploads/x.jpg?versionId=1",
    "s3://listing-photos/uploads/x.jpg#part", "s3://listing-photos/uploads/a/", "s3://listing-photos/uploads/x\n.jpg",
    "s3://listing-photos/uploads/x .jpg", "s3://listing-photos/uploads/\u2024\u2024/x.jpg",
    "s3://listing-photos/uploads/" + "a" * 2100,
])
def test_anything_else_is_not_allowed(url: str) -> None:
    with pytest.raises(ImageUrlNotAllowed):
        image_url_location(url, allowed=ALLOWED)


@pytest.mark.parametrize("value", [None, 42, ["s3://listing-photos/uploads/x.jpg"], {"url": "x"}])
def test_an_image_url_that_is_not_a_string_is_not_allowed(value: object) -> None:
    with pytest.raises(ImageUrlNotAllowed, match="string"):
        image_url_location(value, allowed=ALLOWED)


def test_with_no_allowed_folder_every_image_url_is_refused_saying_the_feature_is_off() -> None:
    with pytest.raises(ImageUrlNotAllowed, match="IMAGE_URL_ALLOWED is empty"):
        image_url_location("s3://listing-photos/uploads/x.jpg", allowed=())


def test_the_refusal_does_not_tell_which_folders_are_allowed() -> None:
    with pytest.raises(ImageUrlNotAllowed) as refused:
        image_url_location("s3://listing-photos/private/x.jpg", allowed=ALLOWED)
    assert "uploads" not in refused.value.message and "other-photos" not in refused.value.message
