import os
import subprocess
import sys

import pytest

from common.apikeys import Defaults, KeyPolicy, parse_api_keys
from common.env import ConfigurationError
from harness import ROOT
from recognition_api.auth import hash_key, new_key


def test_a_new_key_is_stored_only_as_its_hash() -> None:
    key, entry = new_key()
    assert key.startswith("rk_") and len(key) > 40
    assert entry == f"sha256:{hash_key(key)}"
    assert key not in entry


def test_it_parses_several_clients_with_their_scopes_and_limits() -> None:
    a, b = "a" * 64, "B" * 64
    clients = parse_api_keys(f"mobile:sha256:{a};rate=50;max_jobs=200;device_rate=0.5, ops:sha256:{b};scopes=ops",
                             Defaults(rate=10, burst=0, max_jobs=100))
    assert clients == {
        a: KeyPolicy("mobile", rate=50.0, burst=100, max_jobs=200, device_rate=0.5),
        b.lower(): KeyPolicy("ops", scopes=frozenset({"ops"}), rate=10.0, burst=20, max_jobs=100),
    }
    assert clients[b.lower()].reads_all_jobs and not clients[a].reads_all_jobs


@pytest.mark.parametrize(("raw", "message"), [
    ("mobile", "entry 1 must look like name:sha256"),
    ("rk_pasted-key-by-mistake", r"^API_KEYS entry 1 must look like"),
    ("mobile:md5:" + "a" * 32, r"entry 1 \(client 'mobile'\) must look like"),
    ("mobile:sha256:short", "must look like name:sha256"),
    ("a:b:c:d", "must look like"),
    (f"a:sha256:{'a' * 64}, a:sha256:{'b' * 64}", r"entry 2 \(client 'a'\): the client name is used twice"),
    (f"a:sha256:{'a' * 64};rate=fast", "rate='fast' is not a number"),
    (f"a:sha256:{'a' * 64};speed=1", "'speed' is not an option"),
    (f"a:sha256:{'a' * 64};scopes=admin", r"unknown scope\(s\) \['admin'\]"),
])
def test_it_refuses_a_malformed_entry_without_echoing_its_digest(raw: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        parse_api_keys(raw)
    assert "aaaaaaaa" not in str(raised.value) and "bbbbbbbb" not in str(raised.value)


def test_a_malformed_api_keys_stops_the_process_at_start_up() -> None:
    env = {**os.environ, "API_KEYS": f"app:sha256:{'c' * 64};rate=-1"}
    result = subprocess.run([sys.executable, "-c", "import config.settings"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ConfigurationError: API_KEYS entry 1 (client 'app'): rate='-1' is not a number >= 0" in result.stderr
    assert "c" * 64 not in result.stderr
