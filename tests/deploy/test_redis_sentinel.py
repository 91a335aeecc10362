"""k8s/redis.yaml's start scripts, run for real: three redis-servers and three sentinels on loopback
ports (the pods' names replaced by 127.0.0.1 and a port each), a primary SIGKILLed, and the old
primary started again by the same script."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness import Process, free_port, spawn, wait_until
from tests.deploy.kube import container, find

MASTER = "recognition"
PASSWORD = "test-password"


class Pods:
    """The StatefulSet's three pods, as pairs of local processes started by its scripts."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.scripts = tmp / "scripts"
        self.scripts.mkdir()
        for name, text in find("ConfigMap", "redis-scripts")["data"].items():
            (self.scripts / name).write_text(text)
        self.redis_ports = [free_port() for _ in range(3)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[str, Process] = {}

    def env(self, pod: int) -> dict[str, str]:
        declared = {e["name"]: e.get("value") for e in container(find("StatefulSet", "redis"), "redis")["env"]}
        env = {
            "SELF_HOST": "127.0.0.1",
            "SENTINELS": " ".join(f"127.0.0.1:{port}" for port in self.sentinel_ports),
            "FIRST_PRIMARY": f"127.0.0.1:{self.redis_ports[0]}",
            "MASTER_NAME": declared["MASTER_NAME"],
            "REDIS_PORT": str(self.redis_ports[pod]),
            "REDIS_DIR": str(self.tmp / f"data-{pod}"),
            "REDIS_MAXMEMORY": "64mb",
            "SENTINEL_PORT": str(self.sentinel_ports[pod]),
            "SENTINEL_DIR": str(self.tmp / f"sentinel-{pod}"),
            "SENTINEL_QUORUM": declared["SENTINEL_QUORUM"],
            "SENTINEL_DOWN_AFTER_MS": "1000",
            "REDIS_PASSWORD": PASSWORD,
        }
        assert set(env) <= set(declared), "the test sets a variable the pods do not have"
        (self.tmp / f"data-{pod}").mkdir(exist_ok=True)
        (self.tmp / f"sentinel-{pod}").mkdir(exist_ok=True)
        return {"PATH": os.environ["PATH"], **env}

    def start(self, pod: int, part: str) -> None:
        name = f"{part}-{pod}"
        self.processes[name] = spawn(name, ["sh", str(self.scripts / f"start-{part}.sh")], self.env(pod),
                                     self.tmp / "logs")
        port = (self.redis_ports if part == "redis" else self.sentinel_ports)[pod]
        client = self.redis(pod) if part == "redis" else redis.Redis(port=port)
        wait_until(client.ping, 15, name)

    def redis(self, pod: int) -> redis.Redis:
        return redis.Redis(port=self.redis_ports[pod], password=PASSWORD, socket_timeout=2)

    def role(self, pod: int) -> str:
        return self.redis(pod).info("replication")["role"]

    def primary_by_sentinel(self, pod: int) -> int:
        host_port = redis.Redis(port=self.sentinel_ports[pod]).sentinel_get_master_addr_by_name(MASTER)
        return self.redis_ports.index(int(host_port[1]))

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    running = Pods(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def test_the_pods_elect_a_primary_fail_it_over_and_take_it_back_as_a_replica(pods: Pods) -> None:
    # Pods start in order, as the StatefulSet starts them: redis-0 is the first primary.
    for pod in range(3):
        pods.start(pod, "redis")
        pods.start(pod, "sentinel")
    assert [pods.role(pod) for pod in range(3)] == ["master", "slave", "slave"]
    wait_until(lambda: all(pods.redis(p).info("replication")["master_link_status"] == "up" for p in (1, 2)), 15,
               "both replicas to sync")
    primary = pods.redis(0)
    config = {**primary.config_get("appendonly"), **primary.config_get("maxmemory-policy"),
              **primary.config_get("min-replicas-to-write")}
    assert config == {"appendonly": "yes", "maxmemory-policy": "noeviction", "min-replicas-to-write": "1"}
    # Steady state, as a StatefulSet that has run a while: each sentinel knows both replicas (it
    # reads the primary's INFO every 10 s) and the other two sentinels.
    wait_until(lambda: all(
        (m := redis.Redis(port=port).sentinel_master(MASTER))["num-slaves"] == 2 and m["num-other-sentinels"] == 2
        for port in pods.sentinel_ports), 30, "every sentinel to know every replica and sentinel")
    primary.lpush("recognize.1", "a queued job")
    assert primary.wait(2, 2000) == 2

    pods.processes["redis-0"].popen.send_signal(signal.SIGKILL)
    pods.processes["redis-0"].popen.wait(10)
    wait_until(lambda: pods.primary_by_sentinel(1) != 0, 30, "the sentinels to promote a replica")
    new = pods.primary_by_sentinel(1)
    other = 3 - new
    wait_until(lambda: pods.role(new) == "master", 10, "the promoted replica to take writes")
    assert pods.redis(new).lrange("recognize.1", 0, -1) == [b"a queued job"]
    wait_until(lambda: pods.redis(other).info("replication").get("master_port") == pods.redis_ports[new], 20,
               "the other replica to follow the new primary")

    # redis-0 comes back (its pod restarted): the script asks the sentinels and it joins as a replica.
    pods.start(0, "redis")
    assert pods.role(0) == "slave"
    assert pods.redis(0).info("replication")["master_port"] == pods.redis_ports[new]
    wait_until(lambda: pods.redis(0).info("replication")["master_link_status"] == "up", 15, "redis-0 to sync")
    assert pods.redis(0).lrange("recognize.1", 0, -1) == [b"a queued job"]
