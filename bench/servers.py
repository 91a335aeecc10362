"""The servers under load: our stack (harness/) and the peer, BentoML, each on free loopback ports,
each with a probe of the CPU its processes use."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from bench.measure import cpu_probe
from bench.plan import BENCH_VENV, REFERENCE, ROOT
from harness import Stack, free_port, spawn, stack_env, start_redis


class OurStack:
    """redis-server + Gunicorn API + one worker, on free loopback ports (harness/)."""

    def __init__(
        self, tmp: Path, model_root: Path, name: str, version: str, worker_env: dict[str, str]
    ) -> None:
        self.redis, url = start_redis(tmp)
        env, key = stack_env(
            tmp,
            url,
            model_root=model_root,
            default_version=version,
            MODEL_NAME=name,
            LOG_LEVEL="INFO",
            # The load generator sends everything with one key, whose default rate (100 new jobs
            # a second, config/settings.py) the null model outruns: 429s that would measure the
            # key's policy, not the stack. A rate out of reach keeps the check and its Redis
            # round trip per request, as a deployment pays it, without refusing anything.
            API_KEY_RATE="1000000",
        )
        self.stack = Stack(tmp, env, key, url)
        self.version = version
        try:
            # 32 threads a process, as deployed (k8s/config): each process can hold every client's
            # wait at 32 clients, however the connections fall between the two. With fewer, a request
            # queued for a thread has a waiter of over a second make way for it (a 202, which the load
            # generator counts as an error; recognition_api/threadqueue.py).
            self.stack.start_api(threads=32)
            self.worker = self._start_worker(worker_env)
            self.stack.wait_worker_ready(self.worker, version, timeout=300)
        except BaseException:
            self.stop()
            raise

    def _start_worker(self, extra: dict[str, str]):  # type: ignore[no-untyped-def]
        env = {
            **self.stack.env,
            "WORKER_MODEL_VERSION": self.version,
            "WORKER_READY_FILE": str(self.stack.tmp / "ready-worker"),
            **extra,
        }
        argv = ["scripts/start-worker"]
        process = spawn("worker", argv, env, self.stack.tmp / "logs")
        self.stack.processes.append(process)
        return process

    @property
    def url(self) -> str:
        return self.stack.api_url

    @property
    def probe(self):  # type: ignore[no-untyped-def]
        return cpu_probe(
            {
                "api": self.stack.processes[0].popen.pid,
                "worker": self.worker.popen.pid,
                "redis": self.redis.popen.pid,
            }
        )

    @property
    def key(self) -> str:
        return self.stack.api_key

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            self.redis.kill()


class PeerServer:
    """``bentoml serve SERVICE`` from var/venv-bench, on a free loopback port: by default
    ``bench.peer_service:Recognizer`` (the backbone); ``bench.peer_null_service:NullRecognizer``
    is the null model's peer. ``env`` adds to the service's environment."""

    def __init__(
        self,
        tmp: Path,
        images: list[Path],
        p: dict,
        service: str = "bench.peer_service:Recognizer",
        env: dict[str, str] | None = None,
    ) -> None:
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BENTOML_HOME": str(tmp / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            "BENCH_PEER_VOLUME": str(REFERENCE),
            "BENCH_PEER_MAX_BATCH": str(p["batch"]),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **(env or {}),
        }
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / "bentoml.log"
        self._log = self.log_path.open("wb")
        argv = [
            str(BENCH_VENV / "bin" / "bentoml"),
            "serve",
            service,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{port}"
        try:
            self._wait_ready(images[0])
        except BaseException:
            self.stop()
            raise
        self.probe = cpu_probe({"bentoml": self.process.pid})

    def _wait_ready(self, image: Path) -> None:
        """Ready = a real request answered (the model service loads after /readyz says yes)."""
        wait_answering(self.process, self.url, image, timeout=180, name="the BentoML peer", log_path=self.log_path)

    def stop(self) -> None:
        stop_group(self.process)
        self._log.close()


def wait_answering(process: subprocess.Popen, url: str, image: Path, *, timeout: float, name: str,
                   log_path: Path) -> None:
    """Until ``POST {url}/recognize`` with ``image`` answers 200; raises if ``process`` exits first
    (with the end of its log) or after ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            response = httpx.post(f"{url}/recognize", timeout=30,
                                  files={"image": ("a.jpg", image.read_bytes(), "image/jpeg")})
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not answer in {timeout:g} s")
        time.sleep(0.2)


def stop_group(process: subprocess.Popen, *, grace: float = 30) -> None:
    """SIGTERM to a server started in a session of its own, and its children; SIGKILL after ``grace``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
