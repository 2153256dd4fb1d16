"""A raw socket server on loopback (or a Unix socket) for the HTTP/1.1 cases Hypercorn will not
play: stalls at a chosen point, bodies ended by closing the connection, interim responses, and a
listener whose accept queue is full (a connect that hangs).

Each accepted connection runs ``handler(sock)`` on its own thread. Handlers read the request
head with `read_head`. Everything is closed by `RawServer.close` (bounded waits).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from tests.support.server import LOOPBACK

__all__ = ["RawServer", "full_listener", "read_head"]

_JOIN_TIMEOUT = 5.0


def read_head(sock: socket.socket, limit: int = 65536) -> bytes:
    """Read up to the end of a request head; returns what was read (b"" if the peer left)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


class RawServer:
    """``RawServer(handler)``: TCP on 127.0.0.1 (``url``), or ``RawServer(handler, path=...)`` on
    a Unix socket. Usable as a context manager."""

    def __init__(self, handler: Callable[[socket.socket], None], path: str | None = None) -> None:
        self._handler = handler
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        if path is None:
            self._listener = socket.socket()
            self._listener.bind((LOOPBACK, 0))
        else:
            self._listener = socket.socket(socket.AF_UNIX)
            self._listener.bind(path)
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1] if path is None else 0
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(10.0)
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self._handler(conn)

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(_JOIN_TIMEOUT)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(_JOIN_TIMEOUT)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class full_listener:
    """A listening socket whose accept queue is full: a connect to ``port`` hangs in SYN."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._filler = socket.create_connection((LOOPBACK, self.port), timeout=5.0)

    def __enter__(self) -> full_listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._filler.close()
        self._listener.close()
