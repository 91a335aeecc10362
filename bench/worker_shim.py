"""Start a worker exactly as scripts/start-worker does, for a volume of runtime ``huge`` while
``workers.runtime.runtime_for`` does not know that runtime yet.

The benchmark uses it only then (it says so in its output); once ``runtime_for`` maps ``huge`` to
``workers.runtime.huge.HugeRuntime``, workers start through scripts/start-worker as usual.
"""

from __future__ import annotations

import os
import sys


def runtime_knows_huge() -> bool:
    from pathlib import Path

    from models_registry.volume import ModelVolume, VolumeError
    from workers.runtime import runtime_for

    manifest = {
        "name": "x",
        "version": "0",
        "runtime": "huge",
        "files": [],
        "input": {"decode_max_side": 512, "model_input": [224, 224, 3]},
        "thresholds": {},
    }
    try:
        runtime_for(ModelVolume(Path("."), manifest))
    except VolumeError:
        return False
    return True


def main() -> None:
    import workers.runtime as runtime

    original = runtime.runtime_for

    def runtime_for(volume):  # type: ignore[no-untyped-def]
        if volume.manifest["runtime"] == "huge":
            from workers.runtime.huge import HugeRuntime

            return HugeRuntime(volume)
        return original(volume)

    runtime.runtime_for = runtime_for  # before workers.lifecycle imports it

    version = (
        os.environ.get("WORKER_MODEL_VERSION") or os.environ.get("DEFAULT_MODEL_VERSION") or "1"
    )
    batch = int(os.environ.get("BATCH_MAX_SIZE", "16"))
    threads = int(os.environ.get("WORKER_THREADS", "0")) or batch * 2
    from celery.__main__ import main as celery_main

    sys.argv = [
        "celery",
        "-A",
        "workers.worker",
        "worker",
        "--queues",
        f"recognize.{version}",
        "--pool",
        "threads",
        "--concurrency",
        str(threads),
        "--hostname",
        f"worker-{version}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        os.environ.get("LOG_LEVEL", "INFO"),
    ]
    celery_main()


if __name__ == "__main__":
    main()
