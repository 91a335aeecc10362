"""Model weights on the volume, read without TensorFlow, Keras or JAX: the numpy half of loading a
saved backbone (``model.json`` + ``weights.safetensors``), shared by both Keras backends
(``workers.runtime.tensorflow_backend`` and ``workers.runtime.jax_backend``).

``WeightsFile`` opens the file for a load: it reads and checks the safetensors header, and starts
the disk while the caller builds the graph. ``WeightsFile.adopt`` then checks that the tensors fit
the model's variables (names, shapes, dtypes) before a byte of tensor data is read, and hands each
tensor's bytes, in file order, to the backend's ``adopt(variable, array)``, which makes the
variable use them without a copy (a DLPack tensor in TensorFlow, ``jax.device_put`` on JAX's CPU
client; on a GPU the one copy is the one to the device). Two ways to get the bytes:

* ``"map"`` (the default): the bytes stay where the kernel put them. The file is mapped private
  and read-write (copy-on-write; nothing ever writes) and made resident at once
  (``MADV_POPULATE_READ``), and each 64-byte aligned tensor is used in place, in the page cache:
  the load costs about one read of the file, the model's bytes are counted once (as file pages),
  and the workers of one volume on a host share them. Tensors that are small or not aligned
  (``safetensors``' own writer does not align them) are copied.
* ``"read"``: each tensor is read with ``preadv`` into a fresh buffer of its own (a few at a time,
  on a few threads), which the variable adopts: the model lives in the process's own memory, and
  the load also pays for faulting that memory in.

Either way peak memory is the process plus the model's bytes: no second copy, not even of one
tensor. Nothing here imports TensorFlow, Keras or JAX: it is numpy and the standard library.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import mmap
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CATALOG_TOP_K",
    "INPUT_SIZE",
    "MODEL_JSON",
    "SAFETENSORS_DTYPES",
    "WEIGHTS_FILE",
    "WEIGHTS_MODES",
    "Populator",
    "WeightsFile",
    "check_batch",
    "check_fit",
    "read_safetensors_header",
    "weights_by_path",
]

INPUT_SIZE = 224
MODEL_JSON = "model.json"
WEIGHTS_FILE = "weights.safetensors"
WEIGHTS_MODES = ("map", "read")
CATALOG_TOP_K = 5

# safetensors dtype names -> numpy
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_ALIGN = 64  # what TensorFlow's CPU kernels (Eigen) expect of a buffer; XLA's CPU client
# uses such a buffer in place too (jax.device_put)
_OWN_MAP_BYTES = 1 << 20
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14
_READ_THREADS = max(1, min(4, os.cpu_count() or 1))


def read_safetensors_header(path: Path) -> tuple[dict[str, dict], int, dict[str, str]]:
    """(tensors by name: {"dtype", "shape", "data_offsets"}, offset of the data, metadata).

    The format: an 8-byte little-endian header length, a JSON header, then the tensors' bytes;
    ``data_offsets`` are relative to the end of the header.
    """
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER_BYTES:
            raise ValueError(f"{path}: safetensors header of {length} bytes is implausible")
        raw = handle.read(length)
    if len(raw) != length:
        raise ValueError(f"{path}: truncated safetensors header")
    header = json.loads(raw)
    metadata = header.pop("__metadata__", None) or {}
    return header, 8 + length, metadata


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 buffer of ``nbytes`` whose data starts on a 64-byte boundary.

    Large buffers are anonymous memory maps of their own: page-aligned, given back to the system
    as soon as the variable that adopts them is freed, and never marked for transparent huge pages
    (numpy marks its large allocations, and on a host short of free huge pages each fault then
    waits for memory compaction: reading a model into them was measured up to 7x slower here).
    """
    if nbytes >= _OWN_MAP_BYTES:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return np.frombuffer(region, dtype=np.uint8)
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start:start + nbytes]


def _pread_exactly(fd: int, offset: int, buffer: np.ndarray, name: str) -> None:
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        if not count:
            raise ValueError(f"{name}: ends {len(view) - done} bytes early")
        done += count


