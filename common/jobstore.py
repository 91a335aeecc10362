"""Job records in Redis: the contract between the API and the workers.

A job is one Redis hash, ``<prefix>job:<id>``, that expires after a TTL. The API
creates it and routes it to a model version in one atomic script (so a promote
never sees a half-routed job); a worker claims it, then writes the result or the
failure back exactly once. Writes are idempotent: the first terminal write wins,
so a job redelivered after a crash can never overwrite a finished result or
resurrect an expired record. Finishing publishes on ``<prefix>done:<id>`` so
waiting clients learn of it without polling, and the job id on the channel named
by the record's ``notify`` field, if any (see ``common.waiting``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from common.queues import QUEUE_PREFIX, recognition_message
from common.rollout import rollout_key

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TERMINAL = frozenset({SUCCEEDED, FAILED})

# Creates the job and picks its model version from the rollout state (the hash and fields
# of ``common.rollout``) in one round trip. The queue key is derived inside the script
# (``common.queues``; single-node Redis, not for Redis Cluster).
#
# Admission: the version's backlog (its unfinished jobs, a sorted set by creation time) divided
# by its recent completion rate (jobs the workers finished per second, counted by _FINISH in
# one-second buckets on Redis's clock, from the first second with a completion in the window)
# estimates how long a job takes now (Little's law: jobs in the system / throughput). Over the
# job's budget (how long its client waits) the job is refused as 'late'. With fewer than 5
# completions in the window there is no estimate (idle, workers just started, or a burst after a
# quiet spell: a rate from one or two completions is far too low and would refuse jobs the workers
# are about to take) and only the depth limit applies.
# The shebang (Redis 7) makes Redis refuse the whole script while it is over maxmemory; without
# it, Redis checks only the script's first write, here a removal, and would let the job, its
# message and its shadow copy grow Redis past its limit.
_CREATE = """#!lua
local active = redis.call('HGET', KEYS[1], 'active')
if not active or active == '' then active = ARGV[1] end
if active == '' then return {'no_model'} end
local version = active
local canary = redis.call('HGET', KEYS[1], 'canary')
if canary and canary ~= '' then
  local weight = tonumber(redis.call('HGET', KEYS[1], 'canary_weight') or '0') or 0
  if tonumber(ARGV[2]) < weight then version = canary end
end
local queue = ARGV[5] .. version
local depth = redis.call('LLEN', queue)
local limit = tonumber(ARGV[3])
if limit > 0 and depth >= limit then return {'full', version, tostring(depth)} end
local now = tonumber(redis.call('TIME')[1])
local backlog_key = ARGV[9] .. 'backlog:' .. version
redis.call('ZREMRANGEBYSCORE', backlog_key, '-inf', now - tonumber(ARGV[4]))
local backlog = redis.call('ZCARD', backlog_key)
local budget = tonumber(ARGV[8])
local key_jobs = ARGV[9] .. 'keyjobs:' .. ARGV[11]
local key_limit = tonumber(ARGV[12])
if key_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', key_jobs, '-inf', now - tonumber(ARGV[4]))
  local held = redis.call('ZCARD', key_jobs)
  if held >= key_limit then return {'key_full', version, tostring(held)} end
end
if budget > 0 and backlog > 0 then
  local window = tonumber(ARGV[10])
  local done, first = 0, nil
  for second = now - window, now - 1 do
    local n = tonumber(redis.call('GET', ARGV[9] .. 'rate:' .. version .. ':' .. second) or '0')
    if n > 0 then
      done = done + n
      if not first then first = second end
    end
  end
  if done >= 5 then  -- fewer completions than that (workers just started, or a burst after a quiet
                     -- spell) are noise, not a pace: only the depth limit applies until there are more
    local rate = done / (now - first)
    local wait = backlog / rate
    if wait > budget then
      return {'late', version, tostring(backlog), tostring(wait), tostring(rate)}
    end
  end
end
if ARGV[13] == '1' then return {'ok', version, queue} end  -- only asked whether it would be admitted
redis.call('HSET', KEYS[2], 'model_version', version, 'queue', queue, unpack(ARGV, 19))
redis.call('EXPIRE', KEYS[2], ARGV[4])
-- The job's message, in the same atomic step (kombu's Redis transport: LPUSH, workers BRPOP).
if ARGV[17] ~= '' then
  redis.call('LPUSH', queue, (string.gsub(ARGV[17], '@queue@', (string.gsub(queue, '%%', '%%%%')), 1)))
