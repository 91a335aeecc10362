"""Decode + prepare in child processes, so that the per-photo CPU work scales past the GIL.

The worker process holds the model (TensorFlow, a GPU) and runs the batches; with
``PREPARE_PROCESSES=N`` (N > 0) each photo's decode and ``runtime.prepare`` (crop, color, OCR)
run in one of N child processes instead of on the task thread. Without it (0, the default)
nothing here runs and the task thread decodes and prepares, as it always did.

How the data moves (no pickle anywhere: JSON headers and raw bytes):

- Each child is a fresh interpreter, started by fork + exec as multiprocessing's "spawn" does
  (never a fork of a process that runs TensorFlow's threads), with ``-c`` and file
  descriptors: its end of a socket pair and its slot. It opens the model volume and loads
  what ``prepare`` needs and nothing more (``ReferenceRuntime.load(prepare_only=True)``: the
  OCR models and the brand list; TensorFlow is never imported there), one thread of OpenCV
  and, unless the environment says otherwise, of OpenBLAS.
- A job goes to an idle child over the socket with ``multiprocessing.connection``'s framing
  (``send_bytes``): a small JSON header, then the photo's bytes as they came from the image
  store.
- The child decodes (``common.imaging.decode_rgb``, the same call as on a task thread) and
  prepares, writes the model input into its slot of shared memory and answers with a JSON
  header: the array's shape and dtype, the small parts of the result (color, brand), times.
  A slot is an anonymous shared-memory file (``os.memfd_create``) of the size of one model
  input, one per child, created once by the parent and reused for every job (and by the
  child that replaces a lost one). Being anonymous, it cannot outlive the processes that
  map it (unlike a named ``multiprocessing.shared_memory`` segment, which a child that
  attaches by name would also register with a resource tracker of its own, and that
  tracker would remove it when the child exits).
- The parent copies the array out of the slot (150 KB for a 224 x 224 photo) and rebuilds
  the prepared object exactly as ``runtime.prepare`` returns it (a test compares them
  pixel for pixel and field for field); the slot is free again at once.

Failures:

- A photo that does not decode fails its job with decode_rgb's own error (code and message
  sent back in the header); a ``prepare`` that raises fails it with ``InferenceFailed``, as
  on a task thread.
- A child that dies, or does not answer within ``timeout_s`` (it is then killed), is
  replaced in the background, and the call raises ``PrepareUnavailable``: the job goes back
  to the queue, its delivery not counted. The same photo losing a child a second time in
  this process fails its job instead (``InferenceFailed``), so that a photo that crashes
  the decoder cannot circle for ever (on a task thread it would have ended the worker,
  and the delivery limit would have stopped it).
- Decoded pixels stay bounded by the worker's ``DecodeBudget``: the parent reserves what
  ``decode_rgb`` would, estimated from the photo's header, until the child has answered.

``stop`` ends every child (its pipe closed, SIGKILL for one still alive after a grace) and
frees the slots. A child whose parent dies reads EOF on its pipe and exits; it ignores
SIGINT and SIGTERM sent to the whole process group (the parent decides when it ends).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from common import errors
from common.errors import DecodeBusy, InferenceFailed, JobFailure
from common.imaging import decoded_bytes_estimate
from common.membudget import DecodeBudget, DecodeBudgetExceeded, release_free_memory
from common.volume import ModelVolume

logger = logging.getLogger(__name__)

# Photos that lost a child are remembered (by digest) this many at a time.
_SUSPECTS = 256


class PrepareUnavailable(Exception):
    """The pool gave no result for a reason not the photo's own (a child died or hung, the pool
    is stopped): the job should be delivered again."""


class _ChildLost(Exception):
    pass


# --- what goes through the slot and the header, per runtime ----------------------------------


def _put_array(array: np.ndarray, buf: Any) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    if array.nbytes > len(buf):
        raise ValueError(f"a prepared array of {array.nbytes} bytes does not fit the slot of {len(buf)}")
    np.frombuffer(buf, np.uint8, array.nbytes)[:] = array.reshape(-1).view(np.uint8)
    return {"shape": list(array.shape), "dtype": array.dtype.str}


def _take_array(header: dict[str, Any], buf: Any) -> np.ndarray:
    dtype = np.dtype(header["dtype"])
    shape = tuple(int(n) for n in header["shape"])
    return np.frombuffer(buf, dtype, int(np.prod(shape))).reshape(shape).copy()


class _ReferenceCodec:
    """``workers.runtime.reference.Prepared``: the model input in the slot, color and brand in
    the header (JSON keeps Python floats exactly; tuples are rebuilt)."""

    @staticmethod
    def slot_bytes(runtime: Any) -> int:
        return int(runtime.input_size) ** 2 * 3

    @staticmethod
    def encode(prepared: Any, buf: Any) -> dict[str, Any]:
        color, brand = prepared.color, prepared.brand
        return {
            **_put_array(prepared.model_input, buf),
            "color": {"name": color.name, "confidence": color.confidence,
                      "alternatives": [list(a) for a in color.alternatives], "rgb": list(color.rgb)},
            "brand": {"name": brand.name, "confidence": brand.confidence,
                      "alternatives": [list(a) for a in brand.alternatives], "text": list(brand.text)},
        }

    @staticmethod
    def decode(header: dict[str, Any], buf: Any) -> Any:
        from workers.runtime.brand import BrandResult
        from workers.runtime.color import ColorResult
        from workers.runtime.reference import Prepared

        color, brand = header["color"], header["brand"]
        return Prepared(
            model_input=_take_array(header, buf),
            color=ColorResult(name=color["name"], confidence=color["confidence"],
                              alternatives=[(str(n), c) for n, c in color["alternatives"]],
                              rgb=tuple(color["rgb"])),  # type: ignore[arg-type]
            brand=BrandResult(name=brand["name"], confidence=brand["confidence"],
                              alternatives=[(str(n), c) for n, c in brand["alternatives"]],
                              text=list(brand["text"])),
        )


class _ArrayCodec:
    """``HugeRuntime``: the prepared object is the model input itself."""

    @staticmethod
    def slot_bytes(runtime: Any) -> int:
        return int(runtime.input_size) ** 2 * 3

    @staticmethod
    def encode(prepared: Any, buf: Any) -> dict[str, Any]:
        return _put_array(prepared, buf)

    @staticmethod
    def decode(header: dict[str, Any], buf: Any) -> Any:
        return _take_array(header, buf)


class _NullCodec:
    """``NullRuntime``: a tuple of three ints, all in the header."""

    @staticmethod
    def slot_bytes(runtime: Any) -> int:
        return 1

    @staticmethod
    def encode(prepared: Any, buf: Any) -> dict[str, Any]:
        return {"value": [int(x) for x in prepared]}

    @staticmethod
    def decode(header: dict[str, Any], buf: Any) -> Any:
        return tuple(header["value"])


_CODECS: dict[str, Any] = {"reference": _ReferenceCodec, "huge": _ArrayCodec, "null": _NullCodec}


def _codec(volume: ModelVolume) -> Any:
    kind = volume.manifest["runtime"]
    if kind not in _CODECS:
        raise ValueError(f"PREPARE_PROCESSES: the {kind!r} runtime cannot prepare in processes")
    return _CODECS[kind]


def load_prepare_side(runtime: Any) -> None:
    """Load what ``runtime.prepare`` needs, and nothing else (no TensorFlow)."""
    if runtime.volume.manifest["runtime"] == "reference":
        runtime.load(prepare_only=True)
    # huge, null: prepare needs nothing loaded


# --- the budget ------------------------------------------------------------------------------


@contextmanager
def _reserved(budget: DecodeBudget | None, nbytes: int, wait_s: float) -> Iterator[None]:
    """As ``common.imaging`` holds a decode's bytes: ``DecodeBusy`` when there is no room in time."""
    if budget is None or nbytes <= 0:
        yield
        return
    try:
        with budget.reserve(nbytes, timeout=wait_s):
            yield
    except DecodeBudgetExceeded as exc:
        raise DecodeBusy("Too many large images are being decoded right now; retry shortly.") from exc


