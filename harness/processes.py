"""One process at a time: start it with its output in a log file, wait for it, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where scripts/setup builds the reference model's volumes (versions 1 and 2).
REFERENCE_MODEL_ROOT = Path(os.environ.get("MODEL_ROOT", ROOT / "var" / "models"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def spawn(name: str, argv: list[str], env: dict[str, str], logdir: Path) -> Process:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    handle = log.open("ab")
    popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    return Process(name, popen, log)


def start_redis(
    tmp: Path, *, port: int | None = None, aof: bool = False, replica_of: int | None = None
) -> tuple[Process, str]:
    """A redis-server on a free loopback port (or ``port``, to restart one), keeping its files in
    ``tmp``. With ``aof`` every write is appended and fsynced before the reply (appendfsync always),
    so a SIGKILL loses nothing that a client was told had been written. With ``replica_of`` (a
    port) it starts as a replica of that primary."""
    port = port or free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]
    replication = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []
    process = spawn(
        f"redis-{port}",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence,
         *replication, "--dir", str(tmp)],
        dict(os.environ),
        tmp,
    )
    import redis

    client = redis.Redis(port=port)
    wait_until(client.ping, 10, "redis-server")
    if replica_of:
        wait_until(lambda: client.info("replication").get("master_link_status") == "up", 10,
                   "the replica to sync")
    client.close()
    return process, f"redis://127.0.0.1:{port}/0"


def start_sentinel(tmp: Path, *, master_port: int, master_name: str = "recognition",
                   down_after_ms: int = 1000) -> tuple[Process, int]:
    """A Redis Sentinel (``redis-server --sentinel``) watching the primary on ``master_port``,
    alone enough to fail it over (quorum 1), and quick to: it takes the primary for dead after
    ``down_after_ms`` without an answer. Returns the process and the sentinel's port."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / f"sentinel-{port}.conf"  # Sentinel rewrites its file as it learns
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
        f"sentinel monitor {master_name} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
        f"sentinel failover-timeout {master_name} 10000\n"
        f"sentinel parallel-syncs {master_name} 1\n"
    )
    process = spawn(f"sentinel-{port}", ["redis-server", str(conf), "--sentinel"], dict(os.environ), tmp)
    import redis

    client = redis.Redis(port=port)
    wait_until(lambda: client.sentinel_master(master_name)["num-slaves"] > 0, 15,
               "the sentinel to find the replicas")
    client.close()
    return process, port