end
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[7])
redis.call('ZADD', backlog_key, now, ARGV[7])
if key_limit > 0 then redis.call('ZADD', key_jobs, now, ARGV[7]) end
-- A shadow copy for the shadow version, if one is set and drawn: the same photo and deadline,
-- no client (never shown), not in any backlog; dropped, not queued, when its queue is behind.
local shadow = redis.call('HGET', KEYS[1], 'shadow')
if ARGV[14] == '' or not shadow or shadow == '' or shadow == version then return {'ok', version, queue} end
local fraction = tonumber(redis.call('HGET', KEYS[1], 'shadow_fraction') or '0') or 0
if tonumber(ARGV[15]) >= fraction then return {'ok', version, queue} end
local shadow_queue = ARGV[5] .. shadow
if redis.call('LLEN', shadow_queue) >= tonumber(ARGV[16]) then
  local stats = ARGV[9] .. 'stats:' .. shadow .. ':' .. math.floor(now / 60)
  redis.call('HINCRBY', stats, 'shadow_dropped', 1)
  redis.call('EXPIRE', stats, 691200)
  return {'ok', version, queue}
end
local copy = {}
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  local name = fields[i]
  if name ~= 'id' and name ~= 'client' and name ~= 'notify' and name ~= 'model_version' and name ~= 'queue' then
    table.insert(copy, name)
    table.insert(copy, fields[i + 1])
  end
end
local shadow_key = ARGV[9] .. 'job:' .. ARGV[14]
redis.call('HSET', shadow_key, 'id', ARGV[14], 'model_version', shadow, 'queue', shadow_queue,
           'shadow_of', ARGV[7], unpack(copy))
redis.call('EXPIRE', shadow_key, ARGV[4])
redis.call('HSET', KEYS[2], 'shadow_id', ARGV[14])
if ARGV[18] ~= '' then
  redis.call('LPUSH', shadow_queue, (string.gsub(ARGV[18], '@queue@', (string.gsub(shadow_queue, '%%', '%%%%')), 1)))
end
return {'ok', version, queue, shadow_queue, ARGV[14]}
"""

_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[5])
  return {'missing'}
end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'succeeded' or status == 'failed' then return {'done'} end
if status == 'running' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') or 0
  if lease > tonumber(ARGV[1]) then return {'busy'} end
end
local n = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if n > tonumber(ARGV[3]) then return {'exhausted', tostring(n)} end
local lease_until = tonumber(ARGV[1]) + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[2],
           'lease_until', tostring(lease_until))
redis.call('ZADD', KEYS[2], lease_until, ARGV[5])
return {'claimed', redis.call('HGETALL', KEYS[1])}
"""

# Jobs whose deadline passed without a finish: their message may be gone (a worker
# killed between taking a message and recording it), so they are sent again. Each
# returned job gets a new deadline, so concurrent reapers never both take it.
_REAP = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  local key = ARGV[4] .. id
  local fields = redis.call('HMGET', key, 'status', 'model_version', 'request_id')
  if not fields[1] or fields[1] == 'succeeded' or fields[1] == 'failed' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, fields[2] or '')
    table.insert(out, fields[3] or '')
  end
end
return out
"""

# Extends the leases of the jobs one worker is computing (its heartbeat), only while they are
# still running on that worker: a finished job or one another worker took over is left alone.
_RENEW = """
local renewed = 0
for i = 4, #ARGV do
  local key = ARGV[2] .. ARGV[i]
  local fields = redis.call('HMGET', key, 'status', 'worker')
  if fields[1] == 'running' and fields[2] == ARGV[1] then
    redis.call('HSET', key, 'lease_until', ARGV[3])
    redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
