"""Gunicorn's threaded worker, made to drop clients that send their request too slowly.

Gunicorn's ``gthread`` worker gives a connection a thread once its first bytes arrive, and the
thread then reads the request line, the headers and (through Django) the body with blocking
reads that have no time limit: 64 clients each sending a byte every few seconds hold 64 threads
for as long as they like, ``/healthz`` included. Here every read of a request has a deadline
that follows the bytes received: a request may take ``REQUEST_READ_GRACE_SECONDS`` (10 s) plus
one second per ``REQUEST_READ_MIN_BYTES_PER_SECOND`` (1024) bytes it has sent so far. A phone
uploading a 3 MB photo at 100 KB/s is far inside it; a client trickling bytes is cut off after
about the grace, its thread freed: its reads then see the end of the stream, so a slow header
ends the connection quietly and a slow body is a short body to Django.
The deadline starts again with each request of a kept-alive connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from typing import Any

from gunicorn import glogging
from gunicorn.workers.gthread import ThreadWorker

from recognition_api.threadqueue import QUEUE

logger = logging.getLogger("gunicorn.error")
GRACE_SECONDS = float(os.environ.get("REQUEST_READ_GRACE_SECONDS", "10"))
MIN_BYTES_PER_SECOND = float(os.environ.get("REQUEST_READ_MIN_BYTES_PER_SECOND", "1024"))


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


class DeadlineSocket:
    """A client socket whose reads end at the request's deadline; everything else is the socket's."""

    def __init__(self, sock: socket.socket, *, grace: float, min_rate: float) -> None:
        self._sock = sock
        self._grace = grace
        self._min_rate = min_rate
        self.start_request()

    def start_request(self) -> None:
        self._started = time.monotonic()
        self._received = 0

    def _remaining(self) -> float:
        allowed = self._grace + self._received / self._min_rate
        return self._started + allowed - time.monotonic()

    def _read(self, call: Any, *args: Any) -> Any:
        """``call``'s result, or None when the deadline passed first."""
        left = self._remaining()
        if left <= 0:
            return None
        previous = self._sock.gettimeout()
        self._sock.settimeout(left if previous is None else min(previous, left))
        try:
            result = call(*args)
        except TimeoutError:
            if previous is not None:  # a timeout the caller set, not ours
                raise
            return None
        finally:
            self._sock.settimeout(previous)
        self._received += result if isinstance(result, int) else len(result)
        return result

    def _cut_off(self) -> None:
        """Read as the end of the stream: Gunicorn closes the connection quietly (a slow header),
        or the app finds the body short (a slow body); the thread is free again."""
        logger.warning("client %s sent its request too slowly (%d bytes in %.1f s; the minimum is %g bytes/s "
                       "after %g s): connection closed", _peer(self._sock), self._received,
                       time.monotonic() - self._started, self._min_rate, self._grace)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD)

    def recv(self, size: int, *args: Any) -> bytes:
        data = self._read(self._sock.recv, size, *args)
        if data is None:
            self._cut_off()
            return b""
        return data

    def recv_into(self, buffer: Any, *args: Any) -> int:
        count = self._read(self._sock.recv_into, buffer, *args)
        if count is None:
            self._cut_off()
            return 0
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class DeadlineThreadWorker(ThreadWorker):
    # What the thread pool is given, starts and finishes is told to recognition_api/threadqueue.py,
    # so that a request that only waits for its job can make way for a queued one.
    def init_process(self) -> None:
        QUEUE.threads = self.cfg.threads
        super().init_process()

    def enqueue_req(self, conn):  # type: ignore[no-untyped-def]
        QUEUE.added(id(conn), conn.sock.fileno())
        super().enqueue_req(conn)

    def handle(self, conn):  # type: ignore[no-untyped-def]
        QUEUE.started(id(conn))
        try:
            sock = conn.sock
            if not isinstance(sock, DeadlineSocket):
                # Before the parser is made (conn.init), so that it reads through the deadline too.
                conn.sock = sock = DeadlineSocket(sock, grace=GRACE_SECONDS, min_rate=MIN_BYTES_PER_SECOND)
            sock.start_request()
            return super().handle(conn)
        finally:
            QUEUE.finished()


class JsonAccessLogger(glogging.Logger):
    """Gunicorn's access log as one JSON object per request, built with ``json.dumps``: a path with
    quotes, backslashes or (decoded) newlines cannot break the line or forge another."""

    # Probes (Kubernetes every few seconds, scripts/up's start-up polling) are not access-logged
    # unless API_ACCESS_LOG_PROBES=1: a line per probe buries the requests that matter.
    PROBES = frozenset({"/healthz", "/readyz"})

    def _compute_access_log_enabled(self) -> bool:
        # Gunicorn counts a logging config (ours: gunicorn.conf.py's logconfig_dict) as turning the
        # access log on, so API_ACCESS_LOG=0 (accesslog None) still logged, and built, every line.
        return self.cfg.accesslog is not None

    def access(self, resp, req, environ, request_time) -> None:  # type: ignore[no-untyped-def]
        if not self.access_log_enabled:
            return
        if req.path in self.PROBES and os.environ.get("API_ACCESS_LOG_PROBES", "0") != "1":
            return
        atoms = self.atoms(resp, req, environ, request_time)
        status = str(atoms.get("s", "-")).split(" ", 1)[0]
        record = {
            "time": atoms.get("t"),
            "logger": "access",
            "method": atoms.get("m"),
            "path": atoms.get("U"),
            "status": int(status) if status.isdigit() else status,
            "bytes": atoms.get("B"),
            "duration_ms": atoms.get("M"),
            "request_id": atoms.get("{x-request-id}o", "-"),
        }
        try:
            self.access_log.info("%s", json.dumps(record, ensure_ascii=True, default=str))
        except Exception:
            self.error("access log: %s", record)
