"""A rollout that judges itself, against real processes: a deliberately bad version 3 (the
reference model with its categories scrambled) is shadowed, canaried and, overriding the judge,
promoted with --force; the judge refuses it and the guard rolls it back, and no client request
fails on the way.

Photos are the six real photos bundled with scikit-image and scikit-learn, which version 1 gets
right (its manifest's "bundled-photos" evaluation); the seller feedback is their known category.
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from harness import ROOT, Stack, stack_env, start_redis
from harness.chaos import Row, model_loads
from models_registry.evaluate import bundled_photos

pytestmark = pytest.mark.integration


def registry(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models_registry", *args], cwd=ROOT, env=stack.env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory, reference_model_root: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("judge")
    models = tmp / "models"
    (models / "reference").mkdir(parents=True)
    (models / "reference" / "1").symlink_to(reference_model_root / "reference" / "1")
    built = subprocess.run([sys.executable, "-m", "models_registry", "build", "--version", "3", "--variant",
                            "scrambled", "--no-evaluate", "--root", str(models)],
                           cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-2000:]
    # The repository's thresholds, with counts a short test can reach.
    config = tomllib.loads((ROOT / "config" / "judge.toml").read_text())
    judge_toml = tmp / "judge.toml"
    judge_toml.write_text((ROOT / "config" / "judge.toml").read_text()
                          .replace(f"min_jobs = {config['judge']['min_jobs']}", "min_jobs = 10")
                          .replace(f"min_feedback = {config['judge']['min_feedback']}", "min_feedback = 10")
                          .replace(f"min_compared = {config['judge']['min_compared']}", "min_compared = 10"))
    assert tomllib.loads(judge_toml.read_text())["judge"]["min_feedback"] == 10
    redis_process, url = start_redis(tmp)
    env, key = stack_env(tmp, url, model_root=models, default_version="1", JUDGE_CONFIG=str(judge_toml),
                         METRICS_ENABLED="false")
    stack = Stack(tmp, env, key, url)
    try:
        stack.start_api()
        workers = {version: stack.start_worker(version, name=f"judge-{version}") for version in ("1", "3")}
        for version, worker in workers.items():
            stack.wait_worker_ready(worker, version)
            verified = registry(stack, "verify", version, "--no-golden")
            assert verified.returncode == 0, verified.stderr
        yield stack
    finally:
        stack.stop()
        redis_process.kill()


def photos() -> list[tuple[str, bytes, str]]:
    out = []
    for name, pixels, category in bundled_photos():
        buffer = io.BytesIO()
        image = Image.fromarray(pixels)
        image.thumbnail((640, 640))
        image.save(buffer, "JPEG", quality=90)
        out.append((name, buffer.getvalue(), category))
    return out


class Sellers:
    """Post each photo, wait for its answer, and send what the seller listed: its true category."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.photos = photos()
        self.answers: list[tuple[int, dict]] = []
        self.seconds: list[float] = []

    def list_items(self, rounds: int) -> list[dict]:
        bodies = []
        with self.stack.client(timeout=90) as client:
            for _ in range(rounds):
                for name, data, category in self.photos:
                    sent = time.monotonic()
                    response = client.post("/v1/recognize?wait=30", files={"image": (f"{name}.jpg", data,
                                                                                       "image/jpeg")})
                    body = response.json()
                    self.seconds.append(time.monotonic() - sent)
                    self.answers.append((response.status_code, body))
                    bodies.append(body)
                    if response.status_code == 200 and body["status"] == "succeeded":
                        given = client.post(f"/v1/recognitions/{body['id']}/feedback", json={"category": category})
                        assert given.status_code == 201, given.text
        return bodies

    def failed(self) -> list[tuple[int, dict]]:
        return [(status, body) for status, body in self.answers if status != 200 or body["status"] != "succeeded"]


@pytest.mark.chaos
def test_a_bad_version_is_refused_by_the_judge_and_rolled_back_by_the_guard(drill: Stack,
                                                                              chaos_rows: list[Row]) -> None:
    stack = drill
    sellers = Sellers(stack)
    assert registry(stack, "judge", "3").returncode == 2  # no data yet: wait

    # Shadow: every job is copied to version 3; clients see version 1 only.
    assert registry(stack, "shadow", "3", "--fraction", "1").returncode == 0
    shadowed = sellers.list_items(rounds=2)
    assert {b["model"]["version"] for b in shadowed} == {"1"}
    compared = registry(stack, "compare", "3", "--json")
    assert compared.returncode == 0, compared.stderr
    report = json.loads(compared.stdout)
    assert report["compared"] >= 10, report
    assert report["fields"]["category"]["agreement"] == 0.0  # every category moved to the next one
    assert report["fields"]["color"]["agreement"] == 1.0  # the rest of the model is unchanged

    # Canary: half of the jobs are answered by version 3.
    assert registry(stack, "canary", "3", "--weight", "0.5").returncode == 0
    canaried = sellers.list_items(rounds=2)
    assert "3" in {b["model"]["version"] for b in canaried}

    judged = registry(stack, "judge", "3")
    assert judged.returncode == 1, judged.stdout + judged.stderr
    failed_rows = [line for line in judged.stdout.splitlines() if line.rstrip().endswith("fail")
                   or " fail  (" in line]
    assert any(line.startswith(("accuracy", "agreement")) and "category" in line for line in failed_rows), judged.stdout
    assert "SPINNAKER_PROPERTY_VERDICT=rollback" in judged.stdout
    report_only = registry(stack, "judge", "3", "--report-only")
    assert report_only.returncode == 0 and "SPINNAKER_PROPERTY_VERDICT=rollback" in report_only.stdout

    # A person overrides the judge: promote anyway. Version 1's figures are kept as the yardstick.
    forced = registry(stack, "promote", "3", "--force")
    assert forced.returncode == 0, forced.stderr
    promoted = sellers.list_items(rounds=2)
    assert {b["model"]["version"] for b in promoted} == {"3"}

    guard_started = time.monotonic()
    guarded = registry(stack, "guard", "--once", "--min-jobs", "10")
    assert guarded.returncode == 0, guarded.stderr
    assert "guard: rolled_back" in guarded.stdout, guarded.stdout
    status = json.loads(registry(stack, "status", "--json").stdout)
    assert (status["active"], status["previous"]) == ("1", "3")
    history = registry(stack, "history").stdout
    assert "rollback" in history and "by guard" in history and "reason: guard: version 3 degraded" in history

    after = sellers.list_items(rounds=1)
    recovered = time.monotonic() - guard_started  # the guard's judgment + rollback, and 6 photos on version 1
    assert {b["model"]["version"] for b in after} == {"1"}
    reloads = sum(model_loads(p.output()) - 1 for p in stack.processes if p.name.startswith("judge-"))
    p99 = statistics.quantiles(sellers.seconds, n=100)[98]
    chaos_rows.append(Row("bad model version: judge refuses, forced promote, guard rolls back",
                          len(sellers.answers), sum(status == 202 for status, _ in sellers.answers),
                          sum(status != 202 for status, _ in sellers.failed()), 0, round(p99, 2), round(recovered, 2),
                          reloads))
    assert not sellers.failed(), sellers.failed()[:3]
    assert len(sellers.answers) == 6 * 7
    accuracy = json.loads(registry(stack, "accuracy", "--json").stdout)["rows"]
    by = {(r["version"], r["source"], r["field"]): r for r in accuracy}
    assert by[("1", "live", "category")]["accuracy"] == 1.0
    assert by[("3", "shadow", "category")]["accuracy"] == 0.0
