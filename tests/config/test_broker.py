"""The broker transport's own changes to kombu's Redis transport, against a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue

from common.queues import return_taken, takers, taking_key
from config import broker
from config.broker import KeepingQoS, Transport


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
    publish(connection, queue, payload)
    return queue


def publish(connection: Connection, queue: Queue, payload: dict) -> None:
    connection.Producer(connection.default_channel).publish(payload, exchange=queue.exchange, routing_key=queue.name,
                                                            declare=[queue], serializer="json")


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


# --- taking into the worker's own list (config.broker.take_into) ---------------------------

WORKER = "host-a:4242"
ONE_LIST = {"priority_steps": [0]}  # what config.settings gives the broker


@pytest.fixture
def taker(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process takes messages as worker WORKER does; the key prefix is returned."""
    prefix = f"broker-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setattr(broker, "_taker", None)  # put back after the test
    broker.take_into(prefix=prefix, worker_id=WORKER)
    yield prefix


def consume_one(connection: Connection, queue: Queue) -> list:
    """The messages one round of the consumer's event loop delivers (kombu's BRPOP path, or BLMOVE)."""
    delivered: list = []
    with connection.Consumer(queue, callbacks=[lambda body, message: delivered.append(message)], accept=["json"]):
        connection.drain_events(timeout=5)
    return delivered


def test_a_worker_takes_a_message_into_its_own_list_and_out_of_it_as_it_records_it(redis_url: str,
                                                                                    taker: str) -> None:
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        queue = one_message(connection, {"n": 4})
        [message] = consume_one(connection, queue)
        assert message.payload == {"n": 4}
        client = connection.default_channel._create_client()
        assert client.hexists("unacked", message.delivery_tag)  # recorded, as kombu does
        assert client.llen(taking_key(taker, WORKER)) == 0  # and out of the taking list in the same step
        assert client.llen(queue.name) == 0
        assert takers(client, taker) == {WORKER: queue.name}  # the reaper can find the list
        message.ack()
        assert not client.hexists("unacked", message.delivery_tag)


class Killed(BaseException):
    """A SIGKILL between the take and the record, as far as this process can play one."""


