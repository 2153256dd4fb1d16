"""Loopback test servers for httpx_resilience.

Three pieces, all bound to 127.0.0.1 on ports chosen by the OS:

* :class:`FaultApp` -- an ASGI app with in-memory, per-key state that tests use
  to script faults (flaky statuses, ``Retry-After`` values, slow answers,
  bodies cut short) and to count how often a request reached the server.
* :class:`ServerThread` -- runs Hypercorn (asyncio worker) serving an ASGI app on
  a background thread with its own event loop, either as plain HTTP/1.1 or as
  TLS with ALPN ``["h2", "http/1.1"]`` using a certificate from a trustme CA.
* :class:`FaultProxy` -- a TCP forwarder that can refuse connections (bound,
  not listening) and drop responses after the upstream has acted on a request.

Nothing here sends traffic anywhere but the loopback interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

import anyio
import trustme
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.logging import Logger as HypercornLogger
from hypercorn.utils import wrap_app

__all__ = [
    "ABORT_EXTENSION",
    "LOOPBACK",
    "ASGIApp",
    "FaultApp",
    "FaultProxy",
    "Received",
    "ServerInfo",
    "ServerThread",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK = "127.0.0.1"

#: Name of the ASGI scope extension :class:`ServerThread` adds to every HTTP
#: scope: ``scope["extensions"][ABORT_EXTENSION]["abort"]()`` cuts the
#: underlying TCP connection at once (FIN to the client, no more bytes).
ABORT_EXTENSION = "tests.support.abort_connection"

#: Everything the servers and the proxy log goes here at DEBUG level, so test
#: output stays clean (run pytest with ``--log-level=DEBUG`` to see it).
logger = logging.getLogger("tests.support.server")
logger.addHandler(logging.NullHandler())

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 15.0
_POLL_INTERVAL = 0.005


# --------------------------------------------------------------------------
# The ASGI fault app
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as the app saw it, once its body had been read in full."""

    method: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class _ReceivedLog(dict[str, list[Received]]):
    """``log[key]`` is ``[]`` for a key never seen, without storing anything."""

    def __missing__(self, key: str) -> list[Received]:
        return []


class _BadRequest(Exception):
    pass


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    parsed = parse_qs(raw, keep_blank_values=True)
    return {name: values[-1] for name, values in parsed.items()}


def _int_param(params: dict[str, str], name: str, default: int | None) -> int | None:
    if name not in params:
        return default
    try:
        return int(params[name])
    except ValueError:
        raise _BadRequest(f"query parameter {name!r} must be an integer") from None


def _float_param(params: dict[str, str], name: str, default: float) -> float:
    if name not in params:
        return default
    try:
        return float(params[name])
    except ValueError:
        raise _BadRequest(f"query parameter {name!r} must be a number") from None


