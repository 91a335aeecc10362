"""Small files that decode to huge bitmaps, sent at once to a running stack, and what they cost
the API's and the worker's memory (resident set of each process tree, from /proc).

Shared by the integration test (``tests/integration/test_huge_bitmaps.py``) and the benchmark
(``python -m bench.memory``).
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from harness.processes import Process
from harness.stack import Stack


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (0 for a process that is gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total


def solid_png(side: int) -> bytes:
    """A one-color ``side`` x ``side`` PNG: a few hundred KB that decode to side² x 3 bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class BitmapBurst:
    uploads: int
    upload_bytes: int
    decoded_bytes: int
    answers: Counter
    api_before: int
    api_peak: int
    api_after: int
    worker_before: int
    worker_peak: int
    worker_after: int

    @property
    def api_growth(self) -> int:
        return self.api_peak - self.api_before

    @property
    def worker_left(self) -> float:
        """The worker's resident memory after the burst, as a share of what it was before."""
        return self.worker_after / self.worker_before


class _Sampler(threading.Thread):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peaks = [tree_rss(pid) for pid in pids]
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self.peaks = [max(peak, tree_rss(pid)) for peak, pid in zip(self.peaks, self.pids, strict=True)]

    def stop(self) -> list[int]:
        self._stop_event.set()
        self.join()
        return self.peaks


def bitmap_burst(stack: Stack, api: Process, worker: Process, *, uploads: int = 16, side: int = 7000,
                 settle_seconds: float = 5.0) -> BitmapBurst:
    """``uploads`` concurrent posts of one solid ``side``² PNG, each waiting for its result. First as
    many ordinary photos at once, so that "before" is a worker that has served a full batch."""
    photo = solid_png(side)

    def post(data: bytes) -> str:
        with stack.client(timeout=120) as client:
            response = client.post("/recognize?wait=30", files={"image": ("photo.png", data, "image/png")})
            body = response.json()
            return f"{response.status_code} {body.get('status') or (body.get('error') or {}).get('code')}"

    pids = [api.popen.pid, worker.popen.pid]
    api_start = tree_rss(pids[0])
    with ThreadPoolExecutor(uploads) as pool:
        list(pool.map(post, [solid_png(640)] * uploads))
    before = [api_start, tree_rss(pids[1])]  # the API from before even the ordinary photos
    sampler = _Sampler(pids)
    sampler.start()
    with ThreadPoolExecutor(uploads) as pool:
        answers = Counter(pool.map(post, [photo] * uploads))
    time.sleep(settle_seconds)
    peaks = sampler.stop()
    after = [tree_rss(pid) for pid in pids]
    return BitmapBurst(uploads, len(photo), side * side * 3, answers, before[0], peaks[0], after[0],
                       before[1], peaks[1], after[1])
