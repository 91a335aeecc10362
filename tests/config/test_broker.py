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


def test_the_ack_of_a_message_whose_finish_ended_its_record_makes_no_round_trip(redis_url: str) -> None:
    from config.broker import SETTLED

    name = f"test-broker-{uuid.uuid4().hex}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(redis_url, transport=Transport) as connection:
        channel = connection.default_channel
        producer = connection.Producer(channel)
        for n in (1, 2):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key=name, declare=[queue], serializer="json")
        settled, plain = queue(channel).get(no_ack=False), queue(channel).get(no_ack=False)
        assert settled is not None and plain is not None
        client = channel._create_client()
        client.hdel(channel.unacked_key, settled.delivery_tag)  # what the job's finish script does
        client.zrem(channel.unacked_index_key, settled.delivery_tag)
        SETTLED.add(settled.delivery_tag)
        calls: list[str] = []
        remove = channel.qos._remove_from_indices
        channel.qos._remove_from_indices = lambda tag, pipe=None: calls.append(tag) or remove(tag, pipe)
        settled.ack()
        plain.ack()
        assert calls == [plain.delivery_tag]  # only the message whose record was still there
        channel.qos._flush()  # kombu's bookkeeping: both messages are done with in the process
        assert settled.delivery_tag not in channel.qos._delivered and plain.delivery_tag not in channel.qos._delivered
        assert not client.hexists(channel.unacked_key, plain.delivery_tag)


def test_settled_tags_are_bounded_and_taken_once() -> None:
    from config.broker import SettledTags

    tags = SettledTags(size=2)
    for tag in ("a", "b", "c"):
        tags.add(tag)
    assert not tags.take("a")  # dropped with the oldest: its ack makes its round trip
    assert tags.take("b") and tags.take("c")
    assert not tags.take("c")
