"""kombu's Redis transport, made to survive a broker connection lost under a worker.

kombu 5.7 with Celery 5.7: when the connection to Redis breaks while a worker consumes, the
consumer ``collect()``s the connection, which drops its transport (``transport.client = None``)
but leaves its channels, and the messages delivered on them, alive. Anything that later reaches
Redis through such a channel — closing it (which restores its unacknowledged messages), or
acknowledging or rejecting one of its messages when a task ends — builds a new connection pool
from ``transport.client.hostname`` and raises ``AttributeError: 'NoneType' object has no
attribute 'hostname'``. kombu and Celery let only connection and channel errors through those
paths, so the AttributeError ends the worker process ("Unrecoverable error") and with it the
loaded model: a Redis blip cost a model load.

Here such a channel raises a connection error instead, which every one of those paths already
handles (logged; the consumer reconnects on a new connection). Nothing is lost by it: the
messages stay in Redis's ``unacked`` hash until the visibility timeout brings them back, and
their jobs are sent again sooner by the worker (``WorkerProcess.resend``) or by the reaper.

A message taken from the queue whose record as unacknowledged fails with the connection
(``KeepingQoS``) is handed to its task rather than dropped.

In a worker process (``take_into``), a message is never only in the worker's memory: the channel
takes it with ``BLMOVE`` from its queue into the worker's own taking list (``common.queues``)
instead of kombu's ``BRPOP``, and the pipeline that records it as unacknowledged removes it from
there. A worker killed between the two leaves the message in its list, and the reaper puts it
back on its queue once the worker's heartbeat has run out (``WorkerProcess.reap``); with kombu's
``BRPOP`` it was gone, and its job failed at its deadline.

The same holds for kombu's Sentinel transport (``SentinelTransport``, chosen by
``config.settings`` when ``REDIS_URL`` names sentinels).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from time import monotonic, time
from typing import Any

from celery.app.amqp import AMQP as CeleryAMQP
from kombu import Connection as KombuConnection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import RedisError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.env import env_float
from common.queues import return_taken, taking_key

logger = logging.getLogger(__name__)


@dataclass
class _Taking:
    """A message a channel took into its worker's list, while it is delivered."""

    key: str  # the taking list
    raw: bytes
    appended: bool = False  # recorded as unacknowledged, or handed to its task all the same


@dataclass(frozen=True)
class _Taker:
    prefix: str
    worker_id: str

    @property
    def key(self) -> str:
        """The worker's taking list."""
        return taking_key(self.prefix, self.worker_id)


_taker: _Taker | None = None


def take_into(*, prefix: str, worker_id: str) -> None:
    """Make this process's consumers take each message into worker ``worker_id``'s own list
    (``common.queues.taking_key``) rather than pop it. Called once, by the worker process,
    before its consumer starts; a process that never calls it (the API) pops as kombu does."""
    global _taker
    _taker = _Taker(prefix, worker_id)


def _has_blmove(client: Any) -> bool:
    """Whether the Redis behind ``client`` has BLMOVE (6.2 and later); if not, say so: its
    workers pop as kombu does, and a worker killed between a take and its record loses the message."""
    try:
        version = str(client.info("server").get("redis_version", "0"))
    except RedisResponseError:  # INFO refused (an ACL): Redis 6.2 or later is required anyway
        return True
    parts = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if parts >= (6, 2):
        return True
    logger.warning("Redis %s has no BLMOVE (6.2 and later): messages are popped as kombu does, and a worker "
                   "killed between taking a message and recording it takes the message with it", version)
    return False