"""

# Gives a claimed job back (an infrastructure error, not the job's fault): queued again, the
# delivery not counted, the queued job's lease again; only by the worker that holds it.
_RELEASE = """
local fields = redis.call('HMGET', KEYS[1], 'status', 'worker')
if fields[1] ~= 'running' or fields[2] ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'deliveries', -1)
redis.call('HSET', KEYS[1], 'status', 'queued', 'lease_until', ARGV[2], 'last_error', ARGV[4])
redis.call('HDEL', KEYS[1], 'worker', 'started_at')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# Marks a queued job as rescued from the message ``ARGV[1]`` (taken by a worker that never
# claimed it), once per message: the caller sends it again only when this returns 1.
_RESCUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
return redis.call('HSETNX', KEYS[1], 'rescued:' .. ARGV[1], '1')
"""

_WITHDRAW = """
local fields = redis.call('HMGET', KEYS[1], 'model_version', 'client')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if fields[1] then redis.call('ZREM', ARGV[2] .. 'backlog:' .. fields[1], ARGV[1]) end
if fields[2] then redis.call('ZREM', ARGV[2] .. 'keyjobs:' .. fields[2], ARGV[1]) end
return 1
"""

# The first terminal write wins. A finish takes the job out of its version's backlog, and a
# success counts towards the completion rate of the version that computed it (admission, above).
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('ZREM', KEYS[2], ARGV[4])
  return 0
end
if status == 'succeeded' or status == 'failed' then return 0 end
local fields = redis.call('HMGET', KEYS[1], 'notify', 'model_version', 'client', 'shadow_of')
-- ARGV[6]: how many live-figure counters follow (common.livestats), then their hash; then the fields.
local counters = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], unpack(ARGV, 8 + counters))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if counters > 0 then
  local stats = ARGV[7 + counters]
  for i = 7, 6 + counters do redis.call('HINCRBY', stats, ARGV[i], 1) end
  redis.call('EXPIRE', stats, 691200)
end
redis.call('ZREM', KEYS[2], ARGV[4])
if fields[2] then redis.call('ZREM', ARGV[5] .. 'backlog:' .. fields[2], ARGV[4]) end
if fields[3] then redis.call('ZREM', ARGV[5] .. 'keyjobs:' .. fields[3], ARGV[4]) end
if ARGV[3] == 'succeeded' and not fields[4] then  -- shadow copies are in no backlog either
  local version = redis.call('HGET', KEYS[1], 'model_version')
  if version then
    local key = ARGV[5] .. 'rate:' .. version .. ':' .. redis.call('TIME')[1]
    redis.call('INCR', key)
    redis.call('EXPIRE', key, 120)
  end
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
if fields[1] and fields[1] ~= '' then redis.call('PUBLISH', fields[1], ARGV[4]) end
return 1
"""