# --- the child -------------------------------------------------------------------------------

_CHILD_CODE = "import sys; from workers.preparepool import child_main; child_main(*sys.argv[1:])"


def child_main(conn_fd: str, slot_fd: str, slot_bytes: str, volume_path: str) -> None:
    """A child's life: load the prepare side, say ready, then serve jobs until the pipe closes
    (the parent stopped it, or died)."""
    # The parent decides when children end: not a Ctrl-C or a SIGTERM sent to the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(conn_fd))
    try:
        import cv2

        from workers.runtime import runtime_for

        cv2.setNumThreads(1)  # one core per child: the processes are the parallelism
        slot = mmap.mmap(int(slot_fd), int(slot_bytes))
        os.close(int(slot_fd))
        runtime = runtime_for(ModelVolume.open(Path(volume_path)))
        load_prepare_side(runtime)
        codec = _codec(runtime.volume)
    except Exception as exc:
        with suppress(OSError):
            conn.send_bytes(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}).encode())
        return
    conn.send_bytes(json.dumps({
        "ready": True, "pid": os.getpid(),
        "heavy_modules": sorted(m for m in ("tensorflow", "jax", "torch") if m in sys.modules),
    }).encode())
    while True:
        try:
            header = json.loads(conn.recv_bytes())
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        reply = _serve(runtime, codec, slot, header, data)
        try:
            conn.send_bytes(json.dumps(reply).encode())
        except OSError:
            return


