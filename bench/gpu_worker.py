"""The real worker on a GPU host that has JAX + CUDA but no TensorFlow and no package index: a kit
to carry there, and a run of a few minutes that measures the worker against the model alone and
against the host's decode limit.

Here (the dev .venv, which has TensorFlow to build the model volume, and a package index)::

    python -m bench.gpu_worker pack [DIR] [--python 3.12]    # DIR: var/gpu-kit (git-ignored)

On the host, from the repository root, with the Python that has JAX (the H200 machines' python3)::

    python3 -m bench.gpu_worker run [--kit var/gpu-kit] [--batch 128] [--out DIR]

The kit (one directory, 54 MiB for CPython 3.12, so that it travels as one ``carry`` path) holds:

* ``wheels/``: the locked wheels (requirements/dev.txt, hash-checked when packed) of what the worker,
  the job creation and this script import that such a host lacks (``KIT_PACKAGES``: Django and the
  API's apps the worker's settings load, Celery, kombu, redis-py, Keras, Pillow, pillow-heif, ...),
  the binary ones built for ``--python`` (the host's CPython, 3.12 on the H200 machines). ``run``
  unpacks them into a scratch directory and puts it first on the path. What the host is taken to
  have (``HOST_PACKAGES``: JAX, numpy, OpenCV, httpx, ...) is not in the kit.
* ``redis.tar.xz``: this machine's ``redis-server`` with every shared library it loads, glibc and
  its loader included, started through that loader (``ld-linux-x86-64.so.2 --library-path``), so
  that it needs nothing of the host's own libraries.
* ``models.tar``: the backbone-only model volume (``models_registry.huge --size-gb 0``: the
  reference model's EfficientNet-Lite0, runtime ``huge``), built here: building it needs TensorFlow.
* ``photos/``: the benchmark's four scikit-image JPEGs (``bench.parts.write_images``).

``run`` measures, in this order, each in processes of its own:

1. the decode limit: ``decode_rgb`` + the crop to 224x224 (what a worker does to a photo before
   the model), in one process per core, photos/s summed;
2. the model alone: ``JaxBackbone.predict`` on prepared photos at batch 1 and at ``--batch``
   (host-to-device copy of the batch and device-to-host copy of the outputs included), photos/s
   at the median call;
3. the real worker (``scripts/start-worker``: Celery with its threads pool, the batcher, the
   runtime, ``KERAS_BACKEND=jax``, ``BATCH_MAX_SIZE=--batch``, 2 threads per batch slot) with a
   redis-server of its own: jobs are created the way the API creates them
   (``recognition_job_create``: the image store, the creation script, the queue) in several
   processes while no worker runs, so that the worker starts on a full backlog; photos/s is
   taken over the middle 80 % of the finishes (without the start and the tail). A first worker
   drains a small backlog before it to compile the batch sizes (JAX's compilation cache on disk
   then serves the measured worker), and to size the backlog to ``--seconds``. With
   ``PREPARE_PROCESSES`` in the settings (``workers/preparepool.py``) the worker is measured
   twice: on its threads, and with one prepare process per core but one.

It prints a table and writes ``gpu_worker.json`` into ``--out`` (default: ``$OUT`` where set, else
``var/``). ``--quick`` sizes everything for a CPU-only check (80 s on the 2-core development VM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KIT = ROOT / "var" / "gpu-kit"
LOCK = ROOT / "requirements" / "dev.txt"
KIT_LIMIT_BYTES = 60 * 2**20  # the kit travels with the working tree (3-4 MB), 64 MiB in all

# Imported by the worker (settings, apps, Celery, runtime), the job creation and this script, and
# not on a JAX + CUDA host (the H200 machines' package list: .library/device/KINDS.md).
KIT_PACKAGES = (
    # Django: the worker loads the settings and the API's apps (INSTALLED_APPS)
    "django", "asgiref", "sqlparse", "djangorestframework", "drf-spectacular",
    "drf-spectacular-sidecar", "inflection", "uritemplate",
    # Celery and its Redis transport
    "celery", "kombu", "amqp", "billiard", "vine", "click-didyoumean", "click-plugins",
    "click-repl", "prompt-toolkit", "wcwidth", "tzlocal", "redis", "hiredis",
    # logging, metrics, the image decode (Pillow and HEIF, at the production versions), the volume check
    "python-json-logger", "datadog", "pillow", "pillow-heif", "blake3",
    # Keras 3 (the host has JAX, not Keras)
    "keras", "namex", "optree",
)
# What the kit takes the host to have (and a local stand-in venv must install: see docs/GPU.md).
HOST_PACKAGES = (
    "jax", "jaxlib", "numpy", "ml-dtypes", "opt-einsum", "scipy", "absl-py", "rich", "h5py",
    "packaging", "pyyaml", "python-dateutil", "six", "typing-extensions", "click", "httpx",
    "safetensors", "opencv-python-headless",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
PHOTO_NAMES = ("coffee", "chelsea", "astronaut", "rocket")


def log(message: str) -> None:
    print(f"[gpu_worker {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- pack (here) ------------------------------------------------------------------------------


def lock_blocks(lock: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Each named package's requirement in ``lock`` (``name==version`` and its hashes)."""
    blocks: dict[str, str] = {}
    current: str | None = None
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==", line)
        if match:
            current = match.group(1).lower().replace("_", "-").replace(".", "-")
            blocks[current] = line
        elif current and line.startswith("    --hash"):
            blocks[current] += "\n" + line
        elif not line.startswith(" "):
            current = None
    missing = [n for n in names if n not in blocks]
    if missing:
        raise SystemExit(f"not in {lock}: {missing}")
    return {name: blocks[name] for name in names}