# Seller feedback on a finished job: kept once, with the job (first write wins).
_FEEDBACK = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'succeeded' then return status end
if redis.call('HSETNX', KEYS[1], 'feedback', ARGV[1]) == 0 then return 'exists' end
redis.call('HSET', KEYS[1], 'feedback_at', ARGV[2])
return 'ok'
"""


# A hash and the fields in it that a job's first terminal write adds one to.
Counters = tuple[str, list[str]]


@dataclass(frozen=True)
class Routed:
    outcome: str  # "ok", "full" (MAX_QUEUE_DEPTH), "late" (its budget), "key_full" or "no_model"
    version: str = ""
    queue: str = ""
    depth: int = 0
    # "late": the version's unfinished jobs, the wait they mean, and its jobs per second
    backlog: int = 0
    wait_seconds: float = 0.0
    rate: float = 0.0
    # "ok" with a shadow copy: the copy's queue and job id
    shadow_queue: str = ""
    shadow_id: str = ""
    # "ok": the record as the script wrote it (what a read right after would give, unless a
    # worker has claimed it meanwhile)
    record: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    outcome: str  # "claimed", "done", "missing" or "exhausted"
    record: dict[str, str] = field(default_factory=dict)
    deliveries: int = 0


@dataclass
class JobStore:
    client: redis.Redis
    prefix: str = "recog:"
    ttl_seconds: int = 86400
    # How long a job may go without finishing (queued, or running on one worker) before
    # it is delivered again; keep it near the broker's visibility timeout.
    lease_seconds: float = 300.0

    def __post_init__(self) -> None:
        self._create = self.client.register_script(_CREATE)
        self._claim = self.client.register_script(_CLAIM)
        self._finish = self.client.register_script(_FINISH)
        self._reap = self.client.register_script(_REAP)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._rescue = self.client.register_script(_RESCUE)
        self._withdraw = self.client.register_script(_WITHDRAW)
        self._feedback = self.client.register_script(_FEEDBACK)

    # --- keys -------------------------------------------------------------------------

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def done_channel(self, job_id: str) -> str:
        return f"{self.prefix}done:{job_id}"

    @property
    def pending_key(self) -> str:
        return f"{self.prefix}pending"

    @property
    def rollout_key(self) -> str:
        return rollout_key(self.prefix)

    # --- API side ---------------------------------------------------------------------

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def create(
        self,
        *,
        job_id: str,
        fields: dict[str, Any],
        default_version: str,
        max_queue_depth: int,
        canary_draw: float,
        budget_seconds: float = 0.0,
        rate_window_seconds: int = 10,
        client: str = "",
        client_max_jobs: int = 0,
        dry_run: bool = False,
        shadow_draw: float = 1.0,
        shadow_max_depth: int = 0,
        enqueue: bool = False,
        request_id: str | None = None,
    ) -> Routed:
        """Create and route the job, unless its version's queue is over ``max_queue_depth``, the
        estimated wait for it is over ``budget_seconds`` (0: no estimate), or ``client`` already
        has ``client_max_jobs`` unfinished jobs (0: no limit). ``dry_run``: only say whether it
        would be admitted now, writing nothing (a cheap refusal before an upload is read).

        With a shadow version in the rollout state and ``shadow_draw`` under its fraction, a shadow
        copy of the job is created too, unless the shadow queue holds ``shadow_max_depth``
        messages already.

        ``enqueue``: the script also pushes the job's message (and its shadow copy's) onto the
        queue it routed it to, in the same atomic step; otherwise the caller sends them
        (``Routed.queue``, ``Routed.shadow_queue``)."""
        keys, args, record = self._create_call(
            job_id=job_id, fields=fields, default_version=default_version, max_queue_depth=max_queue_depth,
            canary_draw=canary_draw, budget_seconds=budget_seconds, rate_window_seconds=rate_window_seconds,
            client=client, client_max_jobs=client_max_jobs, dry_run=dry_run, shadow_draw=shadow_draw,
            shadow_max_depth=shadow_max_depth, enqueue=enqueue, request_id=request_id)
        return self._routed(self._create(keys=keys, args=args), record)

    def _queued_lease_until(self, now: float, record: dict[str, str]) -> float:
        """When the reaper sends a queued job again if no worker has claimed it: after the lease,
        or at its deadline if that comes first. A message lost in a failover (taken from the queue
        on a primary that died before its replica had it recorded) then ends its job as
        ``deadline_exceeded`` when its client stops waiting, not a lease of minutes later; a job
        still in a backlog at its deadline gets a second message, and both are skipped."""
        try:
            deadline = float(record["deadline"])
        except (KeyError, ValueError):
            return now + self.lease_seconds
        return min(now + self.lease_seconds, max(now, deadline))

    def create_in(self, pipe: redis.client.Pipeline, **kwargs: Any) -> Callable[[Any], Routed]:
        """``create`` queued on ``pipe`` (one round trip with other commands): returns what reads its
        reply from the pipeline's results."""
        keys, args, record = self._create_call(**kwargs)
        self._create(keys=keys, args=args, client=pipe)
        return lambda reply: self._routed(reply, record)

    def _create_call(
        self, *, job_id: str, fields: dict[str, Any], default_version: str, max_queue_depth: int,
        canary_draw: float, budget_seconds: float = 0.0, rate_window_seconds: int = 10, client: str = "",
        client_max_jobs: int = 0, dry_run: bool = False, shadow_draw: float = 1.0, shadow_max_depth: int = 0,
        enqueue: bool = False, request_id: str | None = None,
    ) -> tuple[list[str], list[str], dict[str, str]]:
        now = time.time()
        record = {"id": job_id, "status": QUEUED, "created_at": repr(now), "deliveries": "0"}
        record.update({k: _to_str(v) for k, v in fields.items()})
        flat: list[str] = []
        for key, value in record.items():
            flat += [key, value]
        shadow_id = "" if dry_run else self.new_id()
        message = shadow_message = ""
        if enqueue and not dry_run:
            message = recognition_message(job_id=job_id, request_id=request_id)
            shadow_message = recognition_message(job_id=shadow_id, request_id=request_id)
        keys = [self.rollout_key, self.job_key(job_id), self.pending_key]
        args = [
            default_version,
            repr(canary_draw),
            str(max_queue_depth),
            str(self.ttl_seconds),
            QUEUE_PREFIX,
            repr(self._queued_lease_until(now, record)),
            job_id,
            repr(float(budget_seconds)),
            self.prefix,
            str(int(rate_window_seconds)),
            client,
            str(int(client_max_jobs)),
            "1" if dry_run else "0",
            shadow_id,
            repr(shadow_draw),
            str(int(shadow_max_depth)),
            message,
            shadow_message,
            *flat,
        ]
        return keys, args, record

    @staticmethod
    def _routed(reply: Any, record: dict[str, str]) -> Routed:
        outcome = _s(reply[0])
        if outcome == "ok":
            written = {**record, "model_version": _s(reply[1]), "queue": _s(reply[2])}
            if len(reply) > 3:
                return Routed("ok", _s(reply[1]), _s(reply[2]), shadow_queue=_s(reply[3]), shadow_id=_s(reply[4]),
                              record={**written, "shadow_id": _s(reply[4])})
            return Routed("ok", _s(reply[1]), _s(reply[2]), record=written)
        if outcome == "full":
            return Routed("full", _s(reply[1]), depth=int(_s(reply[2])))
        if outcome == "key_full":
            return Routed("key_full", _s(reply[1]), backlog=int(_s(reply[2])))
        if outcome == "late":
            return Routed("late", _s(reply[1]), backlog=int(_s(reply[2])), wait_seconds=float(_s(reply[3])),
                          rate=float(_s(reply[4])))
        return Routed("no_model")

    def replicate(self, job_id: str, *, replicas: int, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` until ``replicas`` replicas of the primary hold everything
        written so far for ``job_id``; return how many do.

        Redis ``WAIT`` counts the replicas that hold this connection's last write, and the job's
        record and message may have gone through another connection of the pool (or the Celery
        producer's, for a message sent again); so this first writes ``enqueued_at`` to the record,
        which the primary's replication stream carries after them: a replica that has it has all."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.job_key(job_id), "enqueued_at", repr(time.time()))
        pipe.execute_command("WAIT", replicas, timeout_ms)
        return int(pipe.execute()[-1])

    def delete(self, job_id: str) -> None:
        """Withdraw a job the API could not promise (its message failed, or no replica has it):
        the record and its places in the indexes, so that it counts in no backlog."""
        self._withdraw(keys=[self.job_key(job_id), self.pending_key], args=[job_id, self.prefix])

    def add_feedback(self, job_id: str, feedback: dict[str, Any]) -> str:
        """Keep the seller's feedback with a succeeded job: "ok"; "exists" (given before);
        "missing"; or the job's status when it has not succeeded."""
        return _s(self._feedback(keys=[self.job_key(job_id)],
                                 args=[json.dumps(feedback, separators=(",", ":")), repr(time.time())]))

    def get(self, job_id: str) -> dict[str, str] | None:
        raw = self.client.hgetall(self.job_key(job_id))
        if not raw:
            return None
        return {_s(k): _s(v) for k, v in raw.items()}

    def wait(
        self, job_id: str, timeout: float, *, stop: Callable[[], bool] | None = None,
        recheck_seconds: float = 1.0,
    ) -> dict[str, str] | None:
        """Return the record once it is terminal, or as it is when ``timeout`` runs out, or
        when ``stop`` (asked every ``recheck_seconds`` meanwhile) says to stop waiting.

        Subscribes before reading, so a finish that lands between the read and the
        wait is still seen. Blocks on the socket; with ``stop``, wakes to ask it (and read
        the record again) every ``recheck_seconds``.
        """
        deadline = time.monotonic() + timeout
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.done_channel(job_id))
            record = self.get(job_id)
            while record is not None and record.get("status") not in TERMINAL:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop()):
                    break
                pubsub.get_message(timeout=remaining if stop is None else min(remaining, recheck_seconds))
                record = self.get(job_id)
            return record
        finally:
            pubsub.close()

    # --- worker side ------------------------------------------------------------------

    def claim(self, job_id: str, *, worker: str, max_deliveries: int, lease_seconds: float | None = None) -> Claim:
        """Take the job for ``worker`` for ``lease_seconds`` (default: the store's lease), which
        ``renew`` extends while the worker lives."""
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        reply = self._claim(
            keys=[self.job_key(job_id), self.pending_key],
            args=[repr(time.time()), worker, str(max_deliveries), repr(lease), job_id],
        )
        outcome = _s(reply[0])
        if outcome == "claimed":
            flat = [_s(x) for x in reply[1]]
            record = dict(zip(flat[::2], flat[1::2], strict=True))
            return Claim("claimed", record, int(record.get("deliveries", "1")))
        if outcome == "exhausted":
            return Claim("exhausted", deliveries=int(_s(reply[1])))
        return Claim(outcome)  # "missing", "done" or "busy" (another worker holds its lease)

    def renew(self, job_ids: list[str], *, worker: str, lease_seconds: float) -> int:
        """Extend the leases of ``worker``'s running jobs; returns how many it still holds."""
        if not job_ids:
            return 0
        until = repr(time.time() + lease_seconds)
        return int(self._renew(keys=[self.pending_key], args=[worker, f"{self.prefix}job:", until, *job_ids]))

    def release(self, job_id: str, *, worker: str, reason: str) -> bool:
        """Give back a job ``worker`` claimed but could not compute for a reason not its own."""
        until = repr(time.time() + self.lease_seconds)
        return bool(self._release(keys=[self.job_key(job_id), self.pending_key],
                                  args=[worker, until, job_id, reason]))

    def rescue_many(self, taken: list[tuple[str, str]]) -> list[bool]:
        """For each (job id, delivery tag) of a message taken long ago: whether the job is still
        queued (its worker died before claiming it); true once per message. One round trip."""
        pipe = self.client.pipeline(transaction=False)
        for job_id, tag in taken:
            self._rescue(keys=[self.job_key(job_id)], args=[tag], client=pipe)
        return [bool(x) for x in pipe.execute()]

    def unrescue(self, job_id: str, *, delivery_tag: str) -> None:
        """Undo ``rescue_many``'s mark when sending the job again failed: the next round retries."""
        self.client.hdel(self.job_key(job_id), f"rescued:{delivery_tag}")

    def retry_soon(self, job_id: str) -> None:
        """Make an unfinished job overdue now (sending it again failed): the next reap retries."""
        self.client.zadd(self.pending_key, {job_id: time.time()}, xx=True)

    def reap(self, *, limit: int = 100) -> list[tuple[str, str, str]]:
        """Overdue unfinished jobs as (job id, model version, request id), each given a new deadline."""
        flat = [_s(x) for x in self._reap(
            keys=[self.pending_key],
            args=[repr(time.time()), repr(self.lease_seconds), str(limit), f"{self.prefix}job:"],
        )]
        return list(zip(flat[::3], flat[1::3], flat[2::3], strict=True))

    def finish_many(
        self, finishes: list[tuple[str, dict[str, Any]]], counters: list[Counters | None] | None = None,
    ) -> list[bool]:
        """Write terminal states for many jobs in one round trip; first write wins. ``counters``
        (one per finish, or None): a hash and the fields in it to add one to, only when this is
        the job's first terminal write (its version's live figures, ``common.livestats``)."""
        pipe = self.client.pipeline(transaction=False)
        for (job_id, fields), count in zip(finishes, counters or [None] * len(finishes), strict=True):
            status = fields["status"]
            flat: list[str] = []
            for key, value in fields.items():
                flat += [key, _to_str(value)]
            counted = [str(len(count[1])), *count[1], count[0]] if count and count[1] else ["0", ""]
            self._finish(
                keys=[self.job_key(job_id), self.pending_key],
                args=[str(self.ttl_seconds), self.done_channel(job_id), status, job_id, self.prefix, *counted,
                      *flat],
                client=pipe,
            )
        return [bool(x) for x in pipe.execute()]

    def succeed(self, job_id: str, *, counters: Counters | None = None, **fields: Any) -> bool:
        return self.finish_many([(job_id, succeeded_fields(**fields))], [counters])[0]

    def fail(self, job_id: str, code: str, message: str, *, counters: Counters | None = None, **fields: Any) -> bool:
        return self.finish_many([(job_id, failed_fields(code, message, **fields))], [counters])[0]


def succeeded_fields(*, result: dict, timings: dict, **extra: Any) -> dict[str, Any]:
    return {
        "status": SUCCEEDED,
        "finished_at": time.time(),
        "result": result,
        "timings": timings,
        **extra,
    }


def failed_fields(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": FAILED,
        "finished_at": time.time(),
        "error_code": code,
        "error_message": message,
        **extra,
    }


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    if value is None:
        return ""
    return str(value)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