def read_tensors(path: Path, data_start: int, entries: list[dict]) -> Iterator[np.ndarray]:
    """Yield each entry's bytes, in order, each in a fresh buffer of its own.

    Reads run on a few threads (``preadv`` releases the GIL): the page faults of the fresh memory
    and the copies out of the page cache (or the disk's latency) overlap across cores. At most
    ``_READ_THREADS`` buffers beyond those already yielded are in flight.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

        def read(entry: dict) -> np.ndarray:
            begin, end = entry["data_offsets"]
            buffer = aligned_empty(end - begin)
            _pread_exactly(fd, data_start + begin, buffer, str(path))
            return buffer

        with ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="weights") as pool:
            pending: deque = deque()
            entries_iter = iter(entries)
            for entry in itertools.islice(entries_iter, _READ_THREADS * 2):
                pending.append(pool.submit(read, entry))
            while pending:
                buffer = pending.popleft().result()
                for entry in itertools.islice(entries_iter, 1):
                    pending.append(pool.submit(read, entry))
                yield buffer
    finally:
        os.close(fd)


def prefetch(path: Path) -> None:
    """Ask the kernel to start reading the whole file into the page cache, without waiting."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def map_file(path: Path) -> mmap.mmap:
    """One private, read-write mapping of the whole file (copy-on-write: the file never changes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_PRIVATE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


class Populator:
    """Read ``ranges`` of the file into the page cache on a thread of its own, in order, from the
    start of the load: the disk works while the caller builds the graph, and then alongside the
    caller's own faulting-in of the same file. On the 2-core development VM a 4 GB volume loaded
    cold in a median 3.98 s with it, 4.32 s without it and 4.51 s with a POSIX_FADV_WILLNEED of
    the whole file instead (5 interleaved runs each; the graph takes ~0.5 s of that).

    It populates a read-only shared mapping of the file a chunk at a time and unmaps each chunk's
    pages as soon as they are in (MADV_DONTNEED keeps them in the page cache), so it adds one
    chunk to the process's memory at most. ``madvise`` is called through ctypes, which lets go of
    the GIL for the call. Where MADV_POPULATE_READ is missing (kernels before 5.14) it stops,
    and the caller faults the pages in alone.
    """

    _CHUNK = 32 << 20

    def __init__(self, path: Path, ranges: list[tuple[int, int]]) -> None:
        self._path = path
        self._ranges = ranges
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weights-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            fd = os.open(self._path, os.O_RDONLY)
            try:
                region = mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED,
                                   prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            madvise = ctypes.CDLL(None, use_errno=True).madvise
            madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError, ValueError):
            return  # only a read-ahead: the caller's own reads report the file's problems
        with region:
            base = np.frombuffer(region, dtype=np.uint8)
            address = base.ctypes.data
            try:
                for start, length in self._ranges:
                    for offset in range(start, start + length, self._CHUNK):
                        if self._stop.is_set():
                            return
                        size = min(self._CHUNK, start + length - offset)
                        if madvise(address + offset, size, _MADV_POPULATE_READ) != 0:
                            return
                        madvise(address + offset, size, mmap.MADV_DONTNEED)
            finally:
                del base

    def finish(self) -> None:
        """Stop early (the load failed) or wait for the end."""
        self._stop.set()
        self._thread.join()


def page_ranges(data_start: int, entries: list[dict]) -> list[tuple[int, int]]:
    """(start, length) of each large entry's bytes in the file, widened to whole pages."""
    ranges = []
    for entry in entries:
        begin, end = entry["data_offsets"]
        if end - begin >= _OWN_MAP_BYTES:
            start = (data_start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
            ranges.append((start, data_start + end - start))
    return ranges


def map_tensors(region: mmap.mmap, data_start: int, entries: list[dict]) -> Iterator[np.ndarray]:
    """Yield each entry's bytes as a view of ``region`` (``map_file``), made resident before it
    is yielded; an entry that does not start on a 64-byte boundary (or is small) is yielded as a
    copy instead. The views share the page cache: nothing is copied, and processes that map the
    same volume share one copy of it. A ``Populator`` is usually ahead of this, so that making
    an entry resident here is mostly mapping pages that are already in the page cache.
    """
    whole = np.frombuffer(region, dtype=np.uint8)
    for entry in entries:
        begin, end = entry["data_offsets"]
        view = whole[data_start + begin:data_start + end]
        if view.ctypes.data % _ALIGN or view.nbytes < _OWN_MAP_BYTES:
            copy = aligned_empty(view.nbytes)
            copy[:] = view
            yield copy
            continue
        start = (data_start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        try:  # read it in and map it, without copy-on-write
            region.madvise(_MADV_POPULATE_READ, start, data_start + end - start)
        except OSError:  # kernels before 5.14: fault every page in by reading it
            int(view[::mmap.PAGESIZE].sum())
        yield view



def weights_by_path(model: Any) -> dict[str, Any]:
    """A Keras model's variables by path (``model.weights``; any backend)."""
    variables: dict[str, Any] = {}
    for variable in model.weights:
        if variable.path in variables:
            raise ValueError(f"two model weights share the path {variable.path}")
        variables[variable.path] = variable
    return variables


def check_fit(directory: Path, header: dict[str, dict], variables: dict[str, Any]) -> None:
    """The file's tensors are exactly the model's variables, each of its shape and dtype (and of
    the byte length these imply); checked before a byte of tensor data is read."""
    missing = sorted(set(variables) - set(header))
    unused = sorted(set(header) - set(variables))

    def fits(path: str) -> bool:
        entry, variable = header[path], variables[path]
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        begin, end = entry["data_offsets"]
        return (
            tuple(variable.shape) == tuple(entry["shape"])
            and dtype is not None
            and np.dtype(dtype) == np.dtype(str(variable.dtype))
            and end - begin == math.prod(entry["shape"]) * np.dtype(dtype).itemsize
        )

    wrong = sorted(p for p in set(variables) & set(header) if not fits(p))
    if missing or unused or wrong:
        raise ValueError(
            f"weights do not fit {directory / MODEL_JSON}: missing {missing}, unused {unused}, "
            f"wrong shape {wrong}"
        )


def check_batch(batch: np.ndarray) -> np.ndarray:
    """A backbone's input: uint8 (N, 224, 224, 3) RGB, else a ValueError."""
    batch = np.asarray(batch)
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(
            f"expected uint8 (N, {INPUT_SIZE}, {INPUT_SIZE}, 3), got {batch.dtype} {batch.shape}"
        )
    return batch


class WeightsFile:
    """``directory/weights.safetensors`` opened for one load (see the module's docstring).

    Opening reads the header, refuses a file shorter than the header describes and starts the
    read-ahead (``"map"``: a ``Populator``; ``"read"``: the kernel's); ``close`` (or the end of a
    ``with``) stops or waits for the read-ahead, also when the load failed.
    """

    def __init__(self, directory: Path, mode: str = "map") -> None:
        if mode not in WEIGHTS_MODES:
            raise ValueError(f"weights must be 'map' or 'read', not {mode!r}")
        self.directory = Path(directory)
        self.mode = mode
        self.path = self.directory / WEIGHTS_FILE
        self.header, self.data_start, self.metadata = read_safetensors_header(self.path)
        size = self.path.stat().st_size
        needed = self.data_start + max(
            (e["data_offsets"][1] for e in self.header.values()), default=0
        )
        if size < needed:
            raise ValueError(f"{self.path} is truncated: {size} bytes, its header describes {needed}")
        # The disk works while the caller builds the graph.
        in_file_order = sorted(self.header.values(), key=lambda e: e["data_offsets"][0])
        self._region: mmap.mmap | None = None
        self._populator: Populator | None = None
        if mode == "map":
            self._region = map_file(self.path)
            self._populator = Populator(self.path, page_ranges(self.data_start, in_file_order))
        else:
            prefetch(self.path)

    def model_json(self) -> str:
        return (self.directory / MODEL_JSON).read_text(encoding="utf-8")

    def adopt(self, variables: dict[str, Any], adopt: Callable[[Any, np.ndarray], None]) -> int:
        """Check the fit, then ``adopt(variable, array)`` for every variable, in file order (so
        that the reads are sequential), with its tensor as a numpy array of its dtype and shape
        that nothing else refers to. Returns the tensor bytes read."""
        check_fit(self.directory, self.header, variables)
        order = sorted(variables, key=lambda p: self.header[p]["data_offsets"][0])
        entries = [self.header[p] for p in order]
        buffers = (map_tensors(self._region, self.data_start, entries) if self._region is not None
                   else read_tensors(self.path, self.data_start, entries))
        total = 0
        for path, buffer in zip(order, buffers, strict=True):
            entry = self.header[path]
            array = buffer.view(SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
            adopt(variables[path], array)
            total += buffer.nbytes
            del buffer, array
        return total

    def close(self) -> None:
        if self._populator is not None:
            self._populator.finish()
            self._populator = None
        self._region = None  # the adopted views keep the mapping alive as long as they need it

    def __enter__(self) -> WeightsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
