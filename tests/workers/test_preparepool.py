"""Decode + prepare in child processes (workers/preparepool.py): the same prepared objects and the
same job failures as on a task thread; a child that dies or hangs is replaced and its call is
transient; the budget reserves what decode_rgb would; nothing is left behind."""

from __future__ import annotations

import io
import json
import mmap
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from common.errors import DecodeBusy, ImageDecodeFailed, InferenceFailed, JobFailure
from common.imagestore import LocalImageStore
from common.imaging import decode_rgb, decoded_bytes_estimate
from common.jobstore import JobStore
from common.membudget import DecodeBudget
from common.volume import ModelVolume
from models_registry.build import build_null
from tests.workers.test_service import queue_job
from workers.batching import Batcher
from workers.preparepool import (
    PreparePool,
    PrepareUnavailable,
    _ArrayCodec,
    load_prepare_side,
)
from workers.runtime import runtime_for
from workers.service import TransientError, WorkerContext, recognition_job_process

ROOT = Path(__file__).resolve().parent.parent.parent


def jpeg(image: Image.Image, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """The benchmark's four real photos, two synthetic listing photos (with wordmarks), a PNG with
    transparency and a JPEG that EXIF turns upright."""
    from skimage import data

    from models_registry.synthetic import generate

    out = {name: jpeg(Image.fromarray(getattr(data, name)()).convert("RGB"))
           for name in ("coffee", "chelsea", "astronaut", "rocket")}
    for sample in generate("test", 2):
        out[f"synthetic-{sample.seed}"] = sample.jpeg
    rgba = Image.fromarray(data.astronaut()).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    out["astronaut-rgba.png"] = png(rgba)
    exif = Image.Exif()
    exif[0x0112] = 6
    out["rocket-rotated"] = jpeg(Image.fromarray(data.rocket()), exif=exif)
    return out


@pytest.fixture(scope="module")
def runtime(reference_model_root: Path) -> Any:
    runtime = runtime_for(ModelVolume.open(reference_model_root / "reference" / "1"))
    load_prepare_side(runtime)
    return runtime


@pytest.fixture(scope="module")
def pool(runtime: Any) -> Iterator[PreparePool]:
    with PreparePool(runtime, 2, timeout_s=30) as running:
        yield running


def in_thread(runtime: Any, data: bytes) -> Any:
    return runtime.prepare(decode_rgb(data, max_side=runtime.decode_max_side))


def same_text(message: str) -> str:
    """decode_rgb's message may name the address of its BytesIO, which differs by process."""
    return re.sub(r"0x[0-9a-f]+", "0x...", message)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


class Call(threading.Thread):
    """``pool.prepare(data)`` on a thread of its own: its result or its exception."""

    def __init__(self, pool: PreparePool, data: bytes) -> None:
        super().__init__(daemon=True)
        self.pool, self.data = pool, data
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.pool.prepare(self.data)
        except BaseException as exc:
            self.error = exc


def busy_child_pid(pool: PreparePool, call: Call) -> int:
    """Start ``call`` with every child stopped (SIGSTOP), and return the pid of the one it took;
    the others are let go on."""
    pids = pool.pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    call.start()
    wait_for(lambda: len(pool._idle) == len(pids) - 1, 10, "the call took no child")
    busy = next(c.pid for c in pool._children if c not in pool._idle)
    for pid in pids:
        if pid != busy:
            os.kill(pid, signal.SIGCONT)
    return busy


# --- the same results ---------------------------------------------------------------------------


def test_a_child_prepares_exactly_what_a_task_thread_prepares(
    pool: PreparePool, runtime: Any, photos: dict[str, bytes],
) -> None:
    for name, data in photos.items():
        expected = in_thread(runtime, data)
        got, decode_s = pool.prepare(data)
        assert type(got) is type(expected), name
        assert got.model_input.dtype == expected.model_input.dtype == np.uint8, name
        assert got.model_input.shape == expected.model_input.shape == (224, 224, 3), name
        assert np.array_equal(got.model_input, expected.model_input), name
        assert got.color == expected.color, name  # every field, tuples as tuples
        assert got.brand == expected.brand, name
        assert all(type(a) is tuple for a in got.color.alternatives + got.brand.alternatives), name
        assert type(got.color.rgb) is tuple, name
        assert decode_s > 0
    # The synthetic photos carry a wordmark: the OCR in the child read it as the thread did.
    assert any(in_thread(runtime, d).brand.name for n, d in photos.items() if n.startswith("synthetic"))


def test_many_threads_at_once_get_each_their_own_photo_back(
    pool: PreparePool, runtime: Any, photos: dict[str, bytes],
) -> None:
    names = ["coffee", "chelsea", "astronaut", "rocket"] * 3
    expected = {name: in_thread(runtime, photos[name]).color for name in set(names)}
    calls = [Call(pool, photos[name]) for name in names]
    for call in calls:
        call.start()
    for name, call in zip(names, calls, strict=True):
        call.join(60)
        assert call.error is None, call.error
        assert call.result[0].color == expected[name]


def test_the_children_load_no_tensorflow_and_run_one_blas_thread(pool: PreparePool) -> None:
    for pid in pool.pids():
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "tensorflow" not in maps and "onnxruntime" in maps
        environ = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
        assert environ.get("OPENBLAS_NUM_THREADS") == os.environ.get("OPENBLAS_NUM_THREADS", "1")


# --- failures of the photo ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n broken", b"not an image at all", b"",
                                  b"\xff\xd8\xff\xe0" + b"\0" * 64])
