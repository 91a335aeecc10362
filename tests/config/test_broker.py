"""The broker transport's own changes to kombu's Redis transport, against a real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis
from kombu import Connection, Exchange, Queue

from config.broker import Transport


def test_a_channel_keeps_one_redis_client_per_pool_for_its_calls(redis_url: str) -> None:
    with Connection(redis_url, transport=Transport) as connection:
        channel = connection.default_channel
        client = channel._create_client()
        with channel.conn_or_acquire() as acquired:
            assert acquired is client
        assert channel._create_client(asynchronous=True) is not client  # the event loop's own
        channel._pool = None  # what a reconnection does: a new pool, and so a new client
        assert channel._create_client() is not client
        assert channel._create_client().connection_pool is channel.pool


def one_message(connection: Connection, payload: dict) -> Queue:
    """A queue of its own holding one message with ``payload``."""
    name = f"test-broker-{uuid.uuid4().hex}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    connection.Producer(connection.default_channel).publish(payload, exchange=queue.exchange, routing_key=name,
                                                            declare=[queue], serializer="json")
    return queue


def test_messages_are_recorded_unacknowledged_and_acknowledged_through_it(redis_url: str) -> None:
    with Connection(redis_url, transport=Transport) as connection:
        channel = connection.default_channel
        queue = one_message(connection, {"n": 1})
        name = queue.name
        message = queue(channel).get(no_ack=False)
        assert message is not None and message.payload == {"n": 1}
        client = channel._create_client()
        assert client.hexists(channel.unacked_key, message.delivery_tag)
        message.ack()
        assert not client.hexists(channel.unacked_key, message.delivery_tag)
        assert client.llen(name) == 0


def test_a_message_that_cannot_be_recorded_still_reaches_its_consumer(redis_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The primary gone between kombu's BRPOP and its record of the message: the message goes on to
    its task (whose claim then decides), instead of being dropped in the worker's memory."""
    with Connection(redis_url, transport=Transport) as connection:
        channel = connection.default_channel
        queue = one_message(connection, {"n": 2})

        def gone(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise redis.ConnectionError("Connection closed by server.")

        with monkeypatch.context() as patched:
            patched.setattr(redis.client.Pipeline, "execute", gone)  # the record's round trip
            message = queue(channel).get(no_ack=False)
        assert message is not None and message.payload == {"n": 2}
        assert message.delivery_tag in channel.qos._delivered  # counted against the prefetch
        client = channel._create_client()
        assert not client.hexists(channel.unacked_key, message.delivery_tag)
        message.ack()  # removes nothing, raises nothing
        assert client.llen(queue.name) == 0 and not client.hexists(channel.unacked_key, message.delivery_tag)


def test_a_full_redis_still_ends_the_connection_rather_than_draining_the_queue(redis_url: str,
                                                                               monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with Connection(redis_url, transport=Transport) as connection:
        channel = connection.default_channel
        queue = one_message(connection, {"n": 3})

        def full(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

        with monkeypatch.context() as patched:
            patched.setattr(redis.client.Pipeline, "execute", full)
            with pytest.raises(tuple(Transport.connection_errors)):
                queue(channel).get(no_ack=False)
