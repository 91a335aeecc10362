import pytest

from common.env import ConfigurationError
from recognition_api.auth import hash_key, new_key, parse_api_keys


def test_a_new_key_is_stored_only_as_its_hash() -> None:
    key, entry = new_key()
    assert key.startswith("rk_") and len(key) > 40
    assert entry == f"sha256:{hash_key(key)}"
    assert key not in entry


def test_it_parses_several_clients() -> None:
    a, b = "a" * 64, "b" * 64
    assert parse_api_keys(f"mobile:sha256:{a}, ops:sha256:{b}") == {a: "mobile", b: "ops"}


@pytest.mark.parametrize("raw", ["mobile", "mobile:md5:" + "a" * 32, "mobile:sha256:short", "a:b:c:d"])
def test_it_refuses_a_malformed_entry(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="name:sha256"):
        parse_api_keys(raw)