def download_wheels(directory: Path, python: str) -> list[Path]:
    """The locked wheels of KIT_PACKAGES for CPython ``python`` on x86-64 Linux, hash-checked."""
    directory.mkdir(parents=True, exist_ok=True)
    requirements = directory.parent / "kit-requirements.txt"
    requirements.write_text("\n".join(lock_blocks(LOCK, KIT_PACKAGES).values()) + "\n")
    tag = python.replace(".", "")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--require-hashes", "--only-binary=:all:", "--implementation", "cp",
            "--python-version", python, "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none",
            "-d", str(directory), "-r", str(requirements)]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    subprocess.run(argv, check=True)
    requirements.unlink()
    wheels = sorted(directory.glob("*.whl"))
    names = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
    missing = [n for n in KIT_PACKAGES if n.replace("_", "-") not in names]
    if missing:
        raise SystemExit(f"no wheel for {missing} in {directory}")
    return wheels


def _ldd(program: str) -> list[tuple[str, Path]]:
    """(name to give it, file) of every shared library ``program`` loads, the loader included."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    libraries = []
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            name, _, rest = line.partition("=>")
            path = rest.strip().split(" (")[0]
            if path and path != "not found":
                libraries.append((name.strip(), Path(path)))
            elif path == "not found":
                raise SystemExit(f"{program}: {name.strip()} not found")
        elif line.startswith("/"):
            path = Path(line.split(" (")[0])
            libraries.append((path.name, path))  # the loader, ld-linux-x86-64.so.2
    return libraries


def pack_redis(target: Path) -> dict[str, Any]:
    program = shutil.which("redis-server")
    if program is None:
        raise SystemExit("redis-server is not installed here (scripts/setup installs it)")
    version = subprocess.run([program, "--version"], capture_output=True, text=True).stdout.strip()
    libraries = _ldd(program)
    with tarfile.open(target, "w:xz") as tar:
        tar.add(os.path.realpath(program), arcname="redis/redis-server")
        for name, path in libraries:
            tar.add(os.path.realpath(path), arcname=f"redis/lib/{name}")
    return {"version": version, "libraries": [name for name, _ in libraries]}


def pack_volume(target: Path) -> dict[str, Any]:
    """The backbone-only volume (``models_registry.huge --size-gb 0``) as ``models/backbone/1``."""
    from models_registry.huge import build_huge

    with tempfile.TemporaryDirectory(prefix="gpu-kit-") as scratch:
        volume = build_huge(Path(scratch), "1", size_gb=0, name="backbone")
        with tarfile.open(target, "w") as tar:
            tar.add(volume.path.parent.parent, arcname="models")
        facts = {"bytes": volume.total_bytes, "manifest_sha256": volume.manifest_sha256,
                 "framework": volume.manifest.get("framework", {})}
        _make_writable(Path(scratch))
    return facts


def pack(directory: Path, python: str) -> int:
    from bench.parts import write_images

    if directory.exists():
        _make_writable(directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    log(f"wheels for CPython {python} (requirements/dev.txt, hash-checked)")
    wheels = download_wheels(directory / "wheels", python)
    log("redis-server and its shared libraries")
    redis_facts = pack_redis(directory / "redis.tar.xz")
    log("the backbone-only model volume (models_registry.huge --size-gb 0; TensorFlow builds it)")
    volume_facts = pack_volume(directory / "models.tar")
    write_images(directory / "photos")
    sizes = {p.relative_to(directory).as_posix(): p.stat().st_size
             for p in sorted(directory.rglob("*")) if p.is_file()}
    total = sum(sizes.values())
    facts = {
        "packed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": python,
        "wheels": [w.name for w in wheels],
        "redis": redis_facts,
        "volume": volume_facts,
        "host_packages": list(HOST_PACKAGES),
        "bytes": total,
    }
    (directory / "kit.json").write_text(json.dumps(facts, indent=1) + "\n")
    log(f"{directory}: {total / 2**20:.1f} MiB in {len(sizes)} files "
        f"(wheels {sum(v for k, v in sizes.items() if k.startswith('wheels/')) / 2**20:.1f}, "
        f"redis {sizes['redis.tar.xz'] / 2**20:.1f}, volume {sizes['models.tar'] / 2**20:.1f} MiB)")
    if total > KIT_LIMIT_BYTES:
        log(f"the kit is over {KIT_LIMIT_BYTES / 2**20:.0f} MiB: it will not travel with the tree")
        return 1
    print(directory)
    return 0


def _make_writable(path: Path) -> None:
    """Volumes are read-only: give write back so that they can be removed."""
    for entry in [path, *path.rglob("*")]:
        if entry.is_dir() and not entry.is_symlink():
            entry.chmod(entry.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)


# --- unpack (on the host) ---------------------------------------------------------------------


def unpack_wheels(wheels: list[Path], site: Path) -> None:
    """Install wheels by unpacking them (what pip does for these, without pip's checks)."""
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                parts = info.filename.split("/")
                if parts[0].endswith(".data"):
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue  # scripts, headers: not needed
                    parts = parts[2:]
                if ".." in parts or info.filename.startswith("/"):
                    raise ValueError(f"{wheel.name}: unsafe path {info.filename}")
                target = site.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)


