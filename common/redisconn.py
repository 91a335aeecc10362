"""Where Redis is: one URL for the API, the workers, the Celery broker and the registry CLI.

Three forms of ``REDIS_URL``:

* ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``, ``unix://``): one Redis.
* ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<master name>[/db]``:
  the Redis that Sentinel names primary of ``<master name>``, found through any of the listed
  sentinels (default port 26379). Query parameters: ``sentinel_password`` (when the sentinels
  require one), ``sentinel_username``.
* Celery's form, ``sentinel://[:password@]host:port[/db];sentinel://host:port;...``, with the
  master name in ``REDIS_SENTINEL_MASTER``.

With Sentinel every client asks a sentinel for the primary when it connects, and connects
again (asking again) when the primary it knew fails or turns replica; a failover costs the
clients a few failed calls, which each of them already treats as a Redis outage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from common.env import ConfigurationError

SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisTarget:
    url: str = field(repr=False)  # may hold a password
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.sentinels)

    @classmethod
    def parse(cls, url: str, *, master_name: str = "") -> RedisTarget:
        """``url`` in one of the module's three forms; ``master_name`` for Celery's form."""
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme == "redis+sentinel":
            return cls._parse_sentinel_url(url)
        if scheme == "sentinel":
            return cls._parse_celery_sentinel_url(url, master_name)
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel:// or "
                f"sentinel://, not {scheme + '://' if scheme else repr(url)}"
            )
        try:
            redis.connection.parse_url(url)
        except ValueError as exc:
            raise ConfigurationError(f"REDIS_URL is not a valid Redis URL: {exc}") from exc
        return cls(url=url)

    @classmethod
    def _parse_sentinel_url(cls, url: str) -> RedisTarget:
        parts = urlsplit(url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        username, password = _userinfo(userinfo)
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise ConfigurationError(
                "REDIS_URL redis+sentinel://HOST[:PORT][,HOST[:PORT]...]/MASTER_NAME[/DB] needs the "
                "master name as its path"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return cls(
            url=url,
            sentinels=tuple(_host_port(h, SENTINEL_PORT) for h in hosts.split(",") if h),
            master_name=unquote(path[0]),
            db=_db(path[1] if len(path) == 2 else "0"),
            username=username,
            password=password,
            sentinel_username=query.get("sentinel_username"),
            sentinel_password=query.get("sentinel_password"),
        )._checked()

    @classmethod
    def _parse_celery_sentinel_url(cls, url: str, master_name: str) -> RedisTarget:
        if not master_name:
            raise ConfigurationError(
                "REDIS_URL in Celery's sentinel:// form needs the master name in REDIS_SENTINEL_MASTER "
                "(or use redis+sentinel://HOST:PORT,.../MASTER_NAME)"
            )
        sentinels, username, password, db = [], None, None, 0
        for one in url.split(";"):
            parts = urlsplit(one.strip())
            if parts.scheme.lower() != "sentinel":
                raise ConfigurationError(f"REDIS_URL: each part of a sentinel:// list is sentinel://, not {one!r}")
            userinfo, _, hostport = parts.netloc.rpartition("@")
            if userinfo:
                username, password = _userinfo(userinfo)
            if parts.path.strip("/"):
                db = _db(parts.path.strip("/"))
            sentinels.append(_host_port(hostport, SENTINEL_PORT))
        return cls(url=url, sentinels=tuple(sentinels), master_name=master_name, db=db,
                   username=username, password=password)._checked()

    @classmethod
    def from_settings(cls, settings: Any) -> RedisTarget:
        """The Redis of ``config.settings`` (``REDIS_URL``, ``REDIS_SENTINEL_MASTER``)."""
        return cls.parse(settings.REDIS_URL, master_name=getattr(settings, "REDIS_SENTINEL_MASTER", ""))

    def _checked(self) -> RedisTarget:
        if not self.sentinels:
            raise ConfigurationError("REDIS_URL names no sentinel")
        if not self.master_name:
            raise ConfigurationError("REDIS_URL names no Sentinel master")
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of the primary; ``kwargs`` as for ``redis.Redis`` (timeouts, pool size)."""
        if not self.uses_sentinel:
            return redis.Redis.from_url(self.url, **kwargs)
        max_connections = kwargs.pop("max_connections", None)
        sentinel_kwargs = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs}
        if self.sentinel_password:
            sentinel_kwargs.update(username=self.sentinel_username, password=self.sentinel_password)
        manager = Sentinel(list(self.sentinels), sentinel_kwargs=sentinel_kwargs)
        pool_kwargs = {"max_connections": max_connections} if max_connections else {}
        return manager.master_for(self.master_name, redis_class=redis.Redis, db=self.db,
                                  username=self.username, password=self.password, **kwargs, **pool_kwargs)

    # --- the Celery broker ------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """The same Redis as kombu wants it named."""
        if not self.uses_sentinel:
            return self.url
        auth = ""
        if self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return ";".join(f"sentinel://{auth}{f'[{host}]' if ':' in host else host}:{port}/{self.db}"
                        for host, port in self.sentinels)

    @property
    def broker_transport_options(self) -> dict[str, Any]:
        if not self.uses_sentinel:
            return {}
        options: dict[str, Any] = {"master_name": self.master_name}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"username": self.sentinel_username,
                                          "password": self.sentinel_password}
        return options


def _userinfo(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    username, _, password = userinfo.partition(":")
    return unquote(username) or None, unquote(password) or None


def _host_port(hostport: str, default_port: int) -> tuple[str, int]:
    if hostport.startswith("["):  # [IPv6]:port
        host, _, rest = hostport[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = hostport.partition(":")
    if not host:
        raise ConfigurationError(f"REDIS_URL: {hostport!r} names no host")
    try:
        return host, int(port) if port else default_port
    except ValueError as exc:
        raise ConfigurationError(f"REDIS_URL: {hostport!r} has a bad port") from exc


def _db(raw: str) -> int:
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"REDIS_URL: database {raw!r} is not a number") from exc
