"""A budget for decoded pixels: the bytes that full image decodes may hold at once in a process.

A 160 KB PNG can decode to 147 MB of pixels; sixteen of them at once took an API process to
2.5 GB and a worker to 5.5 GB. Every decode first reserves its bytes here; when the budget is
spent it waits (briefly in the API, longer in a worker) for others to finish, and then gives up
with :class:`DecodeBudgetExceeded`, which the API answers as 503 + Retry-After and a worker as
an infrastructure error (the job goes back to the queue, its delivery not counted).

The default budget is a share of the memory this process may use: the container's limit
(cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``) or, without one, the machine's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DecodeBudgetExceeded(Exception):
    """The decode could not get its bytes within the time it may wait."""


class DecodeBudget:
    """``trim_after_bytes``: after a reservation at least this large ends, give the freed memory
    back to the system (glibc keeps freed blocks in its arenas: without this a worker that decoded
    a few huge images keeps their gigabytes)."""

    def __init__(self, limit_bytes: int, *, trim_after_bytes: int | None = None) -> None:
        if limit_bytes <= 0:
            raise ValueError("a decode budget needs a positive number of bytes")
        self.limit_bytes = limit_bytes
        self.trim_after_bytes = trim_after_bytes
        self.in_flight = 0
        self.peak = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int, *, timeout: float) -> Iterator[None]:
        """Hold ``nbytes`` of the budget while the block runs. A decode larger than the whole
        budget runs alone (it waits until nothing else is in flight) rather than never."""
        wanted = max(0, min(int(nbytes), self.limit_bytes))
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.in_flight + wanted > self.limit_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecodeBudgetExceeded(
                        f"{self.in_flight:,} bytes of decoded pixels are in flight; {wanted:,} more would pass "
                        f"the budget of {self.limit_bytes:,}")
                self._changed.wait(left)
            self.in_flight += wanted
            self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            with self._changed:
                self.in_flight -= wanted
                self._changed.notify_all()
            if self.trim_after_bytes is not None and wanted >= self.trim_after_bytes:
                release_free_memory()


def memory_limit_bytes() -> int:
    """What this process may use: its container's memory limit, else the machine's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # v1 says "no limit" with a huge number
            return int(raw)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget_bytes(configured: int, fraction: float) -> int:
    """``configured`` bytes, or (0) ``fraction`` of the memory limit, at least 64 MiB."""
    return configured or max(64 * 1024 * 1024, int(memory_limit_bytes() * fraction))


def release_free_memory() -> bool:
    """glibc's ``malloc_trim(0)``: return the free memory of every arena to the system (not only
    the top of the heap). False where there is no glibc (musl, macOS): nothing to do there."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


def fix_mmap_threshold(nbytes: int) -> bool:
    """glibc's ``mallopt(M_MMAP_THRESHOLD, nbytes)``: every allocation of at least ``nbytes`` gets
    pages of its own, given back to the system when freed. By default glibc raises this threshold
    after each such free (up to 32 MiB), so that the next big buffers come from its arenas, where
    freed memory stays: measured on a worker, 16 huge PNGs left it 4.8 GB larger for good; with a
    fixed 128 KiB threshold, 7 % larger. False where there is no glibc."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


_M_MMAP_THRESHOLD = -3  # malloc.h
_libc_handle: object | None = None


def _libc():  # type: ignore[no-untyped-def]
    global _libc_handle
    if _libc_handle is None:
        import ctypes
        import ctypes.util

        try:
            handle = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            handle.malloc_trim.argtypes = [ctypes.c_size_t]
            handle.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _libc_handle = handle
        except (OSError, AttributeError):
            _libc_handle = False
    return _libc_handle or None
