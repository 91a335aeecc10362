"""Part 6: how long a worker takes to load a huge volume, against reading its files, and its
peak memory.

Each load runs in a fresh child process (``python -m bench.huge_load --child VOLUME``), so its
peak RSS (VmHWM) is its own: the interpreter, TensorFlow and the model. The raw read is every
file of the volume read into reused buffers, the fastest of a few ways (``READ_METHODS``): what
no loader can beat. "Cold" means the volume's pages were first dropped from this machine's page
cache with posix_fadvise(POSIX_FADV_DONTNEED) on each file (no root needed, nothing else on the
machine is touched). On a virtual machine the host may still cache the disk image: "cold" is
cold for this kernel only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

READ_BUFFER = 16 * 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


def volume_files(volume_path: Path) -> list[Path]:
    manifest = json.loads((volume_path / "manifest.json").read_text())
    return [volume_path / f["path"] for f in manifest["files"]] + [volume_path / "manifest.json"]


def drop_from_page_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages (a volume just written) cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_file(path: Path, buffers: list[memoryview]) -> int:
    """Read one file with ``len(buffers)`` threads, each into its own reused buffer."""
    size = path.stat().st_size
    chunk = len(buffers[0])
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

        def reader(index: int) -> int:
            done, offset = 0, index * chunk
            while offset < size:
                count = os.preadv(fd, [buffers[index]], offset)
                if not count:
                    break
                done += count
                offset += len(buffers) * chunk
            return done

        with ThreadPoolExecutor(len(buffers)) as pool:
            return sum(pool.map(reader, range(len(buffers))))
    finally:
        os.close(fd)


def raw_read(paths: list[Path], *, threads: int = 1, chunk: int = READ_BUFFER) -> tuple[int, float]:
    """(bytes, seconds) to read every file: ``threads`` readers, each into one reused buffer
    (allocated and touched before the clock starts)."""
    import numpy as np

    buffers = [memoryview(np.ones(chunk, dtype=np.uint8)) for _ in range(threads)]
    started = time.perf_counter()
    total = sum(_read_file(path, buffers) for path in paths)
    return total, time.perf_counter() - started


# The ways of reading the files that are tried; the fastest is "the raw read time".
READ_METHODS = {
    "1 thread, 16 MiB reads": (1, 16 << 20),
    "1 thread, 64 MiB reads": (1, 64 << 20),
    "2 threads, 16 MiB reads": (2, 16 << 20),
}


def best_raw_read(paths: list[Path], *, cold: bool) -> dict:
    times = {}
    nbytes = 0
    for name, (threads, chunk) in READ_METHODS.items():
        if cold:
            drop_from_page_cache(paths)
        nbytes, times[name] = raw_read(paths, threads=threads, chunk=chunk)
    best = min(times, key=times.__getitem__)
    return {"bytes": nbytes, "seconds": times[best], "method": best, "all": times}


def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def child(volume_path: Path, weights: str = "map") -> dict:
    """Runs in the child: import TF, then load the volume through runtime_for, like a worker."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from common.volume import ModelVolume
    from workers.runtime import tensorflow_backend  # noqa: F401  (TF imported before the clock starts)
    from workers.runtime.huge import HugeRuntime

    before = _status()
    volume = ModelVolume.open(volume_path)
    started = time.perf_counter()
    runtime = HugeRuntime(volume, weights=weights)  # runtime_for gives HugeRuntime(volume): "map"
    runtime.load()
    load_s = time.perf_counter() - started
    after = _status()
    outputs = runtime.predict_outputs([np.zeros((224, 224, 3), np.uint8)])
    return {
        "rss_before": before["VmRSS"],
        "hwm_before": before["VmHWM"],
        "load_s": load_s,
        "backbone_load_s": runtime.backbone.load_seconds,
        "weights_bytes": runtime.backbone.weights_bytes,
        "hwm": after["VmHWM"],
        "rss_after": after["VmRSS"],
        "model_bytes": volume.total_bytes,
        "weights": weights,
        "outputs": {k: list(v.shape) for k, v in outputs.items()},
    }


def load_in_child(volume_path: Path, weights: str = "map", python: str = sys.executable) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [python, "-m", "bench.huge_load", "--child", str(volume_path), weights],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"loading {volume_path} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(volume_path: Path, repeats: int = 3, log=lambda m: None) -> dict:  # type: ignore[no-untyped-def]
    """Per repeat: cold then warm raw read, cold then warm load (default "map" weights); once at
    the end, a cold and a warm load with "read" weights (the model in the process's own memory)."""
    paths = volume_files(volume_path)
    runs = []
    for i in range(repeats):
        cold_read = best_raw_read(paths, cold=True)
        warm_read = best_raw_read(paths, cold=False)
        drop_from_page_cache(paths)
        cold = load_in_child(volume_path)
        warm = load_in_child(volume_path)
        runs.append({"cold_read": cold_read, "warm_read": warm_read, "cold": cold, "warm": warm})
        log(
            f"huge load {i + 1}/{repeats}: raw read cold {cold_read['seconds']:.2f}s warm "
            f"{warm_read['seconds']:.2f}s; load cold {cold['load_s']:.2f}s "
            f"warm {warm['load_s']:.2f}s; "
            f"peak RSS {warm['hwm'] / 2**20:.0f} MiB"
        )
    drop_from_page_cache(paths)
    read_cold = load_in_child(volume_path, "read")
    read_warm = load_in_child(volume_path, "read")
    return {
        "volume": str(volume_path),
        "runs": runs,
        "read_mode": {"cold": read_cold, "warm": read_warm},
    }


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--child":
        print(json.dumps(child(Path(sys.argv[2]), *sys.argv[3:])))
    else:
        print(
            json.dumps(
                measure(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1), indent=1
            )
        )