def unpack_kit(kit: Path, work: Path, *, system_redis: bool) -> dict[str, Any]:
    """Unpack the kit into ``work``; put its packages first on this process's path (and its
    children's) and its programs (``celery``, ``redis-server``) first on the PATH."""
    facts = json.loads((kit / "kit.json").read_text())
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if facts["python"] != running:
        raise SystemExit(f"the kit was packed for Python {facts['python']}, this is {running}: "
                         f"pack it again with --python {running}")
    site = work / "site"
    unpack_wheels(sorted((kit / "wheels").glob("*.whl")), site)
    sys.path[:0] = [str(site), str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    with tarfile.open(kit / "models.tar") as tar:
        tar.extractall(work, filter="tar")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "celery", f'exec "{sys.executable}" -m celery "$@"')
    if not system_redis:
        with tarfile.open(kit / "redis.tar.xz") as tar:
            tar.extractall(work, filter="tar")
        redis_dir = work / "redis"
        _script(bin_dir / "redis-server",
                f'exec "{redis_dir}/lib/ld-linux-x86-64.so.2" --library-path "{redis_dir}/lib" '
                f'"{redis_dir}/redis-server" "$@"')
    elif shutil.which("redis-server") is None:
        raise SystemExit("--system-redis: no redis-server on the PATH")
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return facts