class KeepingQoS(kombu_redis.QoS):
    """kombu's bookkeeping of unacknowledged messages, which keeps a message it could not record.

    kombu takes a message off its queue (BRPOP), then records it as unacknowledged (a second
    round trip), then hands it to the consumer. When the record fails — the primary died between
    the two, or a failover is under way — kombu drops the message: it is then in no
    list anywhere, and only the job's record, still ``queued``, brings it back, through the reaper
    at the job's deadline. Here the message goes on to its task all the same (and into the
    channel's in-memory count of delivered messages, so prefetch stays right): the task claims its
    job, which runs if Redis answers by then; if not, the task's transient error has the worker
    send the job again once Redis answers (``WorkerProcess.resend``). Acknowledging a message that
    was never recorded removes nothing, and restores nothing twice.

    Only a lost connection: a full Redis (which still lets BRPOP take messages, and refuses every
    write) keeps kombu's way — the error ends the consumer's connection, which reconnects until
    Redis has room — so that a worker does not drain the queue into its memory meanwhile."""

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            self._record(message, delivery_tag)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            logger.warning("a taken message could not be recorded as unacknowledged (%s: %s); its task runs "
                           "all the same", type(exc).__name__, exc)
            virtual.QoS.append(self, message, delivery_tag)
        taking = getattr(self.channel, "_taking", None)
        if taking is not None:
            taking.appended = True

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)
        except RedisResponseError as exc:
            self._free_slot(delivery_tag, "acknowledge", exc)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except RedisResponseError as exc:
            self._free_slot(delivery_tag, "reject", exc)

    def _free_slot(self, delivery_tag: str, what: str, exc: Exception) -> None:
        """A full Redis refused an acknowledgement or a rejection (kombu's MULTI/EXEC: refused whole,
        so nothing changed). kombu would keep the message's prefetch slot taken for good, and once
        every slot was, the worker, alive and connected, would never take a message again. The
        slot is freed; the message stays recorded as unacknowledged and comes back with the
        visibility timeout, its job sooner through the reaper (a finished job's claim drops it)."""
        logger.warning("could not %s a message (%s: %s); it stays recorded as unacknowledged, and its prefetch "
                       "slot is freed", what, type(exc).__name__, exc)
        virtual.QoS.ack(self, delivery_tag)

    def _record(self, message: Any, delivery_tag: str) -> None:
        """kombu's record of a message as unacknowledged (a MULTI/EXEC pipeline), which also takes
        the message out of the worker's taking list when the channel took it there."""
        taking = getattr(self.channel, "_taking", None)
        if taking is None:
            return super().append(message, delivery_tag)
        delivery = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()})
            pipe.hset(self.unacked_key, delivery_tag,
                      dumps([message._raw, delivery["exchange"], delivery["routing_key"]]))
            pipe.lrem(taking.key, 1, taking.raw)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)


class _SurvivingChannel(kombu_redis.Channel):
    QoS = KeepingQoS

    # kombu builds a new redis.Redis client for every Redis call outside its event loop: twice per
    # message (recording it as unacknowledged, and the acknowledgement), each costing more CPU
    # than the call's round trip (redis-py's constructor). One client per connection pool serves
    # them all: redis-py's clients are thread-safe (each command borrows a connection from the
    # pool), and a new pool (after a reconnection) gets a new client.
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client

    # --- taking into the worker's own list (``take_into``) ------------------------------
    _taking: _Taking | None = None  # the message being delivered
    _taking_registered: tuple[str, str] | None = None  # (worker, queue) once registered on this connection
    _taking_from: str | None = None  # the queue of the BLMOVE in flight; None for a BRPOP
    _no_blmove = False  # the Redis is older than 6.2

    def _taking_queue(self) -> str | None:
        """The one queue this channel takes from into its worker's list; None to pop as kombu
        does (not a worker, several queues, priority queues or a global key prefix)."""
        if _taker is None or self._no_blmove or self.global_keyprefix or list(self.priority_steps) != [0]:
            return None
        queues = self.active_queues
        return queues[0] if len(queues) == 1 else None

    def _brpop_start(self, timeout: float | None = None) -> None:
        queue = self._taking_from = self._taking_queue()
        if queue is None:
            return super()._brpop_start(timeout)
        taker = _taker
        assert taker is not None
        if self._taking_registered != (taker.worker_id, queue) and not self._register_taker(taker, queue):
            self._taking_from = None  # a Redis without BLMOVE
            return super()._brpop_start(timeout)
        if timeout is None:
            timeout = self.brpop_timeout
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command("BLMOVE", queue, taker.key, "RIGHT", "LEFT", timeout or 0)

    def _register_taker(self, taker: _Taker, queue: str) -> bool:
        """Before the first take on a connection: register the worker as the taker of ``queue`` (the
        reaper finds a dead worker's list through it), after putting back on the queue what the
        list holds — taken through an earlier connection that broke, perhaps before its reply was
        read (a duplicate of a message that was delivered is dropped by its job's claim). False
        on a Redis without BLMOVE. A refusal by Redis counts as a connection error: the consumer
        reconnects and tries again, and the worker keeps its model."""
        client = self._create_client()
        try:
            if not _has_blmove(client):
                self._no_blmove = True  # asked once per channel
                return False
            returned = return_taken(client, prefix=taker.prefix, worker_id=taker.worker_id, queue=queue,
                                    register=True)
        except RedisResponseError as exc:
            raise RedisConnectionError(f"could not register as a taker of {queue}: {exc}") from exc
        if returned:
            logger.warning("messages an earlier connection took and may not have delivered sent back to "
                           "their queue", extra={"queue": queue, "count": returned})
        self._taking_registered = (taker.worker_id, queue)
        return True

    def _on_connection_disconnect(self, connection: Any) -> None:
        # The connection of a take broke (kombu's health check drops one whose reply is overdue, on
        # this same channel): register again before the next take, which puts back what this one
        # may have taken without the reply ever being read.
        if connection is self._in_poll and self._taking_from is not None:
            self._taking_registered = None
        super()._on_connection_disconnect(connection)

    def _brpop_read(self, **options: Any) -> bool:
        taker, queue = _taker, self._taking_from
        if taker is None or queue is None:
            return super()._brpop_read(**options)
        try:
            try:
                raw = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self._taking_registered = None  # what the lost reply took goes back at the next take
                self.client.connection.disconnect()  # kombu's way: the next round reconnects
                raise
            if raw is None:
                raise virtual.Empty()
            taking = self._taking = _Taking(taker.key, raw)
            try:
                self.connection._deliver(loads(bytes_to_str(raw)), queue)
            except Exception as exc:
                if taking.appended or isinstance(exc, RedisError):
                    # Recorded (or handed to its task); or Redis failed the record (a full Redis):
                    # kombu's way, and the message stays in the list for the next registration.
                    raise
                # Not a message anyone could run (not JSON, not kombu's shape): dropped, rather
                # than returned by the reaper, and ending a worker, again and again.
                logger.exception("dropped a message that could not be delivered from %s: %.200r", queue, raw)
                self._create_client().lrem(taker.key, 1, raw)
                raise virtual.Empty() from None
            finally:
                self._taking = None
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError("this channel's broker connection was closed after a failure")
        return super()._connparams(asynchronous=asynchronous)


