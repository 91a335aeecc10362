"""A real worker (Celery, Redis, the batcher, the reference runtime) with KERAS_BACKEND=jax serves the
reference volume end to end over HTTP and answers what the TensorFlow runtime answers; its process
never loads TensorFlow. This is the set-up bench/gpu_worker.py measures on a GPU host."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.volume import ModelVolume
from harness import one_worker_stack
from tests.conftest import jpeg_bytes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("jax") is None,
        reason="the package jax (and jaxlib) is missing: requirements/dev.txt pins them "
        "(scripts/setup installs it)",
    ),
]


def mapped_files(pid: int) -> set[str]:
    """The files mapped into a process (its shared libraries among them)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {parts[5] for parts in (line.split(maxsplit=5) for line in lines) if len(parts) == 6}


def tensorflow_result(model_root: Path, photo: bytes) -> dict:
    """What a TensorFlow worker computes for ``photo``: the same runtime, in this process."""
    from common.imaging import decode_rgb
    from workers.runtime.reference import ReferenceRuntime

    runtime = ReferenceRuntime(ModelVolume.open(model_root / "reference" / "1"))
    runtime.load()
    try:
        assert type(runtime._backbone).__name__ == "KerasBackbone"
        rgb = decode_rgb(photo, max_side=runtime.decode_max_side)
        return runtime.predict([runtime.prepare(rgb)])[0]
    finally:
        runtime.unload()


def test_a_jax_worker_serves_the_coffee_photo_like_the_tensorflow_worker(
    tmp_path: Path, reference_model_root: Path, coffee: Image.Image
) -> None:
    photo = jpeg_bytes(coffee, quality=92)
    with one_worker_stack(tmp_path, model_root=reference_model_root, METRICS_ENABLED="false",
                          KERAS_BACKEND="jax", JAX_PLATFORMS="cpu") as (stack, _api, worker):
        with stack.client() as client:
            response = client.post("/recognize?wait=30", files={"image": ("coffee.jpg", photo, "image/jpeg")})
        libraries = mapped_files(worker.popen.pid)
        log = worker.output()
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    assert job["model"] == {"name": "reference", "version": "1"}
    served = job["result"]
    # The worker ran the backbone on JAX (XLA's library is mapped) and never loaded TensorFlow.
    assert not [f for f in libraries if "tensorflow" in f.lower()], sorted(libraries)
    assert [f for f in libraries if "jaxlib" in f], "the worker did not load JAX"
    assert "model loaded" in log

    expected = tensorflow_result(reference_model_root, photo)
    assert served["category"]["value"] == expected["category"]["value"] == "kitchen_tableware"
    assert served["category"]["confidence"] == pytest.approx(expected["category"]["confidence"], abs=1e-3)
    assert [a["value"] for a in served["category"]["alternatives"]] == [
        a["value"] for a in expected["category"]["alternatives"]]
    for name in ("name", "brand", "color"):
        assert served[name]["value"] == expected[name]["value"], name
    np.testing.assert_allclose([a["confidence"] for a in served["name"]["alternatives"]],
                               [a["confidence"] for a in expected["name"]["alternatives"]], atol=1e-3)