def _retry_after_header(params: dict[str, str]) -> list[tuple[bytes, bytes]]:
    if "retry_after" not in params:
        return []
    try:
        return [(b"retry-after", params["retry_after"].encode("latin-1"))]
    except UnicodeEncodeError:
        raise _BadRequest("retry_after must be latin-1") from None


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    all_headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode("ascii")),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _respond_json(
    send: Send,
    status: int,
    payload: dict[str, Any],
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(payload).encode("utf-8")
    await _respond(send, status, body, content_type=b"application/json", headers=headers)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` if the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if message["type"] == "http.request":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _sleep_unless_disconnected(receive: Receive, delay: float) -> bool:
    """Sleep ``delay`` seconds; return True early if the client disconnects."""
    with anyio.move_on_after(delay):
        await _wait_for_disconnect(receive)
        return True
    return False


class FaultApp:
    """ASGI app whose answers tests script through the URL.

    Every route is ``/<route>/<key>`` (tests use a fresh uuid as key) and
    accepts any method. Each request whose body was read in full is recorded
    in ``received[key]`` *before* any answer is sent, so a test can tell how
    many times a request reached the server. Routes:

    * ``/ok/{key}`` -- 200, JSON ``{"hits", "method", "http_version"}``.
    * ``/flaky/{key}?fail=N&status=S&retry_after=V`` -- the first N (default 1)
      requests answer S (default 503) with a text body and, if given, V
      verbatim as ``Retry-After``; later ones answer 200 ``{"hits": n}``.
    * ``/status/{key}?code=S&retry_after=V`` -- always S (default 500).
    * ``/slow/{key}?delay=SECONDS&fail=N`` -- the first N (default: all)
      requests wait ``delay`` (default 1.0) seconds, or until the client
      disconnects, then answer 200 ``{"hits": n}``; later ones answer at once.
    * ``/midbody/{key}?fail=N`` -- 200 with ``content-length: 1000``, 10 bytes of
      body, then the connection is cut (see :data:`ABORT_EXTENSION`); after the
      first N requests (default: never) the whole body is sent.
    * ``/big/{key}?size=N`` -- 200 with N (default 65536) bytes of body.
    * ``/drop/{key}?fail=N`` -- the first N (default 1) requests are recorded, then
      their connection is cut before any response byte ("the server may have
      acted"); later ones answer 200 ``{"hits": n}``.
    * anything else -- 404.

    Bad query values answer 400 (and are still recorded).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: dict[str, list[Received]] = _ReceivedLog()
        self._routes: dict[str, Callable[[Scope, Receive, Send, str, int], Awaitable[None]]] = {
            "ok": self._ok,
            "flaky": self._flaky,
            "status": self._status,
            "slow": self._slow,
            "midbody": self._midbody,
            "big": self._big,
            "drop": self._drop,
        }

    def hits(self, key: str) -> int:
        """How many requests for ``key`` reached the app (0 if none)."""
        with self._lock:
            return len(self.received.get(key, ()))

    def _record(self, key: str, received: Received) -> int:
        with self._lock:
            requests = self.received.get(key)
            if requests is None:
                requests = self.received[key] = []
            requests.append(received)
            return len(requests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        parts = scope["path"].split("/")
        route = self._routes.get(parts[1]) if len(parts) == 3 and parts[2] else None
        body = await _read_body(receive)
        if body is None:
            return
        if parts[1] == "users":
            await self._users(scope, send, parts[2:], body)
            return
        if route is None:
            await _respond(send, 404, b"not found\n")
            return
        key = parts[2]
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = bytes(raw_name).decode("latin-1").lower()
            value = bytes(raw_value).decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        hits = self._record(key, Received(method=scope["method"], body=body, headers=headers))
        try:
            await route(scope, receive, send, key, hits)
        except _BadRequest as exc:
            await _respond(send, 400, f"{exc}\n".encode())

    async def _users(self, scope: Scope, send: Send, rest: list[str], body: bytes) -> None:
        """A tiny JSON API for the docs' examples: ``POST /users`` creates (201, echoing the
        JSON with an id), ``GET /users/{id}`` reads (404 for id 0), ``DELETE`` answers 204."""
        method = scope["method"]
        if not rest and method == "POST":
            payload = json.loads(body or b"{}")
            await _respond_json(send, 201, {"id": 1, **payload})
        elif len(rest) == 1 and rest[0].isdigit() and rest[0] != "0":
            if method == "DELETE":
                await _respond(send, 204, b"")
            else:
                await _respond_json(send, 200, {"id": int(rest[0]), "name": "Ada Lovelace"})
        else:
            await _respond_json(send, 404, {"detail": "user not found"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ok(self, scope: Scope, receive: Receive, send: Send, key: str, hits: int) -> None:
        payload = {"hits": hits, "method": scope["method"], "http_version": scope["http_version"]}
        await _respond_json(send, 200, payload)

    async def _flaky(self, scope: Scope, receive: Receive, send: Send, key: str, hits: int) -> None:
        params = _query(scope)
        fail = _int_param(params, "fail", 1)
        status = _int_param(params, "status", 503)
        retry_after = _retry_after_header(params)
        assert fail is not None
        assert status is not None
        if hits <= fail:
            body = f"flaky failure {hits} of {fail}\n".encode()
            await _respond(send, status, body, headers=retry_after)
        else:
            await _respond_json(send, 200, {"hits": hits})

    async def _status(
        self, scope: Scope, receive: Receive, send: Send, key: str, hits: int
    ) -> None:
        params = _query(scope)
        code = _int_param(params, "code", 500)
        assert code is not None
        body = f"status {code} (hit {hits})\n".encode()
        await _respond(send, code, body, headers=_retry_after_header(params))

    async def _slow(self, scope: Scope, receive: Receive, send: Send, key: str, hits: int) -> None:
        params = _query(scope)
        delay = _float_param(params, "delay", 1.0)
        fail = _int_param(params, "fail", None)
        if (fail is None or hits <= fail) and await _sleep_unless_disconnected(receive, delay):
            return  # The client is gone: nobody to answer.
        await _respond_json(send, 200, {"hits": hits})

    async def _midbody(
        self, scope: Scope, receive: Receive, send: Send, key: str, hits: int
    ) -> None:
        fail = _int_param(_query(scope), "fail", None)
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"1000")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if fail is not None and hits > fail:
            await send({"type": "http.response.body", "body": b"0123456789" * 100})
            return
        await send({"type": "http.response.body", "body": b"0123456789", "more_body": True})
        abort = scope.get("extensions", {}).get(ABORT_EXTENSION, {}).get("abort")
        if abort is not None:
            # Let the server flush the 10 bytes (HTTP/2 sends from another task).
            await anyio.sleep(0.02)
            abort()
        # Returning with the body unfinished makes Hypercorn close an HTTP/1.1
        # connection in any case; the abort above also covers HTTP/2.

    async def _drop(self, scope: Scope, receive: Receive, send: Send, key: str, hits: int) -> None:
        fail = _int_param(_query(scope), "fail", 1)
        assert fail is not None
        abort = scope.get("extensions", {}).get(ABORT_EXTENSION, {}).get("abort")
        if hits <= fail and abort is not None:
            abort()
            with anyio.move_on_after(5.0):
                await _wait_for_disconnect(receive)
            return
        await _respond_json(send, 200, {"hits": hits})

    async def _big(self, scope: Scope, receive: Receive, send: Send, key: str, hits: int) -> None:
        size = _int_param(_query(scope), "size", 65536)
        assert size is not None
        if size < 0:
            raise _BadRequest("size must not be negative")
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(size).encode("ascii")),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunk = bytes(range(256)) * 256  # 64 KiB
        remaining = size
        while remaining > len(chunk):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            remaining -= len(chunk)
        await send({"type": "http.response.body", "body": chunk[:remaining], "more_body": False})


# --------------------------------------------------------------------------
# Hypercorn on a background thread
# --------------------------------------------------------------------------


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"test servers only talk to the loopback interface, not {host!r}")


def _bound_socket(port: int = 0) -> socket.socket:
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


def _is_listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    logger.debug(
        "event loop: %s",
        context.get("message", "unhandled error"),
        exc_info=context.get("exception"),
    )


class _DebugLogger(HypercornLogger):
    """Hypercorn logger sending everything to :data:`logger` at DEBUG level."""

    async def access(self, request: Any, response: Any, request_time: float) -> None:
        return None

    async def critical(self, message: str, *args: Any, **kwargs: Any) -> None:
        logger.debug(message, *args, **kwargs)

    async def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        logger.debug(message, *args, **kwargs)

    async def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        logger.debug(message, *args, **kwargs)

    async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        logger.debug(message, *args, **kwargs)

    async def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        logger.debug(message, *args, **kwargs)

    async def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        logger.debug(message, *args, **kwargs)

    async def log(self, level: int, message: str, *args: Any, **kwargs: Any) -> None:
        logger.debug(message, *args, **kwargs)


class _TrackingSocket(socket.socket):
    """Listening socket remembering each accepted connection by peer address.

    asyncio accepts through ``sock.accept()`` of the socket handed to
    ``create_server``, so this sees every connection Hypercorn serves.
    """

    def __init__(self) -> None:
        # IPPROTO_TCP: see _bound_socket().
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
    ``127.0.0.1`` and ``localhost``. Extra keyword arguments override
    :class:`hypercorn.config.Config` attributes (``keep_alive_max_requests``,
    ``keep_alive_timeout``, ``h2_max_concurrent_streams``, ...).

    The socket is bound at construction (so :attr:`port` and :attr:`url` are
    known at once); :meth:`start` returns once Hypercorn accepts connections
    and :meth:`stop` shuts it down gracefully and joins the thread. Usable as
    a context manager.
    """

    def __init__(self, app: ASGIApp, *, ca: trustme.CA | None = None, **config: Any) -> None:
        self._app = app
        self._ca = ca
        self._config = Config()
        self._config.accesslog = None
        self._config.errorlog = None
        self._config.logger_class = _DebugLogger
        self._config.graceful_timeout = 1.0
        self._config.startup_timeout = 5.0
        self._config.shutdown_timeout = 5.0
        for name, value in config.items():
            if name.startswith("_") or not hasattr(Config, name):
                raise TypeError(f"unknown Hypercorn config option {name!r}")
            setattr(self._config, name, value)
        self._sock = _TrackingSocket()
        try:
            self._sock.bind((LOOPBACK, 0))
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the server thread --------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # Reported by start(); never kill the thread noisily.
            logger.debug("server on %s crashed", self.url, exc_info=True)
            self._error = exc

    async def _serve(self) -> None:
        self._shutdown = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_log_loop_exception)
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


@dataclass(frozen=True)
class ServerInfo:
    """What the ``server`` fixture hands a test."""

    url: str
    app: FaultApp
    http_version: str
    client_kwargs: dict[str, Any]


# --------------------------------------------------------------------------
# TCP fault-injection proxy
# --------------------------------------------------------------------------


@dataclass
class _ProxyConnection:
    request_pending: bool = False


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


class FaultProxy:
    """TCP forwarder on 127.0.0.1 in front of ``upstream_host:upstream_port``.

    Runs its own event loop on a background thread. It starts *refusing*:
    the socket is bound but not listening, so connecting fails at once with
    "connection refused"; :meth:`start_listening` (or ``listening=True``)
    makes it accept. :meth:`drop_responses` makes the next ``n`` responses
    vanish: when the upstream begins answering a request, the proxy forwards
    nothing and closes both connections, so the server has acted on the
    request but the client never sees a byte of the answer. All controls are
    thread-safe and apply to what happens after the call. The proxy works at
    the byte level: "a response begins" means the first upstream bytes after
    the client sent something.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listening: bool = False,
        connect_timeout: float = 5.0,
    ) -> None:
        _check_loopback(upstream_host)
        self._upstream = (upstream_host, upstream_port)
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._drops_pending = 0
        self._dropped = 0
        self._connections = 0
        self._closed = False
        self._sock = _bound_socket()
        self._port: int = self._sock.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"fault-proxy-{self._port}", daemon=True
        )
        try:
            self._thread.start()
            if not self._ready.wait(_START_TIMEOUT):
                raise RuntimeError("fault proxy loop did not start in time")
            if listening:
                self.start_listening()
        except BaseException:
            self.close()
            raise

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. ``http://127.0.0.1:40124``."""
        return f"http://{LOOPBACK}:{self._port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def connections(self) -> int:
        """How many client connections the proxy has accepted."""
        with self._lock:
            return self._connections

    @property
    def dropped(self) -> int:
        """How many responses the proxy has dropped."""
        with self._lock:
            return self._dropped

    # -- controls -----------------------------------------------------------

    def start_listening(self, timeout: float = 5.0) -> None:
        """Start accepting connections; returns once the proxy accepts.

        Safe from any thread, including from a coroutine running on another
        event loop (it blocks that loop for a moment); not from the proxy's own
        loop.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("start_listening() must not be called on the proxy's own loop")
        loop = self._loop
        if self._closed or loop is None:
            raise RuntimeError("fault proxy is closed")
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout)

    def stop_listening(self, timeout: float = 5.0) -> None:
        """The upstream goes down: cut every open connection and refuse new ones (the port
        stays bound, not listening) until :meth:`start_listening`. Same threading rules."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("stop_listening() must not be called on the proxy's own loop")
        loop = self._loop
        if self._closed or loop is None:
            raise RuntimeError("fault proxy is closed")
        asyncio.run_coroutine_threadsafe(self._unlisten(), loop).result(timeout)

    def drop_responses(self, n: int) -> None:
        """Drop the next ``n`` responses (replaces any count still pending)."""
        if n < 0:
            raise ValueError("n must not be negative")
        with self._lock:
            self._drops_pending = n

    def close(self, timeout: float = 5.0) -> None:
        """Stop the proxy, closing every connection; idempotent, bounded."""
        with self._lock:
            already_closed, self._closed = self._closed, True
        if already_closed:
            return
        try:
            loop, stop = self._loop, self._stop
            if loop is not None and stop is not None:
                with contextlib.suppress(RuntimeError):  # The loop has already finished.
                    loop.call_soon_threadsafe(stop.set)
            if self._thread.is_alive():
                self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("fault proxy thread did not stop in time")
        finally:
            self._sock.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the proxy thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException:
            logger.debug("fault proxy on port %d crashed", self._port, exc_info=True)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_log_loop_exception)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server, self._server = self._server, None
            if server is not None:
                server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2.0)
            if server is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _listen(self) -> None:
        if self._server is None and not self._closed:
            self._server = await asyncio.start_server(self._handle, sock=self._sock, backlog=100)

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()  # closes the listening socket too
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)
        self._sock = _bound_socket(self._port)

    def _take_drop(self) -> bool:
        with self._lock:
            if self._drops_pending <= 0:
                return False
            self._drops_pending -= 1
            self._dropped += 1
            return True

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        with self._lock:
            self._connections += 1
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self._upstream), self._connect_timeout
                )
            except (OSError, asyncio.TimeoutError):
                logger.debug("fault proxy: upstream %s:%d unreachable", *self._upstream)
                return
            try:
                await self._pipe(client_reader, client_writer, upstream_reader, upstream_writer)
            finally:
                await _close_writer(upstream_writer)
        finally:
            await _close_writer(client_writer)

    async def _pipe(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> None:
        """Forward both ways until either side ends, or a response is dropped."""
        state = _ProxyConnection()
        pumps = {
            asyncio.create_task(self._forward_requests(client_reader, upstream_writer, state)),
            asyncio.create_task(self._forward_responses(upstream_reader, client_writer, state)),
        }
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.wait(pumps)

    async def _forward_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: _ProxyConnection
    ) -> None:
        try:
            while data := await reader.read(65536):
                state.request_pending = True
                writer.write(data)
                await writer.drain()
        except OSError:
            pass

    async def _forward_responses(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: _ProxyConnection
    ) -> None:
        try:
            while data := await reader.read(65536):
                if state.request_pending:
                    state.request_pending = False
                    if self._take_drop():
                        logger.debug("fault proxy: dropping a response")
                        return
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
