"""Hypercorn on a background thread, on 127.0.0.1: the demo's upstreams (and the test suite's).

`ServerThread` serves an ASGI app with Hypercorn's asyncio worker on a thread of its own, with
its own event loop, so the caller's event loop (asyncio or trio) stays free for the clients. It
speaks plain HTTP/1.1, or, given a trustme CA, TLS with ALPN ``["h2", "http/1.1"]``. Every HTTP
scope carries `ABORT_EXTENSION`, with which an app cuts its connection to fake a crash.

Imports Hypercorn and trustme: the ``demo`` extra. Nothing here talks to anything but the
loopback interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
import weakref
from functools import partial
from typing import Any, ClassVar

import trustme
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.logging import Logger as HypercornLogger
from hypercorn.utils import wrap_app

from .asgi import ABORT_EXTENSION, ASGIApp, Receive, Scope, Send

__all__ = [
    "ABORT_EXTENSION",
    "LOOPBACK",
    "ServerPair",
    "ServerThread",
    "bound_socket",
    "check_loopback",
    "client_ssl_context",
    "log_loop_exceptions",
]

LOOPBACK = "127.0.0.1"

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 15.0
_POLL_INTERVAL = 0.005


def check_loopback(host: str) -> None:
    """Raise `ValueError` unless ``host`` is on the loopback interface."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"test servers only talk to the loopback interface, not {host!r}")


def bound_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on ``port`` (0: OS-chosen), not listening."""
    # proto=IPPROTO_TCP: accepted sockets inherit it, and asyncio only turns
    # on TCP_NODELAY for those (else Nagle + delayed ACKs add ~40 ms a reply).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
    except BaseException:
        sock.close()
        raise
    return sock


def client_ssl_context(ca: trustme.CA) -> ssl.SSLContext:
    """A default client SSL context that also trusts ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def log_loop_exceptions(loop: asyncio.AbstractEventLoop, logger: logging.Logger) -> None:
    """Send what ``loop`` would print about unhandled errors to ``logger`` at DEBUG level."""
    loop.set_exception_handler(partial(_log_loop_exception, logger))


def _log_loop_exception(
    logger: logging.Logger, loop: asyncio.AbstractEventLoop, context: dict[str, Any]
) -> None:
    logger.debug(
        "event loop: %s",
        context.get("message", "unhandled error"),
        exc_info=context.get("exception"),
    )


def _is_listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def _debug_logger_class(target: logging.Logger) -> type[HypercornLogger]:
    """A Hypercorn logger class sending everything to ``target`` at DEBUG level."""

    class DebugLogger(HypercornLogger):
        async def access(self, request: Any, response: Any, request_time: float) -> None:
            return None

        async def critical(self, message: str, *args: Any, **kwargs: Any) -> None:
            target.debug(message, *args, **kwargs)

        async def error(self, message: str, *args: Any, **kwargs: Any) -> None:
            target.debug(message, *args, **kwargs)

        async def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
            target.debug(message, *args, **kwargs)

        async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
            target.debug(message, *args, **kwargs)

        async def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
            target.debug(message, *args, **kwargs)

        async def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("exc_info", True)
            target.debug(message, *args, **kwargs)

        async def log(self, level: int, message: str, *args: Any, **kwargs: Any) -> None:
            target.debug(message, *args, **kwargs)

    return DebugLogger


