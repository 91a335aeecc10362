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

The same holds for kombu's Sentinel transport (``SentinelTransport``, chosen by
``config.settings`` when ``REDIS_URL`` names sentinels).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.app.amqp import AMQP as CeleryAMQP
from kombu import Connection as KombuConnection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.env import env_float

logger = logging.getLogger(__name__)


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
            super().append(message, delivery_tag)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            logger.warning("a taken message could not be recorded as unacknowledged (%s: %s); its task runs "
                           "all the same", type(exc).__name__, exc)
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

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError("this channel's broker connection was closed after a failure")
        return super()._connparams(asynchronous=asynchronous)


class Channel(_SurvivingChannel):
    pass


# A full Redis (maxmemory, noeviction) refuses the write that records a message the worker just
# took as unacknowledged; kombu lets that error out of its event loop and the worker process
# ends (and reloads its model). Counted as a connection error instead, it makes the consumer
# reconnect every few seconds until Redis has room again. The message taken meanwhile could not
# be recorded anywhere (Redis refuses every write); its job is sent again by the reaper at its
# deadline or when its lease runs out.
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
