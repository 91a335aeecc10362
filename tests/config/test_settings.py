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


def test_a_sentinel_url_makes_the_broker_follow_the_primary_through_the_same_sentinels() -> None:
    probe = ("import config.settings as s; print(s.CELERY_BROKER_URL, s.CELERY_BROKER_TRANSPORT, "
             "s.CELERY_BROKER_TRANSPORT_OPTIONS['master_name'])")
    clean = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "REDIS_URL")}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**clean, "REDIS_URL": "redis+sentinel://s0:26379,s1:26380/jobs/2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sentinel://s0:26379/2;sentinel://s1:26380/2",
                                     "config.broker:SentinelTransport", "jobs"]


def test_a_bad_redis_url_stops_the_process_with_a_reason() -> None:
    result = settings_with(REDIS_URL="sentinel://s0:26379")
    assert result.returncode != 0
    assert "ConfigurationError: REDIS_URL in Celery's sentinel:// form needs the master name" in result.stderr
