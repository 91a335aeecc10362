"""The settings module, imported in a fresh process with a given environment."""

from __future__ import annotations

import os
import subprocess
import sys

from harness import ROOT

PROBE = "import config.settings as s; print(s.CELERY_BROKER_URL, s.CELERY_TASK_DEFAULT_QUEUE)"


def settings_with(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "REDIS_URL")}
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_the_broker_is_the_redis_of_the_job_records() -> None:
    result = settings_with(REDIS_URL="redis://db.example:6380/2", WORKER_MODEL_VERSION="7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["redis://db.example:6380/2", "recognize.7"]


def test_the_same_url_given_twice_is_accepted() -> None:
    result = settings_with(REDIS_URL="redis://db.example:6380/2", CELERY_BROKER_URL="redis://db.example:6380/2")
    assert result.returncode == 0, result.stderr


def test_a_broker_apart_from_the_job_records_stops_the_process_with_a_reason() -> None:
    result = settings_with(REDIS_URL="redis://db.example:6380/2", CELERY_BROKER_URL="redis://db.example:6380/3")
    assert result.returncode != 0
    assert "ConfigurationError: CELERY_BROKER_URL must equal REDIS_URL" in result.stderr
