"""A real worker with PREPARE_PROCESSES=2 (Gunicorn -> Redis -> Celery worker with the reference
model; decode + prepare in two child processes): the right answer, and no child left behind."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from PIL import Image

from harness import one_worker_stack
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.integration


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] == "Z"


def test_a_worker_with_prepare_processes_serves_the_reference_model(
    tmp_path: Path, reference_model_root: Path, coffee: Image.Image,
) -> None:
    with one_worker_stack(tmp_path, model_root=reference_model_root, PREPARE_PROCESSES="2",
                          METRICS_ENABLED="false") as (stack, _api, worker):
        prepare = [pid for pid in children(worker.popen.pid) if "workers.preparepool" in command(pid)]
        assert len(prepare) == 2, [command(pid) for pid in children(worker.popen.pid)]
        with stack.client() as client:
            response = client.post("/recognize?wait=30",
                                   files={"image": ("coffee.jpg", jpeg_bytes(coffee, quality=92), "image/jpeg")})
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "succeeded", job
        result = job["result"]
        assert result["category"]["value"] == "kitchen_tableware"
        name = result["name"]["value"]
        assert name and any(word in name.lower() for word in ("espresso", "cup", "coffee"))
        assert job["timings_ms"]["decode"] > 0 and job["timings_ms"]["prepare"] > 0
        assert sorted(prepare) == sorted(pid for pid in children(worker.popen.pid)
                                         if "workers.preparepool" in command(pid))
        assert httpx.get(f"{stack.api_url}/healthz").status_code == 200
    assert worker.popen.returncode is not None
    assert all(gone(pid) for pid in prepare), "a prepare process outlived its worker"
