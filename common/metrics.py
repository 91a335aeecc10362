"""Metrics to Datadog through DogStatsD (UDP; fire and forget, never blocks a request).

The agent address comes from the standard ``DD_AGENT_HOST`` / ``DD_DOGSTATSD_PORT``
(default 127.0.0.1:8125); ``DD_ENV``, ``DD_SERVICE``, ``DD_VERSION`` and ``DD_TAGS``
become constant tags. ``METRICS_ENABLED=false`` turns sending off. Metrics are
buffered and flushed every 0.3 s by a background thread.

Names (all prefixed ``recognition.``; tags in brackets):

- ``api.request`` count, ``api.latency`` distribution (ms) [endpoint, method, status_class, model_version]
- ``job.queue_wait`` distribution (ms) [model_version, queue]
- ``job.completed`` count [model_version, queue, status, error_code]
- ``worker.batch_size`` distribution, ``worker.inference_time`` distribution (ms) [model_version, queue]
- ``worker.model_load_time`` gauge (s) [model_version]
- ``queue.depth`` gauge [model_version, queue]
- ``workers.ready`` gauge [model_version]
"""

from __future__ import annotations

import threading
from typing import Any

from common.env import env_bool

_lock = threading.Lock()
_client: Any = None


class _Off:
    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *args, **kwargs: None


def statsd() -> Any:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                if env_bool("METRICS_ENABLED", True):
                    from datadog.dogstatsd import DogStatsd

                    _client = DogStatsd(
                        namespace="recognition",
                        disable_buffering=False,
                        flush_interval=0.3,
                        disable_telemetry=True,
                        origin_detection_enabled=False,
                    )
                else:
                    _client = _Off()
    return _client


def version_tags(version: str, queue: str | None = None) -> list[str]:
    tags = [f"model_version:{version}"]
    if queue:
        tags.append(f"queue:{queue}")
    return tags
