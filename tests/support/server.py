"""Loopback test servers for httpx_resilience.

Three pieces, all bound to 127.0.0.1 on ports chosen by the OS:

* :class:`FaultApp` -- an ASGI app with in-memory, per-key state that tests use
  to script faults (flaky statuses, ``Retry-After`` values, slow answers,
  bodies cut short) and to count how often a request reached the server.
* :class:`ServerThread` -- runs Hypercorn (asyncio worker) serving an ASGI app on
  a background thread with its own event loop, either as plain HTTP/1.1 or as
  TLS with ALPN ``["h2", "http/1.1"]`` using a certificate from a trustme CA.
  The runner itself is the demo's (``httpx_resilience._demo.servers``); the
  ASGI helpers are ``httpx_resilience._demo.asgi``.
* :class:`FaultProxy` -- a TCP forwarder that can refuse connections (bound,
  not listening) and drop responses after the upstream has acted on a request.

Nothing here sends traffic anywhere but the loopback interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import parse_qs

import anyio

from httpx_resilience._demo import servers as _servers
from httpx_resilience._demo.asgi import (
    ABORT_EXTENSION,
    ASGIApp,
    Receive,
    Scope,
    Send,
    drop_connection,
    request_body,
    respond,
    respond_json,
    sleep_unless_disconnected,
)
from httpx_resilience._demo.servers import (
    LOOPBACK,
    bound_socket,
    check_loopback,
    log_loop_exceptions,
)

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

#: Everything the servers and the proxy log goes here at DEBUG level, so test
#: output stays clean (run pytest with ``--log-level=DEBUG`` to see it).
logger = logging.getLogger("tests.support.server")
logger.addHandler(logging.NullHandler())

_START_TIMEOUT = 10.0


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
    * ``/status/{key}?code=S&retry_after=V&delay=SECONDS`` -- always S (default 500),
      after ``delay`` seconds (default 0) unless the client disconnects first.
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
    * ``/throttle/{key}?period=S&ms=M`` -- a rate-limited upstream: the first request
      starts a throttle of S seconds (default 1.0); until it ends every request answers
      429 with ``retry-after-ms`` (the smaller of M, default 500, and what is left) and a
      whole-seconds ``Retry-After``; then 200 ``{"hits": n}``. ``throttled[key]`` counts
      the 429s sent.
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
            "throttle": self._throttle,
        }
        self._throttle_ends: dict[str, float] = {}
        self.throttled: dict[str, int] = {}

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
        body = await request_body(scope, receive, send)
        if body is None:
            return
        parts = scope["path"].split("/")
        route = self._routes.get(parts[1]) if len(parts) == 3 and parts[2] else None
        if parts[1] == "users":
            await self._users(scope, send, parts[2:], body)
            return
        if route is None:
            await respond(send, 404, b"not found\n")
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
            await respond(send, 400, f"{exc}\n".encode())

    async def _users(self, scope: Scope, send: Send, rest: list[str], body: bytes) -> None:
        """A tiny JSON API for the docs' examples: ``POST /users`` creates (201, echoing the
        JSON with an id), ``GET /users/{id}`` reads (404 for id 0), ``DELETE`` answers 204."""
        method = scope["method"]
        if not rest and method == "POST":
            payload = json.loads(body or b"{}")
            await respond_json(send, 201, {"id": 1, **payload})
        elif len(rest) == 1 and rest[0].isdigit() and rest[0] != "0":
            if method == "DELETE":
                await respond(send, 204, b"")
            else:
                await respond_json(send, 200, {"id": int(rest[0]), "name": "Ada Lovelace"})
        else:
            await respond_json(send, 404, {"detail": "user not found"})

    async def _ok(self, scope: Scope, receive: Receive, send: Send, key: str, hits: int) -> None:
        payload = {"hits": hits, "method": scope["method"], "http_version": scope["http_version"]}
        await respond_json(send, 200, payload)

    async def _flaky(self, scope: Scope, receive: Receive, send: Send, key: str, hits: int) -> None:
        params = _query(scope)
        fail = _int_param(params, "fail", 1)
        status = _int_param(params, "status", 503)
        retry_after = _retry_after_header(params)
        assert fail is not None
        assert status is not None
        if hits <= fail:
            body = f"flaky failure {hits} of {fail}\n".encode()
            await respond(send, status, body, headers=retry_after)
        else:
            await respond_json(send, 200, {"hits": hits})

    async def _status(
        self, scope: Scope, receive: Receive, send: Send, key: str, hits: int
    ) -> None:
        params = _query(scope)
        code = _int_param(params, "code", 500)
        assert code is not None
        delay = _float_param(params, "delay", 0.0)
        if delay and await sleep_unless_disconnected(receive, delay):
            return  # The client is gone: nobody to answer.
        body = f"status {code} (hit {hits})\n".encode()
        await respond(send, code, body, headers=_retry_after_header(params))

    async def _slow(self, scope: Scope, receive: Receive, send: Send, key: str, hits: int) -> None:
        params = _query(scope)
        delay = _float_param(params, "delay", 1.0)
        fail = _int_param(params, "fail", None)
        if (fail is None or hits <= fail) and await sleep_unless_disconnected(receive, delay):
            return  # The client is gone: nobody to answer.
        await respond_json(send, 200, {"hits": hits})

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
        if hits <= fail and await drop_connection(scope, receive):
            return
        await respond_json(send, 200, {"hits": hits})

    async def _throttle(
        self, scope: Scope, receive: Receive, send: Send, key: str, hits: int
    ) -> None:
        params = _query(scope)
        period = _float_param(params, "period", 1.0)
        ms = _float_param(params, "ms", 500.0)
        now = time.monotonic()
        with self._lock:
            ends = self._throttle_ends.setdefault(key, now + period)
            left = ends - now
            if left > 0:
                self.throttled[key] = self.throttled.get(key, 0) + 1
        if left <= 0:
            await respond_json(send, 200, {"hits": hits})
            return
        wait_ms = min(ms, left * 1000.0)
        headers = [
            (b"retry-after", str(math.ceil(wait_ms / 1000.0)).encode("ascii")),
            (b"retry-after-ms", f"{wait_ms:.0f}".encode("ascii")),
        ]
        await respond(send, 429, b"slow down\n", headers=headers)

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


class ServerThread(_servers.ServerThread):
    """Hypercorn (asyncio worker) serving ``app`` on 127.0.0.1 in a thread: the demo's
    :class:`httpx_resilience._demo.servers.ServerThread`, logging to :data:`logger`.

    ``ServerThread(app, ca=None, **hypercorn_config_overrides)``: plain HTTP/1.1 by default,
    TLS with ALPN ``["h2", "http/1.1"]`` with a certificate from ``ca``.
    """

    logger: ClassVar[logging.Logger] = logger


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
        check_loopback(upstream_host)
        self._upstream = (upstream_host, upstream_port)
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._drops_pending = 0
        self._dropped = 0
        self._connections = 0
        self._closed = False
        self._sock = bound_socket()
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
        log_loop_exceptions(self._loop, logger)
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
        self._sock = bound_socket(self._port)

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
