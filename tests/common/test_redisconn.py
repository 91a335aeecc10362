"""REDIS_URL's three forms, and clients that find the primary through a real Sentinel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from common.env import ConfigurationError
from common.jobstore import JobStore
from common.redisconn import RedisTarget
from harness import Process, start_redis, start_sentinel


def test_a_plain_url_is_one_redis_and_the_broker_url_as_it_is() -> None:
    target = RedisTarget.parse("redis://:secret@db.example:6380/2")
    assert not target.uses_sentinel
    assert target.broker_url == "redis://:secret@db.example:6380/2"
    assert target.broker_transport_options == {}


def test_it_reads_sentinels_master_name_database_and_passwords_from_a_redis_sentinel_url() -> None:
    target = RedisTarget.parse(
        "redis+sentinel://app:s%40cret@sentinel-0.redis,sentinel-1.redis:26380,[fd00::3]:26381/jobs/2"
        "?sentinel_password=watch"
    )
    assert target.sentinels == (("sentinel-0.redis", 26379), ("sentinel-1.redis", 26380), ("fd00::3", 26381))
    assert (target.master_name, target.db, target.username, target.password) == ("jobs", 2, "app", "s@cret")
    assert target.broker_url == ("sentinel://app:s%40cret@sentinel-0.redis:26379/2;"
                                 "sentinel://app:s%40cret@sentinel-1.redis:26380/2;"
                                 "sentinel://app:s%40cret@[fd00::3]:26381/2")
    assert target.broker_transport_options == {
        "master_name": "jobs", "sentinel_kwargs": {"username": None, "password": "watch"}}
    assert "s@cret" not in repr(target) and "watch" not in repr(target)


def test_it_takes_celerys_sentinel_form_with_the_master_name_apart() -> None:
    target = RedisTarget.parse("sentinel://:pw@10.0.0.1:26379/1;sentinel://10.0.0.2", master_name="jobs")
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (target.master_name, target.db, target.password) == ("jobs", 1, "pw")
    assert target.broker_transport_options == {"master_name": "jobs"}


@pytest.mark.parametrize(("url", "message"), [
    ("sentinel://10.0.0.1:26379", "needs the master name in REDIS_SENTINEL_MASTER"),
    ("redis+sentinel://10.0.0.1:26379", "needs the master name as its path"),
    ("redis+sentinel://10.0.0.1:26379/jobs/zero", "database 'zero' is not a number"),
    ("redis+sentinel://10.0.0.1:port/jobs", "has a bad port"),
    ("redis+sentinel:///jobs", "names no sentinel"),
    ("http://db.example:6379/0", "must start with redis://"),
    ("db.example:6379", "must start with redis://"),
])
def test_a_bad_url_stops_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RedisTarget.parse(url)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A primary with one replica, and a sentinel that watches them: (primary URL, sentinel port)."""
    tmp = tmp_path_factory.mktemp("replicated")
    processes: list[Process] = []
    try:
        primary, url = start_redis(tmp / "primary")
        processes.append(primary)
        replica, _ = start_redis(tmp / "replica", replica_of=int(url.rsplit(":", 1)[1].split("/")[0]))
        processes.append(replica)
        sentinel, port = start_sentinel(tmp / "sentinel", master_port=int(url.rsplit(":", 1)[1].split("/")[0]),
                                        master_name="jobs")
        processes.append(sentinel)
        yield url, port
    finally:
        for process in processes:
            process.kill()


def test_a_client_through_sentinel_writes_to_the_primary(replicated: tuple[str, int]) -> None:
    primary_url, sentinel_port = replicated
    client = RedisTarget.parse(f"redis+sentinel://127.0.0.1:{sentinel_port}/jobs/3").client(socket_timeout=2)
    client.set("through-sentinel", "yes")
    primary = redis.Redis.from_url(primary_url.rsplit("/", 1)[0] + "/3")
    assert primary.get("through-sentinel") == b"yes"
    assert primary.info("replication")["role"] == "master"


def test_replicate_answers_once_the_replica_holds_the_job(replicated: tuple[str, int], key_prefix: str) -> None:
    primary_url, _ = replicated
    store = JobStore(redis.Redis.from_url(primary_url), key_prefix)
    job_id = store.new_id()
    store.create(job_id=job_id, fields={}, default_version="1", max_queue_depth=0, canary_draw=0.5)
    assert store.replicate(job_id, replicas=1, timeout_ms=2000) == 1
    assert "enqueued_at" in (store.get(job_id) or {})


def test_replicate_without_replicas_answers_zero_when_its_time_is_up(redis_url: str, key_prefix: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), key_prefix)
    job_id = store.new_id()
    store.create(job_id=job_id, fields={}, default_version="1", max_queue_depth=0, canary_draw=0.5)
    assert store.replicate(job_id, replicas=1, timeout_ms=50) == 0