def test_an_undecodable_photo_fails_with_the_same_error_as_on_a_thread(
    pool: PreparePool, runtime: Any, data: bytes,
) -> None:
    with pytest.raises(JobFailure) as on_thread:
        decode_rgb(data, max_side=runtime.decode_max_side)
    with pytest.raises(JobFailure) as in_child:
        pool.prepare(data)
    assert type(in_child.value) is type(on_thread.value) is ImageDecodeFailed
    assert (in_child.value.code, same_text(in_child.value.message)) == (
        on_thread.value.code, same_text(on_thread.value.message))


def test_a_truncated_jpeg_fails_with_the_same_error_as_on_a_thread(
    pool: PreparePool, runtime: Any, photos: dict[str, bytes],
) -> None:
    data = photos["coffee"][: len(photos["coffee"]) // 2]
    with pytest.raises(JobFailure) as on_thread:
        decode_rgb(data, max_side=runtime.decode_max_side)
    with pytest.raises(JobFailure) as in_child:
        pool.prepare(data)
    assert (type(in_child.value), same_text(in_child.value.message)) == (
        type(on_thread.value), same_text(on_thread.value.message))


def test_a_prepare_that_raises_fails_the_job_as_on_a_thread(pool: PreparePool) -> None:
    # 1x1: decodes, and the color step refuses it (ValueError); the service's message on a thread.
    with pytest.raises(InferenceFailed, match=r"^Preparing the image failed: ValueError$"):
        pool.prepare(png(Image.new("RGB", (1, 1))))


# --- the budget ---------------------------------------------------------------------------------


def test_the_parent_reserves_what_decode_rgb_would(runtime: Any, pool: PreparePool, photos: dict[str, bytes]) -> None:
    big_png = png(Image.new("RGB", (3000, 2000), (10, 20, 30)))
    synthetic = next(d for n, d in photos.items() if n.startswith("synthetic"))
    for data in (photos["coffee"], photos["astronaut-rgba.png"], synthetic, big_png):
        thread_budget, pool_budget = DecodeBudget(1 << 34), DecodeBudget(1 << 34)
        decode_rgb(data, max_side=runtime.decode_max_side, budget=thread_budget, budget_wait=1)
        pool.prepare(data, budget=pool_budget, budget_wait=1)
        assert pool_budget.peak == thread_budget.peak > 0
        assert decoded_bytes_estimate(data, runtime.decode_max_side) == thread_budget.peak
        assert pool_budget.in_flight == 0


def test_a_full_budget_makes_the_call_wait_then_raise_decode_busy(pool: PreparePool, photos: dict[str, bytes]) -> None:
    budget = DecodeBudget(1024 * 1024)
    with budget.reserve(1024 * 1024, timeout=0):
        started = time.monotonic()
        with pytest.raises(DecodeBusy):
            pool.prepare(photos["coffee"], budget=budget, budget_wait=0.2)
        assert time.monotonic() - started >= 0.2
    assert len(pool._idle) == 2  # the child it took is free again
    pool.prepare(photos["coffee"], budget=budget, budget_wait=0.2)


# --- lost children ------------------------------------------------------------------------------


def test_a_killed_child_is_replaced_and_its_call_is_transient(pool: PreparePool, runtime: Any) -> None:
    data = png(Image.new("RGB", (64, 48), (200, 10, 10)))
    replaced = pool.replaced
    call = Call(pool, data)
    victim = busy_child_pid(pool, call)
    os.kill(victim, signal.SIGKILL)
    call.join(10)
    assert isinstance(call.error, PrepareUnavailable), call.error
    wait_for(lambda: pool.replaced == replaced + 1 and len(pool._idle) == 2, 60, "no child replaced the killed one")
    assert victim not in pool.pids() and not alive(victim) and len(pool.pids()) == 2
    assert pool.prepare(data)[0].color == in_thread(runtime, data).color  # the new child serves

    # The same photo losing a child again is the photo's fault: its job fails, it is not sent again.
    call = Call(pool, data)
    os.kill(busy_child_pid(pool, call), signal.SIGKILL)
    call.join(10)
    assert isinstance(call.error, InferenceFailed), call.error
    wait_for(lambda: pool.replaced == replaced + 2 and len(pool._idle) == 2, 60, "no child replaced the second one")


def test_a_child_that_hangs_is_killed_and_replaced(pool: PreparePool) -> None:
    data = png(Image.new("RGB", (64, 48), (10, 200, 10)))
    replaced, timeout = pool.replaced, pool.timeout_s
    pool.timeout_s = 1.0
    try:
        call = Call(pool, data)
        started = time.monotonic()
        stopped = busy_child_pid(pool, call)  # SIGSTOP: it never answers
        call.join(10)
        assert isinstance(call.error, PrepareUnavailable) and "did not answer" in str(call.error), call.error
        assert 1.0 <= time.monotonic() - started < 5
    finally:
        pool.timeout_s = timeout
    wait_for(lambda: not alive(stopped), 10, "the hung child was not killed")
    wait_for(lambda: pool.replaced == replaced + 1 and len(pool._idle) == 2, 60, "no child replaced the hung one")
    assert pool.prepare(data)[0].color.name == "green"


# --- start and stop -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def null_runtime(tmp_path_factory: pytest.TempPathFactory) -> Any:
    runtime = runtime_for(build_null(tmp_path_factory.mktemp("models"), "n1"))
    runtime.load()
    return runtime


def test_stop_ends_every_child_idle_or_busy(null_runtime: Any) -> None:
    pool = PreparePool(null_runtime, 2, timeout_s=30).start()
    pids = pool.pids()
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    data = png(Image.new("RGB", (8, 8), (1, 2, 3)))
    assert pool.prepare(data)[0] == null_runtime.prepare(decode_rgb(data, max_side=256)) == (1, 2, 3)
    call = Call(pool, data)
    busy_child_pid(pool, call)  # one busy (stopped mid-job), one idle
    pool.stop(timeout_s=2)
    call.join(10)
    assert isinstance(call.error, PrepareUnavailable), call.error
    assert not any(alive(pid) for pid in pids)
    assert pool.pids() == []
    with pytest.raises(PrepareUnavailable):
        pool.prepare(data)
    pool.stop()  # twice: nothing more to do


def test_children_exit_when_their_parent_is_killed(null_runtime: Any, tmp_path: Path) -> None:
    script = (
        "import pathlib, sys; from common.volume import ModelVolume; from workers.runtime import runtime_for\n"
        "from workers.preparepool import PreparePool\n"
        f"volume = ModelVolume.open(pathlib.Path({str(null_runtime.volume.path)!r}))\n"
        "pool = PreparePool(runtime_for(volume), 2).start()\n"
        "print(*pool.pids(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}) as parent:
        try:
            assert parent.stdout is not None
            pids = [int(p) for p in parent.stdout.readline().split()]
            assert len(pids) == 2 and all(alive(pid) for pid in pids)
            parent.kill()
            parent.wait(10)
            wait_for(lambda: not any(alive(pid) for pid in pids), 10, "a child outlived its parent")
        finally:
            parent.kill()


def test_runtimes_that_cannot_prepare_in_processes_are_refused(tmp_path: Path) -> None:
    volume = build_null(tmp_path / "models", "x1")
    manifest = volume.path / "manifest.json"
    manifest.write_text(json.dumps({**volume.manifest, "runtime": "other"}))
    with pytest.raises(ValueError, match="cannot prepare in processes"):
        PreparePool(type("R", (), {"volume": ModelVolume.open(volume.path)})(), 1)
    with pytest.raises(ValueError, match="at least one"):
        PreparePool(runtime_for(volume), 0)


def test_an_array_goes_through_a_slot_and_comes_back_equal() -> None:
    slot = mmap.mmap(-1, 224 * 224 * 3 * 4)
    array = np.random.default_rng(0).random((224, 224, 3)).astype(np.float32)
    header = json.loads(json.dumps(_ArrayCodec.encode(array, slot)))
    back = _ArrayCodec.decode(header, slot)
    assert back.dtype == np.float32 and np.array_equal(back, array)
    with pytest.raises(ValueError, match="does not fit"):
        _ArrayCodec.encode(np.zeros(224 * 224 * 3 * 4 + 1, np.uint8), slot)


# --- through the worker's job path --------------------------------------------------------------


@pytest.fixture
def pooled_context(
    tmp_path: Path, redis_client: redis.Redis, key_prefix: str, null_runtime: Any,
) -> Iterator[WorkerContext]:
    batcher = Batcher(null_runtime.predict, max_batch=4, max_wait_s=0.01)
    batcher.start()
    pool = PreparePool(null_runtime, 1, timeout_s=30).start()
    yield WorkerContext("test-worker:1", null_runtime, batcher, JobStore(redis_client, key_prefix, 60),
                        LocalImageStore(tmp_path / "images"), max_deliveries=2, prepare_pool=pool)
    pool.stop()
    batcher.stop(5)


def test_jobs_through_a_worker_context_with_a_pool(pooled_context: WorkerContext) -> None:
    context = pooled_context
    job_id = queue_job(context, png(Image.new("RGB", (64, 64), (255, 0, 0))))
    assert recognition_job_process(job_id=job_id, context=context) == "succeeded"
    record = context.jobs.get(job_id)
    assert json.loads(record["result"])["color"]["value"] == "#ff0000"
    timings = json.loads(record["timings"])
    assert timings["decode"] > 0 and timings["prepare"] >= 0

    job_id = queue_job(context, b"\x89PNG\r\n\x1a\n broken")
    assert recognition_job_process(job_id=job_id, context=context) == "failed"
    assert context.jobs.get(job_id)["error_code"] == "image_decode_failed"

    # A child lost mid-job: the job is given back (transient), and computed on its next delivery.
    pool = context.prepare_pool
    assert pool is not None
    job_id = queue_job(context, png(Image.new("RGB", (64, 64), (0, 0, 255))))
    [pid] = pool.pids()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TransientError) as lost:
        recognition_job_process(job_id=job_id, context=context)
    assert lost.value.component == "prepare process"
    assert context.jobs.get(job_id)["status"] == "queued"
    wait_for(lambda: pool.replaced == 1 and len(pool._idle) == 1, 60, "no child replaced the killed one")
    assert recognition_job_process(job_id=job_id, context=context) == "succeeded"
    assert json.loads(context.jobs.get(job_id)["result"])["color"]["value"] == "#0000ff"


def test_a_worker_process_starts_its_pool_after_the_model_and_stops_it_on_unload(
    tmp_path: Path, redis_client: redis.Redis, key_prefix: str,
) -> None:
    from celery import Celery

    from workers.process import WorkerConfig, WorkerProcess

    build_null(tmp_path / "models", "p1")
    config = WorkerConfig(
        model_root=tmp_path / "models", model_name="reference", version="p1", default_version="p1",
        key_prefix=key_prefix, ready_file=tmp_path / "ready", heartbeat_seconds=1.0, reaper_interval_seconds=10.0,
        job_ttl_seconds=7200, job_lease_seconds=30, claim_lease_seconds=3, max_deliveries=3, batch_max_size=4,
        batch_max_wait_ms=1.0, prepare_processes=2)
    sender = Celery("tests", broker="memory://")
    process = WorkerProcess(config, client=redis_client, images=LocalImageStore(tmp_path / "images"), sender=sender)
    try:
        context = process.load()
        assert context.prepare_pool is not None
        pids = context.prepare_pool.pids()
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        job_id = queue_job(context, png(Image.new("RGB", (32, 32), (0, 128, 0))))
        assert recognition_job_process(job_id=job_id, context=context) == "succeeded"
        process.unload()
        assert not any(alive(pid) for pid in pids)
    finally:
        process.unload()
        sender.close()