def _script(path: Path, command: str) -> None:
    path.write_text(f"#!/bin/sh\n{command}\n")
    path.chmod(0o755)


# --- the measurements (on the host) -----------------------------------------------------------


def _decode_loop(photos: list[str], max_side: int, size: int, start_at: float, seconds: float) -> tuple[int, float]:
    from common.imaging import decode_rgb
    from workers.runtime.reference import center_square

    data = [Path(p).read_bytes() for p in photos]
    center_square(decode_rgb(data[0], max_side=max_side), size)  # imports, first calls
    while time.time() < start_at:
        time.sleep(0.005)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        center_square(decode_rgb(data[count % len(data)], max_side=max_side), size)
        count += 1
    return count, time.perf_counter() - started


def decode_limit(photos: list[Path], max_side: int, size: int, seconds: float, processes: int) -> dict:
    """decode + crop on ``processes`` processes at once: photos/s summed."""
    start_at = time.time() + 3.0 + processes * 0.2  # after every process has imported
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_decode_loop, [str(p) for p in photos], max_side, size, start_at, seconds)
                   for _ in range(processes)]
        done = [f.result() for f in futures]
    return {"processes": processes, "seconds": seconds,
            "photos_per_s": round(sum(count / elapsed for count, elapsed in done), 1),
            "per_process": round(sum(c for c, _ in done) / sum(e for _, e in done), 1)}


def model_only(volume: Path, photos: list[Path], sizes: list[int], seconds: float) -> dict:
    """``JaxBackbone.predict`` on prepared photos; run in a process of its own (``model-only``).

    First it compiles every batch size up to the largest at once (``JaxBackbone.compile``), so
    that the workers after it find them in JAX's compilation cache on disk."""
    import jax
    import numpy as np

    from common.imaging import decode_rgb
    from workers.runtime.jax_backend import BATCH_SIZES, JaxBackbone, batch_size_for
    from workers.runtime.reference import center_square

    backbone = JaxBackbone()
    backbone.load(volume / "backbone")
    prepared = [center_square(decode_rgb(p.read_bytes(), max_side=512), 224) for p in photos]
    largest = batch_size_for(max(sizes))
    compiled = [s for s in BATCH_SIZES if s <= largest] or [largest]
    compile_s = backbone.compile(compiled, threads=min(len(compiled), os.cpu_count() or 1))
    rows = []
    for size in sizes:
        batch = np.stack([prepared[i % len(prepared)] for i in range(size)])
        started = time.perf_counter()
        backbone.predict(batch)
        first_s = time.perf_counter() - started
        times: list[float] = []
        began = time.perf_counter()
        while time.perf_counter() - began < seconds or len(times) < 5:
            t0 = time.perf_counter()
            backbone.predict(batch)
            times.append(time.perf_counter() - t0)
        times.sort()
        p50 = times[len(times) // 2]
        rows.append({"batch": size, "padded_to": batch_size_for(size), "calls": len(times),
                     "first_call_s": round(first_s, 3), "p50_ms": round(p50 * 1000, 3),
                     "min_ms": round(times[0] * 1000, 3), "photos_per_s": round(size / p50, 1)})
    return {"device": str(jax.devices()[0]), "jax": jax.__version__,
            "load_seconds": round(backbone.load_seconds or 0, 3),
            "compiled_sizes": compiled, "compile_seconds": round(compile_s, 2), "rows": rows}


def _creator_init(env: dict[str, str]) -> None:
    os.environ.update({**env, "LOG_LEVEL": "WARNING"})  # not a line per job created
    import django

    django.setup()


def _create_jobs(photos: list[str], count: int, offset: int) -> list[str]:
    """``count`` jobs created as the API creates them (in a process set up by ``_creator_init``)."""
    from common.apikeys import KeyPolicy
    from recognition_api.services import recognition_job_create

    data = [Path(p).read_bytes() for p in photos]
    policy = KeyPolicy(name="gpu-bench")
    return [recognition_job_create(data=data[(offset + i) % len(data)], client=policy,
                                   request_id=f"gpu-bench-{offset + i}")["id"] for i in range(count)]


def create_backlog(env: dict[str, str], photos: list[Path], count: int, processes: int) -> tuple[list[str], float]:
    share = -(-count // processes)
    started = time.perf_counter()
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_creator_init,
                             initargs=({k: v for k, v in env.items() if k != "PATH"},)) as pool:
        futures = [pool.submit(_create_jobs, [str(p) for p in photos], min(share, count - i * share), i * share)
                   for i in range(processes) if count - i * share > 0]
        ids = [job for future in futures for job in future.result()]
    return ids, time.perf_counter() - started


def wait_all(client: Any, prefix: str, ids: list[str], timeout: float, worker: Any) -> list[dict[str, str]]:
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(ids)} jobs unfinished after {timeout:.0f} s")
        if not worker.alive():
            raise RuntimeError(f"the worker exited:\n{worker.output()[-4000:]}")
        time.sleep(0.5)
        still = []
        for start in range(0, len(pending), 5000):
            chunk = pending[start:start + 5000]
            pipe = client.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hget(f"{prefix}job:{job_id}", "status")
            for job_id, status in zip(chunk, pipe.execute(), strict=True):
                if status not in (b"succeeded", b"failed"):
                    still.append(job_id)
        pending = still
    records = []
    fields = ("status", "finished_at", "timings", "error_code")
    for start in range(0, len(ids), 5000):
        pipe = client.pipeline(transaction=False)
        for job_id in ids[start:start + 5000]:
            pipe.hmget(f"{prefix}job:{job_id}", fields)
        for values in pipe.execute():
            records.append({k: v.decode() for k, v in zip(fields, values, strict=True) if v is not None})
    return records


