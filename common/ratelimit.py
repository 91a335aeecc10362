"""Token buckets in Redis: how many requests a client may make, shared by every API process.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a request takes one
token from each of its buckets (its key's, and its device's when it names one), or none if any
of them is empty, and then learns how long until it would have one. One script, on Redis's
clock, so every API process and pod sees the same buckets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

# KEYS: the buckets; ARGV: rate, burst for each bucket in turn. Returns {1} when every bucket
# had a token (one taken from each), else {0, seconds until the emptiest has one}.
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local tokens = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local saved = redis.call('HMGET', key, 'tokens', 'at')
  local have = tonumber(saved[1]) or burst
  local at = tonumber(saved[2]) or now
  have = math.min(burst, have + math.max(0, now - at) * rate)
  tokens[i] = have
  if have < 1 then wait = math.max(wait, (1 - have) / rate) end
end
if wait > 0 then return {0, tostring(wait)} end
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('HSET', key, 'tokens', tostring(tokens[i] - 1), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
return {1}
"""


@dataclass(frozen=True)
class Bucket:
    key: str
    rate: float  # tokens per second; > 0
    burst: int


class RateLimiter:
    def __init__(self, client: redis.Redis) -> None:
        self._take = client.register_script(_TAKE)

    def take_in(self, pipe: redis.client.Pipeline, buckets: list[Bucket]) -> Callable[[Any], float] | None:
        """Take a token from every bucket, queued on ``pipe``: returns what reads its reply (0.0 when
        taken, else the seconds until one would be), or None when no bucket limits (nothing queued)."""
        buckets = [b for b in buckets if b.rate > 0]
        if not buckets:
            return None
        self._take(keys=[b.key for b in buckets], args=_args(buckets), client=pipe)
        return _wait


def _args(buckets: list[Bucket]) -> list[str]:
    args: list[str] = []
    for bucket in buckets:
        args += [repr(float(bucket.rate)), str(max(1, int(bucket.burst)))]
    return args


def _wait(reply: Any) -> float:
    if int(reply[0]) == 1:
        return 0.0
    raw = reply[1].decode() if isinstance(reply[1], bytes) else reply[1]
    return max(float(raw), 1e-3)


def retry_after_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))
