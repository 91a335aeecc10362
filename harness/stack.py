"""A stack of the service: its processes, and the environment they share (``stack_env``)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness.processes import ROOT, Process, free_port, spawn, start_redis, wait_until


@dataclass
class Stack:
    """A running service: Redis, an API (Gunicorn) and workers, sharing one environment."""

    tmp: Path
    env: dict[str, str]
    api_key: str
    redis_url: str
    api_url: str = ""
    processes: list[Process] = field(default_factory=list)

    def start_api(self, *, processes: int = 2, threads: int = 16) -> Process:
        port = free_port()
        env = {
            **self.env,
            "API_BIND": f"127.0.0.1:{port}",
            "API_PROCESSES": str(processes),
            "API_THREADS": str(threads),
        }
        process = spawn(f"api-{port}", ["scripts/start-api"], env, self.tmp / "logs")
        self.processes.append(process)
        self.api_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{self.api_url}/healthz").status_code == 200, 30, "the API")
        return process

    def start_worker(
        self, version: str, *, name: str | None = None, extra_env: dict[str, str] | None = None
    ) -> Process:
        env = {
            **self.env,
            "WORKER_MODEL_VERSION": version,
            "WORKER_READY_FILE": str(self.tmp / f"ready-{name or version}"),
            **(extra_env or {}),
        }
        argv = ["scripts/start-worker"]
        process = spawn(name or f"worker-{version}", argv, env, self.tmp / "logs")
        self.processes.append(process)
        return process

    def wait_worker_ready(self, process: Process, version: str, timeout: float = 180) -> None:
        """Until this worker process (by pid: the start script execs Celery) heartbeats as ready."""
        from common.heartbeat import ready_workers

        client = self.redis()
        prefix = self.env["REDIS_KEY_PREFIX"]
        suffix = f":{process.popen.pid}"
        deadline = time.monotonic() + timeout
        while not any(
            w.endswith(suffix) for w in ready_workers(client, prefix=prefix, version=version)
        ):
            if not process.alive():
                raise AssertionError(f"{process.name} exited:\n{process.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{process.name} not ready:\n{process.output()[-4000:]}")
            time.sleep(0.2)
        client.close()

    def redis(self, **kwargs):  # type: ignore[no-untyped-def]
        """A client of the stack's Redis (of its primary, when ``redis_url`` names sentinels)."""
        from common.redisconn import RedisTarget

        return RedisTarget.parse(self.redis_url).client(**kwargs)

    def client(self, **kwargs) -> httpx.Client:  # type: ignore[no-untyped-def]
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=kwargs.pop("timeout", 60),
            **kwargs,
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(timeout=30)


def stack_env(
    tmp: Path, redis_url: str, *, model_root: Path, default_version: str, **extra: str
) -> tuple[dict[str, str], str]:
    """The environment of a stack's processes, and the API key its clients send."""
    sys.path.insert(0, str(ROOT))
    from recognition_api.auth import new_key

    key, digest = new_key()
    replaced = ("DJANGO_", "REDIS_", "MODEL_", "API_")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(replaced)},
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"t{os.getpid()}:",
        "MODEL_ROOT": str(model_root),
        "DEFAULT_MODEL_VERSION": default_version,
        "RECOGNITION_VAR_DIR": str(tmp / "var"),
        "IMAGE_STORE_URL": (tmp / "images").as_uri(),
        "API_KEYS": f"tests:{digest}",
        "API_ACCESS_LOG": "0",
        "LOG_LEVEL": "INFO",
        "WORKER_HEARTBEAT_SECONDS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **extra,
    }
    return env, key


@contextmanager
def one_worker_stack(tmp: Path, *, model_root: Path, version: str = "1",
                     **extra: str) -> Iterator[tuple[Stack, Process, Process]]:
    """A redis-server of its own, a Gunicorn API and one worker of ``version``, ready: (stack, API
    process, worker process); all stopped afterwards. ``extra``: settings for every process."""
    redis_process, url = start_redis(tmp / "redis")
    env, key = stack_env(tmp, url, model_root=model_root, default_version=version, **extra)
    stack = Stack(tmp, env, key, url)
    try:
        api = stack.start_api()
        worker = stack.start_worker(version)
        stack.wait_worker_ready(worker, version)
        yield stack, api, worker
    finally:
        stack.stop()
        redis_process.kill()