class Channel(_SurvivingChannel):
    pass


# A full Redis (maxmemory, noeviction) refuses the write that records a message the worker just
# took as unacknowledged; kombu lets that error out of its event loop and the worker process
# ends (and reloads its model). Counted as a connection error instead, it makes the consumer
# reconnect every few seconds until Redis has room again. A worker's own take (BLMOVE, a write)
# is refused as well, so it takes nothing meanwhile; outside a worker (kombu's BRPOP, which a full
# Redis allows) the message taken could not be recorded anywhere, and its job is sent again by the
# reaper at its deadline or when its lease runs out.
_CONNECTION_ERRORS = kombu_redis.Transport.connection_errors + (RedisOutOfMemoryError,)


class Transport(kombu_redis.Transport):
    Channel = Channel
    connection_errors = _CONNECTION_ERRORS


# The Sentinel channel builds its pool through ``_connparams`` too (then asks a sentinel for
# the primary), so the same guard covers a channel left behind by a failover.
class SentinelChannel(_SurvivingChannel, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
    connection_errors = _CONNECTION_ERRORS


# Celery's consumer reconnects through ``Connection.ensure_connection`` with kombu's default
# intervals (2 s, then 2 s more per attempt, up to 30 s), so after a minute's outage a worker
# would wait up to 30 s more before it consumes again. Waiting at most this long between
# attempts (one cheap TCP connect each) brings it back within seconds of Redis answering.
RECONNECT_MAX_SECONDS = env_float("BROKER_RECONNECT_MAX_SECONDS", 2.0, minimum=0.1, maximum=30)


class Connection(KombuConnection):
    def ensure_connection(self, *args: Any, **kwargs: Any) -> KombuConnection:
        kwargs.setdefault("interval_start", min(1.0, RECONNECT_MAX_SECONDS))
        kwargs.setdefault("interval_step", min(1.0, RECONNECT_MAX_SECONDS))
        kwargs.setdefault("interval_max", RECONNECT_MAX_SECONDS)
        return super().ensure_connection(*args, **kwargs)


class AMQP(CeleryAMQP):
    """Celery's broker plumbing with the ``Connection`` above (``Celery(amqp=...)``)."""

    Connection = Connection
    BrokerConnection = Connection