def drain_figures(records: list[dict[str, str]], ready_at: float) -> dict[str, Any]:
    finishes = sorted(float(r["finished_at"]) for r in records if "finished_at" in r)
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record.get("status", "?")] = statuses.get(record.get("status", "?"), 0) + 1
    count = len(finishes)
    low, high = int(count * 0.1), max(int(count * 0.9) - 1, int(count * 0.1) + 1)
    steady = (high - low) / (finishes[high] - finishes[low]) if count > 10 and finishes[high] > finishes[low] else None
    timings = [json.loads(r["timings"]) for r in records if r.get("timings")]
    batches = sorted(t.get("batch_size", 0) for t in timings)

    def mean(name: str) -> float | None:
        values = [t[name] for t in timings if name in t]
        return round(sum(values) / len(values), 2) if values else None

    return {
        "jobs": len(records), "statuses": statuses,
        "photos_per_s": round(steady, 1) if steady else None,
        "photos_per_s_whole_drain": round(count / (finishes[-1] - ready_at), 1) if count else None,
        "first_finish_after_ready_s": round(finishes[0] - ready_at, 2) if count else None,
        "batch_size_mean": round(sum(batches) / len(batches), 1) if batches else None,
        "batch_size_p50": batches[len(batches) // 2] if batches else None,
        "mean_ms": {name: mean(name) for name in ("queue_wait", "decode", "prepare", "inference")},
    }


class GpuSampler:
    """nvidia-smi's GPU utilization once a second, while it runs (where there is nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if shutil.which("nvidia-smi"):
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                     timeout=5).stdout.split(",")
                self.samples.append((float(out[0]), float(out[1])))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def stop(self) -> dict[str, Any] | None:
        self._stop.set()
        if not self.samples:
            return None
        return {"util_mean_pct": round(sum(s[0] for s in self.samples) / len(self.samples), 1),
                "memory_used_mib_max": max(s[1] for s in self.samples)}


def measure_worker(name: str, stack: Any, photos: list[Path], args: argparse.Namespace,
                   extra: dict[str, str]) -> dict[str, Any]:
    """A warm-up worker on a small backlog, then the measured one on a backlog of ``--seconds``
    (``stack``: a ``harness.Stack`` with its Redis, no API and no worker)."""
    from bench.measure import _cpu_seconds
    from harness import spawn

    env = {**stack.env, **extra}
    client = stack.redis()
    prefix = env["REDIS_KEY_PREFIX"]
    creators = max(1, min(8, (os.cpu_count() or 2) - 1))
    result: dict[str, Any] = {"settings": extra}

    def drain(label: str, count: int) -> dict[str, Any]:
        ids, create_s = create_backlog(env, photos, count, creators)
        log(f"{name}/{label}: {len(ids)} jobs waiting (created in {create_s:.1f} s); starting the worker")
        ready_file = str(stack.tmp / f"ready-{name}-{label}")
        worker = spawn(f"worker-{name}-{label}", ["scripts/start-worker"],
                       {**env, "WORKER_MODEL_VERSION": "1", "WORKER_READY_FILE": ready_file}, stack.tmp / "logs")
        stack.processes.append(worker)
        try:
            started = time.time()
            stack.wait_worker_ready(worker, "1", timeout=300)
            ready_at = time.time()
            cpu0 = _cpu_seconds(worker.popen.pid)
            sampler = GpuSampler()
            records = wait_all(client, prefix, ids, args.timeout, worker)
            cpu = _cpu_seconds(worker.popen.pid) - cpu0
            gpu = sampler.stop()
            figures = drain_figures(records, ready_at)
            wall = max(float(r["finished_at"]) for r in records) - ready_at
            figures.update({"start_to_ready_s": round(ready_at - started, 2),
                            "worker_cpu_cores": round(cpu / wall, 2) if wall > 0 else None,
                            "create_s": round(create_s, 2), "gpu": gpu})
            loaded = [line for line in worker.output().splitlines() if "model loaded" in line]
            if loaded:
                figures["model_loaded_log"] = loaded[-1][:400]
        finally:
            worker.stop(timeout=60)
        log(f"{name}/{label}: {figures['photos_per_s']} photos/s (middle 80 %), mean batch "
            f"{figures['batch_size_mean']}, worker CPU {figures['worker_cpu_cores']} cores")
        return figures

    warm = drain("warm-up", args.warm_jobs)
    result["warm_up"] = warm
    rate = warm["photos_per_s"] or warm["photos_per_s_whole_drain"] or 50.0
    jobs = int(min(args.max_jobs, max(args.min_jobs, rate * args.seconds)))
    result["measured"] = drain("measured", jobs)
    client.close()
    return result


def run(args: argparse.Namespace) -> int:
    kit = args.kit.resolve()
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-worker-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or os.environ.get("OUT") or ROOT / "var")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "args": {k: str(v) for k, v in vars(args).items()}}

    def save() -> None:  # after each part: a run cut short keeps what it measured
        report["seconds"] = round(time.time() - started, 1)
        (out / "gpu_worker.json").write_text(json.dumps(report, indent=1) + "\n")

    try:
        report["kit"] = unpack_kit(kit, work, system_redis=args.system_redis)
        os.environ.update({
            "KERAS_BACKEND": "jax",
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # the processes here take turns on the GPU
            "JAX_COMPILATION_CACHE_DIR": str(work / "jax-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            "DJANGO_SETTINGS_MODULE": "config.settings",
        })
        report["host"] = host_facts()
        log(f"host: {report['host']}")
        photos = sorted((kit / "photos").glob("*.jpg"))
        volume = work / "models" / "backbone" / "1"
        manifest = json.loads((volume / "manifest.json").read_text())
        max_side = int(manifest["input"]["decode_max_side"])
        size = int(manifest["input"]["model_input"][0])
        cores = os.cpu_count() or 1

        log(f"decode limit: decode_rgb(max_side={max_side}) + crop, {cores} processes, {args.decode_seconds:g} s")
        report["decode_limit"] = decode_limit(photos, max_side, size, args.decode_seconds, cores)
        log(f"decode limit: {report['decode_limit']['photos_per_s']} photos/s")
        save()

        log(f"model only: compile batch sizes up to {args.batch}, then JaxBackbone.predict at 1 and {args.batch}")
        result = subprocess.run(
            [sys.executable, "-m", "bench.gpu_worker", "model-only", "--volume", str(volume),
             "--photos", str(kit / "photos"), "--sizes", f"1,{args.batch}", "--seconds", str(args.model_seconds)],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"model-only failed:\n{result.stderr[-4000:]}")
        report["model_only"] = json.loads(result.stdout.strip().splitlines()[-1])
        report["host"].update(device=report["model_only"]["device"], jax=report["model_only"]["jax"])
        log(f"model only on {report['model_only']['device']} (compiled {report['model_only']['compiled_sizes']} "
            f"in {report['model_only']['compile_seconds']} s): {report['model_only']['rows']}")
        save()

        report["workers"] = measure_workers(work, photos, args, report, save)
    finally:
        save()
        if not args.keep:
            _make_writable(work)
            shutil.rmtree(work, ignore_errors=True)
        print(table(report))
        log(f"wrote {out / 'gpu_worker.json'} ({report['seconds']:.0f} s in all)")
    return 0


def measure_workers(work: Path, photos: list[Path], args: argparse.Namespace, report: dict[str, Any],
                    save: Any) -> dict[str, Any]:
    from harness import Stack, stack_env, start_redis

    redis_process, url = start_redis(work / "redis-data")
    try:
        env, key = stack_env(work, url, model_root=work / "models", default_version="1",
                             MODEL_NAME="backbone", KERAS_BACKEND="jax", METRICS_ENABLED="false",
                             BATCH_MAX_SIZE=str(args.batch), MAX_QUEUE_DEPTH="0",
                             JOB_DEADLINE_SECONDS="3600", IMAGE_TTL_SECONDS="7200", JOB_TTL_SECONDS="7200",
                             WORKER_MAX_BATCH_SECONDS="600", **dict(e.split("=", 1) for e in args.env))
        env["PATH"] = os.environ["PATH"]  # the kit's celery first (stack_env puts .venv/bin first)
        stack = Stack(work, env, key, url)
        variants: list[tuple[str, dict[str, str]]] = [("threads", {})]
        if args.prepare_processes and _has_setting("PREPARE_PROCESSES"):
            processes = max(1, (os.cpu_count() or 2) - 1)
            variants.append(("prepare-processes", {"PREPARE_PROCESSES": str(processes)}))
        results: dict[str, Any] = {}
        report["workers"] = results
        try:
            for name, extra in variants:
                results[name] = measure_worker(name, stack, photos, args, extra)
                save()
        finally:
            stack.stop()
        return results
    finally:
        redis_process.kill()


def _has_setting(name: str) -> bool:
    return name in (ROOT / "config" / "settings.py").read_text()


def host_facts() -> dict[str, Any]:
    """The host, without importing JAX here (the model-only process reports its device)."""
    from importlib import metadata

    facts: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                             "cores": os.cpu_count()}
    for name in ("jax", "jaxlib", "keras", "numpy", "pillow", "celery", "django"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            facts[name] = metadata.version(name)
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True)
        facts["gpu"] = query.stdout.strip()
    with contextlib.suppress(OSError, StopIteration):
        facts["cpu"] = next(line.split(":", 1)[1].strip() for line in
                            Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    return facts


WIDTH = 70


def table(report: dict[str, Any]) -> str:
    """The figures, each worker's also as a share of the model alone (at its batch) and of the
    decode limit."""
    host = report.get("host", {})
    lines = [f"Real worker on {host.get('device', '?')} ({host.get('gpu', 'no GPU')}), {host.get('cores')} cores, "
             f"Python {host.get('python')}, JAX {host.get('jax')}, Keras {host.get('keras')}",
             f"{'':<{WIDTH}}{'photos/s':>10}"]
    decode = report.get("decode_limit") or {}
    if decode:
        label = f"decode + crop limit ({decode['processes']} processes)"
        lines.append(f"{label:<{WIDTH}}{decode['photos_per_s']:>10}")
    rows = (report.get("model_only") or {}).get("rows", [])
    for row in rows:
        label = f"model only, batch {row['batch']} (p50 {row['p50_ms']} ms a call)"
        lines.append(f"{label:<{WIDTH}}{row['photos_per_s']:>10}")
    model = rows[-1] if rows else None  # at the worker's batch size
    for name, result in (report.get("workers") or {}).items():
        measured = result["measured"]
        rate = measured["photos_per_s"]
        label = f"worker at backlog, {name}"
        lines.append(f"{label:<{WIDTH}}{rate!s:>10}")
        shares = []
        if rate and model:
            shares.append(f"{rate / model['photos_per_s']:.0%} of the model alone at batch {model['batch']}")
        if rate and decode:
            shares.append(f"{rate / decode['photos_per_s']:.0%} of the decode limit")
        lines.append(f"    {measured['jobs']} jobs, mean batch {measured['batch_size_mean']}, worker CPU "
                     f"{measured['worker_cpu_cores']} cores, GPU {measured.get('gpu') or '-'}; " + ", ".join(shares))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="build the kit (here, in the dev .venv)")
    p.add_argument("directory", nargs="?", type=Path, default=DEFAULT_KIT)
    p.add_argument("--python", default="3.12", help="the host's CPython, for the binary wheels (default %(default)s)")
    r = commands.add_parser("run", help="measure on the host")
    r.add_argument("--kit", type=Path, default=DEFAULT_KIT)
    r.add_argument("--out", type=Path, help="where gpu_worker.json goes (default $OUT, else var/)")
    r.add_argument("--work", type=Path, help="scratch directory (default: a new one in /tmp)")
    r.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    r.add_argument("--batch", type=int, default=128, help="BATCH_MAX_SIZE, and the model-only batch")
    r.add_argument("--seconds", type=float, default=20, help="the measured backlog, in seconds of work")
    r.add_argument("--warm-jobs", type=int, default=0, help="the warm-up backlog (default 4 x batch + 64)")
    r.add_argument("--min-jobs", type=int, default=200)
    r.add_argument("--max-jobs", type=int, default=30000)
    r.add_argument("--decode-seconds", type=float, default=8)
    r.add_argument("--model-seconds", type=float, default=5)
    r.add_argument("--timeout", type=float, default=300, help="for one drain")
    r.add_argument("--no-prepare-processes", dest="prepare_processes", action="store_false",
                   help="measure the worker on its threads only")
    r.add_argument("--system-redis", action="store_true", help="the redis-server on the PATH, not the kit's")
    r.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the worker")
    r.add_argument("--quick", action="store_true",
                   help="a CPU-only check: batch 8, 8 s of backlog, 2 s per figure")
    m = commands.add_parser("model-only", help=argparse.SUPPRESS)
    m.add_argument("--volume", type=Path, required=True)
    m.add_argument("--photos", type=Path, required=True)
    m.add_argument("--sizes", default="1,128")
    m.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args(argv)
    if args.command == "pack":
        sys.path.insert(0, str(ROOT))
        return pack(args.directory.resolve(), args.python)
    if args.command == "model-only":
        figures = model_only(args.volume, sorted(args.photos.glob("*.jpg")),
                             [int(s) for s in args.sizes.split(",")], args.seconds)
        print(json.dumps(figures))
        return 0
    if args.quick:
        args.batch, args.seconds, args.decode_seconds, args.model_seconds = 8, 8, 2, 2
        args.min_jobs = min(args.min_jobs, 40)
    if not args.warm_jobs:
        args.warm_jobs = 4 * args.batch + 64
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

