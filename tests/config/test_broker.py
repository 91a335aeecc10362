"""The broker transport's own changes to kombu's Redis transport, against a real Redis."""

from __future__ import annotations

import uuid

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


def test_messages_are_recorded_unacknowledged_and_acknowledged_through_it(redis_url: str) -> None:
    name = f"test-broker-{uuid.uuid4().hex}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(redis_url, transport=Transport) as connection:
        channel = connection.default_channel
        connection.Producer(channel).publish({"n": 1}, exchange=queue.exchange, routing_key=name,
                                             declare=[queue], serializer="json")
        message = queue(channel).get(no_ack=False)
        assert message is not None and message.payload == {"n": 1}
        client = channel._create_client()
        assert client.hexists(channel.unacked_key, message.delivery_tag)
        message.ack()
        assert not client.hexists(channel.unacked_key, message.delivery_tag)
        assert client.llen(name) == 0
