"""API keys and what each may do: ``API_KEYS``, parsed and checked when a process starts.

``API_KEYS`` (or the file named by ``API_KEYS_FILE``) holds comma-separated entries::

    <client-name>:sha256:<hex digest of the key>[;scopes=ops][;rate=N][;burst=N][;max_jobs=N][;device_rate=N]

- ``scopes=ops``: the key may read every job (support, ML engineers); others read only their own.
- ``rate``: new jobs per second the key may create, sustained (token bucket in Redis), ``burst``
  at once; 0 is no limit. Defaults: ``API_KEY_RATE``, ``API_KEY_BURST``.
- ``max_jobs``: unfinished jobs the key may have at once, its share of the queue (default
  ``API_KEY_MAX_JOBS``; 0 is no limit).
- ``device_rate``: for a mobile app's one shared key, new jobs per second per installation, for
  requests that name it in ``X-Device-Id`` (default ``API_KEY_DEVICE_RATE``; 0 is off).

Only hashes are configured; a key is a long random token, so a plain SHA-256 is the right hash.
A malformed entry stops the process with a message that names the entry by its position and
client name, never by its digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.env import ConfigurationError

OPS = "ops"
SCOPES = frozenset({OPS})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class KeyPolicy:
    name: str
    scopes: frozenset[str] = frozenset()
    rate: float = 0.0
    burst: int = 0
    max_jobs: int = 0
    device_rate: float = 0.0

    @property
    def reads_all_jobs(self) -> bool:
        return OPS in self.scopes


@dataclass(frozen=True)
class Defaults:
    rate: float = 0.0
    burst: int = 0
    max_jobs: int = 0
    device_rate: float = 0.0


def parse_api_keys(raw: str, defaults: Defaults = Defaults()) -> dict[str, KeyPolicy]:
    """Map of key digest (lower-case hex) to its policy."""
    table: dict[str, KeyPolicy] = {}
    names: set[str] = set()
    for position, entry in enumerate((e.strip() for e in raw.split(",") if e.strip()), start=1):
        head, *options = entry.split(";")
        parts = head.split(":")
        # Named only in a well-shaped entry: a key pasted by mistake must not be echoed.
        name = parts[0] if len(parts) == 3 and _NAME.fullmatch(parts[0]) else None
        where = f"API_KEYS entry {position}" + (f" (client {name!r})" if name else "")
        if len(parts) != 3 or name is None or parts[1] != "sha256" or not _DIGEST.fullmatch(parts[2].lower()):
            raise ConfigurationError(f"{where} must look like name:sha256:<64 hex digits>[;option=value...]")
        if name in names:
            raise ConfigurationError(f"{where}: the client name is used twice")
        names.add(name)
        values = _options(options, where)
        rate = _number(values, "rate", defaults.rate, where)
        burst = int(_number(values, "burst", defaults.burst or max(1.0, 2 * rate), where))
        scopes = frozenset(s for s in values.get("scopes", "").split("+") if s)
        if scopes - SCOPES:
            raise ConfigurationError(f"{where}: unknown scope(s) {sorted(scopes - SCOPES)} (known: {sorted(SCOPES)})")
        table[parts[2].lower()] = KeyPolicy(
            name=name, scopes=scopes, rate=rate, burst=burst,
            max_jobs=int(_number(values, "max_jobs", defaults.max_jobs, where)),
            device_rate=_number(values, "device_rate", defaults.device_rate, where),
        )
    return table


_OPTIONS = ("scopes", "rate", "burst", "max_jobs", "device_rate")


def _options(options: list[str], where: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.strip().partition("=")
        if not sep or key not in _OPTIONS:
            raise ConfigurationError(f"{where}: {key!r} is not an option (options: {', '.join(_OPTIONS)})")
        values[key] = value.strip()
    return values


def _number(values: dict[str, str], key: str, default: float, where: str) -> float:
    if key not in values:
        return float(default)
    try:
        number = float(values[key])
    except ValueError:
        number = -1.0
    if number < 0:
        raise ConfigurationError(f"{where}: {key}={values[key]!r} is not a number >= 0")
    return number