def test_a_message_taken_by_a_worker_that_dies_before_recording_it_stays_in_its_list(
        redis_url: str, taker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu's BRPOP leaves the message nowhere (popped, then the process is gone); here it waits in
    the worker's list, and ``return_taken`` (the reaper, once the worker's heartbeat has run out)
    puts it back on its queue, where the next consumer gets it."""
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        queue = one_message(connection, {"n": 5})

        def killed(self, message, delivery_tag):  # type: ignore[no-untyped-def]
            raise Killed

        with monkeypatch.context() as patched, pytest.raises(Killed):
            patched.setattr(KeepingQoS, "_record", killed)
            consume_one(connection, queue)
        client = connection.default_channel._create_client()
        assert client.llen(queue.name) == 0 and client.hlen("unacked") == 0
        assert client.llen(taking_key(taker, WORKER)) == 1  # not lost
        assert return_taken(client, prefix=taker, worker_id=WORKER, queue=queue.name) == 1
        assert client.llen(taking_key(taker, WORKER)) == 0 and takers(client, taker) == {}
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        [message] = consume_one(connection, queue)
        assert message.payload == {"n": 5}


def test_the_messages_a_dead_worker_took_go_back_oldest_first(redis_url: str, taker: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queue = f"test-broker-{uuid.uuid4().hex}"
    client.lpush(queue, "waiting")
    for name in ("old", "new"):  # BLMOVE RIGHT -> LEFT: the newest is on the left of the list
        client.lpush(taking_key(taker, WORKER), name)
    assert return_taken(client, prefix=taker, worker_id=WORKER, queue=queue) == 2
    assert [client.rpop(queue) for _ in range(3)] == [b"old", b"new", b"waiting"]  # workers take from the right
    assert return_taken(client, prefix=taker, worker_id=WORKER, queue=queue) == 0
    client.lpush(taking_key(taker, WORKER), "taken by a worker whose heartbeat came back")
    client.set(f"{taker}alive", 1)
    assert return_taken(client, prefix=taker, worker_id=WORKER, queue=queue, unless_exists=f"{taker}alive") == -1
    assert client.llen(taking_key(taker, WORKER)) == 1 and client.llen(queue) == 0


def test_a_message_whose_record_fails_with_the_connection_is_delivered_from_the_list(
        redis_url: str, taker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record's pipeline (which also empties the list) fails: the message goes on to its task,
    and stays in the list, where only the worker's death would send it again (a duplicate that the
    job's claim drops)."""
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        queue = one_message(connection, {"n": 6})
        execute = redis.client.Pipeline.execute

        def gone_at_the_record(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if any(command[0][0] == "LREM" for command in self.command_stack):
                raise redis.ConnectionError("Connection closed by server.")
            return execute(self, *args, **kwargs)  # the consumer's own declarations

        with monkeypatch.context() as patched:
            patched.setattr(redis.client.Pipeline, "execute", gone_at_the_record)
            [message] = consume_one(connection, queue)
        assert message.payload == {"n": 6}
        client = connection.default_channel._create_client()
        assert client.llen(taking_key(taker, WORKER)) == 1 and client.llen(queue.name) == 0


@pytest.mark.parametrize("options", [{}, ONE_LIST], ids=["priority-queues", "not-a-worker"])
def test_without_one_list_per_queue_or_outside_a_worker_messages_are_popped_as_kombu_does(
        redis_url: str, options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"broker-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setattr(broker, "_taker", None)
    if options == {}:  # a worker, but kombu's priority sub-queues: BRPOP over all of them
        broker.take_into(prefix=prefix, worker_id=WORKER)
    with Connection(redis_url, transport=Transport, transport_options=options) as connection:
        queue = one_message(connection, {"n": 7})
        [message] = consume_one(connection, queue)
        assert message.payload == {"n": 7}
        client = connection.default_channel._create_client()
        assert client.hexists("unacked", message.delivery_tag)
        assert takers(client, prefix) == {} and client.llen(taking_key(prefix, WORKER)) == 0


@pytest.mark.parametrize("poison", [b"\xff not json", b'{"not": "a kombu message"}', b"[1, 2]"],
                         ids=["not-json", "not-kombu", "not-an-object"])
def test_a_message_that_cannot_be_delivered_is_dropped_from_the_taking_list_and_the_consumer_goes_on(
        redis_url: str, taker: str, poison: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """kombu fails on such a message before recording it; kept in the list, the reaper would return
    it, and it would end one worker after another."""
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        queue = one_message(connection, {"n": 8})
        client = connection.default_channel._create_client()
        client.rpush(queue.name, poison)  # the right end: taken first
        [message] = consume_one(connection, queue)
        assert message.payload == {"n": 8}
        assert client.llen(taking_key(taker, WORKER)) == 0 and client.llen(queue.name) == 0
    assert "dropped a message that could not be delivered" in caplog.text


def test_a_take_whose_connection_broke_on_the_same_channel_is_put_back_before_the_next(redis_url: str,
                                                                                      taker: str) -> None:
    """kombu's health check drops a connection whose reply is overdue, and the channel reconnects on
    its own: what that take may have moved into the list goes back before the next take."""
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        queue = one_message(connection, {"n": 12})
        [first] = consume_one(connection, queue)  # registered on this connection
        first.ack()
        publish(connection, queue, {"n": 13})
        client = connection.default_channel._create_client()
        client.lmove(queue.name, taking_key(taker, WORKER), "RIGHT", "LEFT")  # the take whose reply is lost
        channel = connection.default_channel
        channel._in_poll, channel._taking_from = channel.client.connection, queue.name  # that take in flight
        channel.client.connection.disconnect()  # what the health check does
        [again] = consume_one(connection, queue)
        assert again.payload == {"n": 13}
        assert client.llen(taking_key(taker, WORKER)) == 0


def test_a_redis_without_blmove_has_its_messages_popped_as_kombu_does(
        redis_url: str, taker: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    info = redis.Redis.info

    def old_server(self, section=None, *args):  # type: ignore[no-untyped-def]
        reply = info(self, section, *args)
        return {**reply, "redis_version": "6.0.16"} if section == "server" else reply

    monkeypatch.setattr(redis.Redis, "info", old_server)
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        queue = one_message(connection, {"n": 9})
        [message] = consume_one(connection, queue)
        assert message.payload == {"n": 9}
        client = connection.default_channel._create_client()
        assert client.hexists("unacked", message.delivery_tag) and takers(client, taker) == {}
        with connection.Consumer(queue, accept=["json"]), pytest.raises(TimeoutError):
            connection.drain_events(timeout=2.5)  # more rounds of the empty queue's one-second take
    assert caplog.text.count("Redis 6.0.16 has no BLMOVE") == 1  # asked once


def test_a_consumer_that_starts_sends_back_what_an_earlier_connection_of_its_worker_took(
        redis_url: str, taker: str) -> None:
    """A connection that broke after Redis moved a message into the worker's list, before the worker
    read the reply: the message is in no queue and in no record, and its worker lives on. The
    worker's next consumer puts it back on the queue before it takes anything, and so delivers it."""
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        queue = one_message(connection, {"n": 11})
        client = connection.default_channel._create_client()
        client.lmove(queue.name, taking_key(taker, WORKER), "RIGHT", "LEFT")  # the lost reply's take
        [message] = consume_one(connection, queue)
        assert message.payload == {"n": 11}
        assert client.llen(taking_key(taker, WORKER)) == 0 and client.hexists("unacked", message.delivery_tag)
        assert takers(client, taker) == {WORKER: queue.name}


def test_a_registration_that_redis_refuses_is_a_connection_error_not_the_end_of_the_worker(
        redis_url: str, taker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """E.g. the script refused by a full Redis older than 7 (a plain error there): the consumer
    reconnects and tries again, as for any connection error, and the worker keeps its model."""
    def refused(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise redis.ResponseError("Error running script: OOM command not allowed")

    monkeypatch.setattr(broker, "return_taken", refused)
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        queue = one_message(connection, {"n": 14})
        with pytest.raises(tuple(Transport.connection_errors), match="could not register as a taker"):
            consume_one(connection, queue)


def test_a_worker_whose_record_a_full_redis_refuses_keeps_the_message_in_its_list(
        redis_url: str, taker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis filled up between the take and the record: kombu's way (the consumer reconnects), and the
    message is not taken for one that cannot be delivered: it stays in the list, and the next
    registration puts it back on the queue."""
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        queue = one_message(connection, {"n": 15})
        execute = redis.client.Pipeline.execute

        def full_at_the_record(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if any(command[0][0] == "LREM" for command in self.command_stack):
                raise redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
            return execute(self, *args, **kwargs)

        with monkeypatch.context() as patched, pytest.raises(tuple(Transport.connection_errors)):
            patched.setattr(redis.client.Pipeline, "execute", full_at_the_record)
            consume_one(connection, queue)
        client = connection.default_channel._create_client()
        assert client.llen(taking_key(taker, WORKER)) == 1
    with Connection(redis_url, transport=Transport, transport_options=ONE_LIST) as connection:
        [message] = consume_one(connection, queue)
        assert message.payload == {"n": 15}



@pytest.mark.parametrize("settle", ["reject-requeue", "reject", "ack"])
def test_an_ack_or_reject_that_a_full_redis_refuses_frees_the_prefetch_slot_and_keeps_the_record(
        redis_url: str, settle: str) -> None:
    """Seen in a clean-clone run: every task of a worker failed its claim on a full Redis and asked for
    its message back; kombu's refused rejection kept each prefetch slot, and the worker, alive and
    connected, never took a message again. A real full Redis here (maxmemory 1 byte)."""
    with Connection(redis_url, transport=Transport) as connection:
        channel = connection.default_channel
        channel.basic_qos(0, 1, False)  # one message at a time, as a worker thread's slot
        queue = one_message(connection, {"n": 16})
        message = queue(channel).get(no_ack=False)
        assert not channel.qos.can_consume()
        client = redis.Redis.from_url(redis_url)
        client.config_set("maxmemory", 1)
        try:
            if settle == "ack":
                message.ack()
            else:
                message.reject(requeue=settle == "reject-requeue")
        finally:
            client.config_set("maxmemory", 0)
        assert channel.qos.can_consume()  # the slot is free
        assert client.hexists(channel.unacked_key, message.delivery_tag)  # and the message still recorded
        assert client.llen(queue.name) == 0