def _serve(runtime: Any, codec: Any, slot: mmap.mmap, header: dict[str, Any], data: bytes) -> dict[str, Any]:
    from common.imaging import decode_rgb

    reply: dict[str, Any] = {"id": header["id"]}
    started = time.perf_counter()
    try:
        rgb = decode_rgb(data, max_side=runtime.decode_max_side)
    except JobFailure as exc:
        return {**reply, "failure": type(exc).__name__, "code": exc.code, "message": exc.message}
    decoded = time.perf_counter()
    try:
        reply.update(codec.encode(runtime.prepare(rgb), slot))
    except Exception as exc:
        return {**reply, "prepare_error": type(exc).__name__, "traceback": traceback.format_exc(limit=8)}
    finally:
        del rgb
        if header.get("trim"):
            release_free_memory()
    reply.update(decode_s=decoded - started, prepare_s=time.perf_counter() - decoded)
    return reply


# --- the parent ------------------------------------------------------------------------------


def _warm_up_photo() -> bytes:
    """A synthetic photo, as the worker warms its model up with (``workers.process``)."""
    from PIL import Image

    buffer = io.BytesIO()
    rgb = np.random.default_rng(0).integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _child_env() -> dict[str, str]:
    """The children's environment: this one, the project importable, and one BLAS thread each
    (the color step's matrix product otherwise wakes a second one, which spins) unless set."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # (nothing the worker loads uses OpenMP)
    return env


class _Child:
    """One child process, its pipe, and its slot (a shared-memory file of its own, kept when the
    process is replaced)."""

    def __init__(self, index: int, slot_bytes: int) -> None:
        self.index = index
        self.slot_bytes = slot_bytes
        self.slot_fd = os.memfd_create(f"prepare-slot-{index}", os.MFD_CLOEXEC)
        os.ftruncate(self.slot_fd, slot_bytes)
        self.slot = mmap.mmap(self.slot_fd, slot_bytes)
        self.popen: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.pid = 0
        self._ending = threading.Lock()

    def start(self, volume_path: str, env: dict[str, str], send_timeout_s: float) -> None:
        """A fresh interpreter (fork + exec, as multiprocessing's "spawn" starts one: nothing of
        this process's threads or TensorFlow carries over) given its end of a socket pair and
        the slot, as inherited file descriptors."""
        ours, theirs = socket.socketpair()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, str(theirs.fileno()), str(self.slot_fd), str(self.slot_bytes),
                 volume_path],
                pass_fds=(theirs.fileno(), self.slot_fd), env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child's death then closes the pipe: the parent reads EOF
        whole = int(send_timeout_s)
        # A write that makes no progress this long fails: a stopped child cannot hold a task
        # thread in send_bytes.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", whole, int((send_timeout_s - whole) * 1_000_000)))
        self.popen, self.conn, self.pid = popen, Connection(ours.detach()), popen.pid

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        popen, conn = self.popen, self.conn
        if popen is None or conn is None:
            raise RuntimeError("the prepare process was stopped")
        if not wait([conn], timeout_s):
            raise RuntimeError(f"prepare process {self.pid} not ready within {timeout_s:g} s")
        try:
            hello = json.loads(conn.recv_bytes())
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"prepare process {self.pid} exited while loading ({popen.poll()})") from exc
        if not hello.get("ready"):
            raise RuntimeError(f"prepare process {self.pid} could not load: {hello.get('error')}")
        return hello

    def call(self, header: dict[str, Any], data: bytes, timeout_s: float) -> dict[str, Any]:
        """One job; only the thread that holds this child calls it."""
        conn = self.conn
        if conn is None:
            raise _ChildLost("is stopped")
        try:
            conn.send_bytes(json.dumps(header).encode())
            conn.send_bytes(data)
            if not wait([conn], timeout_s):
                raise _ChildLost(f"did not answer within {timeout_s:g} s")
            reply = json.loads(conn.recv_bytes())
        except BlockingIOError as exc:
            raise _ChildLost(f"took no input for {timeout_s:g} s") from exc
        except (EOFError, OSError) as exc:
            raise _ChildLost(f"died ({type(exc).__name__})") from exc
        if reply.get("id") != header["id"]:
            raise _ChildLost("answered another job")
        return reply

    def close_pipe(self) -> None:
        with self._ending:
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.close()

    def kill(self) -> None:
        """SIGKILL the process, if any: the thread waiting on it reads EOF."""
        popen = self.popen
        if popen is not None:
            with suppress(OSError):
                popen.kill()

    def end(self, *, kill: bool, timeout_s: float = 5.0) -> None:
        """Close the pipe (an idle child exits on it); SIGKILL the process when ``kill``, or when
        it is still alive after ``timeout_s``; reap it."""
        with self._ending:
            popen, conn = self.popen, self.conn
            self.popen = self.conn = None
            if conn is not None:
                conn.close()
            if popen is None:
                return
            if kill:
                with suppress(OSError):
                    popen.kill()
            try:
                popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

    def free(self) -> None:
        with suppress(BufferError):
            self.slot.close()
        with suppress(OSError):
            os.close(self.slot_fd)


class PreparePool:
    """``processes`` children that decode and prepare for ``runtime`` (whose volume they open
    themselves). ``prepare`` is called from any number of threads; each call takes an idle child,
    waiting up to ``timeout_s`` for one."""

    def __init__(self, runtime: Any, processes: int, *, timeout_s: float = 60.0,
                 start_timeout_s: float = 120.0) -> None:
        if processes < 1:
            raise ValueError("a prepare pool needs at least one process")
        self.runtime = runtime
        self.processes = processes
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._codec = _codec(runtime.volume)
        self._volume_path = str(runtime.volume.path)
        self._env = _child_env()
        self._cond = threading.Condition()
        self._children: list[_Child] = []
        self._idle: list[_Child] = []
        self._busy = 0
        self._closed = False
        self._restarts: list[threading.Thread] = []
        self._suspects: OrderedDict[bytes, int] = OrderedDict()
        self._ids = itertools.count(1)
        self._warm_up = b""
        self.replaced = 0

    # --- life --------------------------------------------------------------------------------

    def start(self) -> PreparePool:
        """Start every child and wait until each has loaded (in parallel)."""
        started = time.perf_counter()
        size = self._codec.slot_bytes(self.runtime)
        try:
            for index in range(self.processes):
                child = _Child(index, max(1, size))
                self._children.append(child)
                child.start(self._volume_path, self._env, self.timeout_s)
            self._warm_up = _warm_up_photo()
            for child in self._children:
                hello = child.wait_ready(self.start_timeout_s)
                if hello.get("heavy_modules"):
                    logger.warning("a prepare process imported %s", ", ".join(hello["heavy_modules"]))
                # One photo each, so that no job pays for the first run of the OCR sessions.
                child.call({"id": next(self._ids)}, self._warm_up, self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._idle = list(self._children)
        logger.info("prepare processes ready", extra={
            "processes": self.processes, "pids": self.pids(), "slot_bytes": size,
            "start_s": round(time.perf_counter() - started, 3)})
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """End every child and free the slots. Idle children exit when their pipe closes (all
        closed at once); a busy one (a job still running: not on a drained worker) is killed,
        and its call raises ``PrepareUnavailable``."""
        with self._cond:
            if self._closed and not self._children:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for child in idle:
            child.close_pipe()
        for child in idle:
            child.end(kill=False, timeout_s=timeout_s)
        for child in self._children:
            if child not in idle:
                child.kill()  # busy (its call ends it), or being restarted
        with self._cond:  # the calls still running end, or finish copying out of their slots
            self._cond.wait_for(lambda: self._busy == 0, timeout_s)
            busy = self._busy
        for thread in self._restarts:
            thread.join(timeout_s + 1)
        for child in self._children:
            child.end(kill=True, timeout_s=timeout_s)
            if not busy:  # else the slots go with this process
                child.free()
        self._children = []

    def __enter__(self) -> PreparePool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pids(self) -> list[int]:
        return [child.pid for child in self._children if child.popen is not None]

    # --- a job -------------------------------------------------------------------------------

    def prepare(self, data: bytes, *, budget: DecodeBudget | None = None,
                budget_wait: float = 0.0) -> tuple[Any, float]:
        """``runtime.prepare(decode_rgb(data, ...))`` in a child: (the prepared object, the
        seconds the decode took there). Raises what the decode raises (``ImageDecodeFailed``),
        ``InferenceFailed`` when prepare raised, ``DecodeBusy`` when the budget has no room
        within ``budget_wait``, and ``PrepareUnavailable`` when no child gave an answer."""
        nbytes = decoded_bytes_estimate(data, self.runtime.decode_max_side)
        trim = budget is not None and budget.trim_after_bytes is not None and nbytes >= budget.trim_after_bytes
        child = self._acquire()
        try:
            with _reserved(budget, nbytes, budget_wait):
                reply = child.call({"id": next(self._ids), "trim": trim}, data, self.timeout_s)
        except _ChildLost as exc:
            self._replace(child)
            raise self._lost(child, data, str(exc)) from exc
        except BaseException:
            self._release(child)
            raise
        try:
            return self._result(reply, child)
        finally:
            self._release(child)

    def _acquire(self) -> _Child:
        with self._cond:
            deadline = time.monotonic() + self.timeout_s
            while not self._idle:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise PrepareUnavailable("the prepare pool is stopped" if self._closed
                                             else f"no prepare process free within {self.timeout_s:g} s")
                self._cond.wait(left)
            if self._closed:
                raise PrepareUnavailable("the prepare pool is stopped")
            self._busy += 1
            return self._idle.pop()

    def _release(self, child: _Child | None) -> None:
        with self._cond:
            self._busy -= 1
            if child is not None and not self._closed:
                self._idle.append(child)
            self._cond.notify_all()

    def _result(self, reply: dict[str, Any], child: _Child) -> tuple[Any, float]:
        if "failure" in reply:
            failure = getattr(errors, str(reply["failure"]), None)
            if not (isinstance(failure, type) and issubclass(failure, JobFailure)):
                failure = errors.ImageDecodeFailed
            raise failure(reply["message"])
        if "prepare_error" in reply:
            logger.error("prepare failed in process %s:\n%s", child.pid, reply["traceback"])
            raise InferenceFailed(f"Preparing the image failed: {reply['prepare_error']}")
        return self._codec.decode(reply, child.slot), float(reply["decode_s"])

    def _lost(self, child: _Child, data: bytes, why: str) -> Exception:
        digest = hashlib.blake2b(data, digest_size=16).digest()
        with self._cond:
            times = self._suspects.pop(digest, 0) + 1
            self._suspects[digest] = times
            while len(self._suspects) > _SUSPECTS:
                self._suspects.popitem(last=False)
        logger.warning("prepare process %s %s; replacing it", child.pid, why)
        if times >= 2:
            return InferenceFailed("Preparing the image failed: its process was lost twice on this photo")
        return PrepareUnavailable(f"prepare process {child.pid} {why}")

    def _replace(self, child: _Child) -> None:
        """Kill the child, and start a new one in its place (with its slot) in the background;
        the call that lost it returns at once."""
        child.end(kill=True)
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()
            if self._closed:
                return
            thread = threading.Thread(target=self._restart, args=(child,), name=f"prepare-restart-{child.index}",
                                      daemon=True)
            self._restarts = [t for t in self._restarts if t.is_alive()] + [thread]
        thread.start()

    def _restart(self, child: _Child) -> None:
        pause = 0.5
        while True:
            with self._cond:
                if self._closed:
                    return
                try:
                    child.start(self._volume_path, self._env, self.timeout_s)
                except Exception as exc:
                    logger.warning("could not start a prepare process: %s", exc)
            try:
                child.wait_ready(self.start_timeout_s)
                child.call({"id": next(self._ids)}, self._warm_up, self.start_timeout_s)
                break
            except Exception as exc:
                logger.warning("a new prepare process failed: %s", exc)
            child.end(kill=True)
            time.sleep(pause)
            pause = min(pause * 2, 30.0)
        with self._cond:
            if not self._closed:
                self.replaced += 1
                self._idle.append(child)
                self._cond.notify_all()
                logger.info("prepare process replaced", extra={"pid": child.pid})
                return
        child.end(kill=True)
