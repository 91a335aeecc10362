"""API keys: sent as ``Authorization: Bearer <key>``, configured only as hashes, each with its
scopes and limits (``common.apikeys``: the format of ``API_KEYS``). Create one with
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

from common.apikeys import OPS, Defaults, KeyPolicy, parse_api_keys


@dataclass(frozen=True)
class ApiClient:
    policy: KeyPolicy
    is_authenticated: bool = True

    @property
    def name(self) -> str:
        return self.policy.name


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and its ``sha256:<hex>`` form for API_KEYS."""
    key = "rk_" + secrets.token_urlsafe(32)
    return key, f"sha256:{hash_key(key)}"


@lru_cache(maxsize=4)
def _clients(raw: str, defaults: Defaults) -> dict[str, KeyPolicy]:
    return parse_api_keys(raw, defaults)


def api_clients() -> dict[str, KeyPolicy]:
    """Digest -> policy, from the settings (parsed once per value)."""
    return _clients(settings.API_KEYS, settings.API_KEY_DEFAULTS)


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
        for known, policy in api_clients().items():
            if hmac.compare_digest(known, digest):
                return ApiClient(policy), None
        raise exceptions.AuthenticationFailed("This API key is not valid.")

    def authenticate_header(self, request) -> str:  # type: ignore[no-untyped-def]
        return 'Bearer realm="recognition"'


class HasApiKey(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:  # type: ignore[no-untyped-def]
        return isinstance(request.user, ApiClient)


class HasOpsScope(permissions.BasePermission):
    """A key with the ``ops`` scope (``API_KEYS``: ``;scopes=ops``); others get 403."""

    message = "This API key does not have the 'ops' scope, which the rollout state needs."

    def has_permission(self, request, view) -> bool:  # type: ignore[no-untyped-def]
        return isinstance(request.user, ApiClient) and OPS in request.user.policy.scopes
