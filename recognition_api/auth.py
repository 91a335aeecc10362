"""API keys: sent as ``Authorization: Bearer <key>``, configured only as hashes.

``API_KEYS`` (or the file named by ``API_KEYS_FILE``) holds comma-separated
``<client-name>:sha256:<hex digest of the key>`` entries; the keys themselves are
never stored. Keys are long random tokens, so a plain SHA-256 is the right hash
(a slow password hash buys nothing against 256 bits of entropy). Create one with
``python manage.py create_api_key <client-name>``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from rest_framework import authentication, exceptions, permissions

from common.env import ConfigurationError


@dataclass(frozen=True)
class ApiClient:
    name: str
    is_authenticated: bool = True


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and its ``sha256:<hex>`` form for API_KEYS."""
    key = "rk_" + secrets.token_urlsafe(32)
    return key, f"sha256:{hash_key(key)}"


@lru_cache(maxsize=4)
def parse_api_keys(raw: str) -> dict[str, str]:
    """Map digest -> client name; a malformed entry fails loudly at start-up."""
    table: dict[str, str] = {}
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3 or parts[1] != "sha256" or len(parts[2]) != 64:
            raise ConfigurationError(
                f"API_KEYS entry {entry[:40]!r} must look like name:sha256:<64 hex digits>"
            )
        name, _, digest = parts
        table[digest.lower()] = name
    return table


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):  # type: ignore[no-untyped-def]
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <API key>'.")
        digest = hash_key(key.strip())
        for known, name in parse_api_keys(settings.API_KEYS).items():
            if hmac.compare_digest(known, digest):
                return ApiClient(name), None
        raise exceptions.AuthenticationFailed("This API key is not valid.")

    def authenticate_header(self, request) -> str:  # type: ignore[no-untyped-def]
        return 'Bearer realm="recognition"'


class HasApiKey(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:  # type: ignore[no-untyped-def]
        return isinstance(request.user, ApiClient)