class _TrackingSocket(socket.socket):
    """Listening socket remembering each accepted connection by peer address.

    asyncio accepts through ``sock.accept()`` of the socket handed to
    ``create_server``, so this sees every connection Hypercorn serves.
    """

    def __init__(self) -> None:
        # IPPROTO_TCP: see bound_socket().
        super().__init__(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.connections: weakref.WeakValueDictionary[tuple[str, int], socket.socket] = (
            weakref.WeakValueDictionary()
        )

    def accept(self) -> tuple[socket.socket, Any]:
        conn, address = super().accept()
        self.connections[(address[0], address[1])] = conn
        return conn, address


def _abort_connection(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # Already gone.
        conn.shutdown(socket.SHUT_RDWR)


class _AbortExtensionApp:
    """Adds :data:`ABORT_EXTENSION` to HTTP scopes, then calls the real app."""

    def __init__(self, app: ASGIApp, listener: _TrackingSocket) -> None:
        self._app = app
        self._listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client:
            conn = self._listener.connections.get((client[0], client[1]))
            if conn is not None:
                scope = dict(scope)
                extensions = dict(scope.get("extensions") or {})
                extensions[ABORT_EXTENSION] = {"abort": lambda: _abort_connection(conn)}
                scope["extensions"] = extensions
        await self._app(scope, receive, send)


class ServerThread:
    """Hypercorn (asyncio worker) serving ``app`` on 127.0.0.1 in a thread.

    Plain HTTP/1.1 by default; with ``ca`` it serves TLS with ALPN
    ``["h2", "http/1.1"]`` and a certificate issued by ``ca`` for
    ``127.0.0.1`` and ``localhost``. ``port`` 0 (the default) lets the OS
    choose one. Extra keyword arguments override
    :class:`hypercorn.config.Config` attributes (``keep_alive_max_requests``,
    ``keep_alive_timeout``, ``h2_max_concurrent_streams``, ...).

    The socket is bound at construction (so :attr:`port` and :attr:`url` are
    known at once, and a port in use raises `OSError` there); :meth:`start`
    returns once Hypercorn accepts connections and :meth:`stop` shuts it down
    gracefully and joins the thread. Usable as a context manager.
    """

    #: Where the server's own messages go, all at DEBUG level.
    logger: ClassVar[logging.Logger] = logging.getLogger("httpx_resilience.demo.server")

    def __init__(
        self, app: ASGIApp, *, ca: trustme.CA | None = None, port: int = 0, **config: Any
    ) -> None:
        self._app = app
        self._ca = ca
        self._config = Config()
        self._config.accesslog = None
        self._config.errorlog = None
        self._config.logger_class = _debug_logger_class(self.logger)
        self._config.graceful_timeout = 1.0
        self._config.startup_timeout = 5.0
        self._config.shutdown_timeout = 5.0
        for name, value in config.items():
            if name.startswith("_") or not hasattr(Config, name):
                raise TypeError(f"unknown Hypercorn config option {name!r}")
            setattr(self._config, name, value)
        self._sock = _TrackingSocket()
        try:
            self._sock.bind((LOOPBACK, port))
        except BaseException:
            self._sock.close()
            raise
        self._port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._stopped = False

    # -- properties ---------------------------------------------------------

    @property
    def app(self) -> ASGIApp:
        return self._app

    @property
    def port(self) -> int:
        return self._port

    @property
    def tls(self) -> bool:
        return self._ca is not None

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. ``http://127.0.0.1:40123``."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{LOOPBACK}:{self._port}"

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> ServerThread:
        """Start serving; return once the server accepts connections."""
        with self._lock:
            if self._thread is not None or self._stopped:
                raise RuntimeError("a ServerThread can only be started once")
            self._thread = threading.Thread(
                target=self._run, name=f"hypercorn-{self._port}", daemon=True
            )
        with tempfile.TemporaryDirectory(prefix="test-server-") as cert_dir:
            if self._ca is not None:
                cert_path = os.path.join(cert_dir, "server.pem")
                leaf = self._ca.issue_cert(LOOPBACK, "localhost")
                leaf.private_key_and_cert_chain_pem.write_to_path(cert_path)
                self._config.certfile = cert_path
                self._config.keyfile = cert_path
            self._thread.start()
            # Hypercorn reads the certificate before it starts listening, so
            # the directory may go once the socket listens.
            deadline = time.monotonic() + _START_TIMEOUT
            while not _is_listening(self._sock):
                if not self._thread.is_alive():
                    raise RuntimeError(f"server on {self.url} failed to start") from self._error
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server on {self.url} did not start in time")
                time.sleep(_POLL_INTERVAL)
        return self

    def stop(self) -> None:
        """Shut down gracefully and join the thread (bounded); idempotent."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        try:
            if thread is None:
                return
            loop, shutdown = self._loop, self._shutdown
            if loop is not None and shutdown is not None:
                with contextlib.suppress(RuntimeError):  # The loop has already finished.
                    loop.call_soon_threadsafe(shutdown.set)
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not stop in time")
        finally:
            self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the server thread --------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # Reported by start(); never kill the thread noisily.
            self.logger.debug("server on %s crashed", self.url, exc_info=True)
            self._error = exc

    async def _serve(self) -> None:
        self._shutdown = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        log_loop_exceptions(self._loop, self.logger)
        if self._stopped:  # stop() raced with start(): don't serve at all.
            return
        sockets = Sockets(
            secure_sockets=[self._sock] if self.tls else [],
            insecure_sockets=[] if self.tls else [self._sock],
            quic_sockets=[],
        )
        app = wrap_app(
            _AbortExtensionApp(self._app, self._sock),  # type: ignore[arg-type]
            self._config.wsgi_max_body_size,
            "asgi",
        )
        await worker_serve(app, self._config, sockets=sockets, shutdown_trigger=self._shutdown.wait)


#: The demo's servers keep connections open (Hypercorn's default closes one after 1,000
#: requests, sending GOAWAY on HTTP/2, which would add failures of its own to every scenario).
_LONG_LIVED: dict[str, Any] = {"keep_alive_max_requests": 1_000_000, "keep_alive_timeout": 60}


class ServerPair:
    """One ASGI app served twice on 127.0.0.1: plain HTTP/1.1 (`h1`) and HTTP/2 over TLS
    (`h2`, with a certificate from a throwaway trustme CA that `ssl_context` trusts).

    ``port`` 0 (the default) lets the OS choose both ports; otherwise `h1` binds ``port`` and
    `h2` ``port + 1``. An `OSError` for a port that cannot be bound names it as its
    ``filename`` (``"127.0.0.1:8080"``). A context manager: entering
    starts both servers, leaving stops them.
    """

    def __init__(self, app: ASGIApp, *, port: int = 0) -> None:
        self.ca = trustme.CA()
        self.ssl_context = client_ssl_context(self.ca)
        self.h1 = _bind(app, None, port)
        try:
            self.h2 = _bind(app, self.ca, port + 1 if port else 0)
        except BaseException:
            self.h1.stop()
            raise

    def start(self) -> ServerPair:
        """Start both servers; return once both accept connections (stopped again if one
        fails to start)."""
        try:
            self.h1.start()
            self.h2.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> ServerPair:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop both servers; idempotent."""
        try:
            self.h1.stop()
        finally:
            self.h2.stop()


def _bind(app: ASGIApp, ca: trustme.CA | None, port: int) -> ServerThread:
    try:
        return ServerThread(app, ca=ca, port=port, **_LONG_LIVED)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, f"{LOOPBACK}:{port}") from exc
