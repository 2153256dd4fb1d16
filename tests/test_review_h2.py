"""Review of branch ``h2``: failing tests for defects found in `_connection/http2.py` and
`_connection/pool.py`, against a real scripted HTTP/2 server on 127.0.0.1 (HTTP/2 by prior
knowledge), under asyncio and trio.

`ScriptedServer` is a small h2 server run by asyncio on its own thread; what it answers is
chosen by the request path:

* ``/ok``: 200 ``ok``;
* ``/hold``: answered when the test calls `ScriptedServer.release`;
* ``/fill?n=N``: HEADERS and N bytes of DATA, never ended;
* ``/data?n=N``: HEADERS and N bytes of DATA, ended;
* ``/wait-data?n=N``: like ``/data``, but only once an ``/upload-stall`` request has arrived;
* ``/upload-stall``: the server stops reading the connection (its socket buffers fill) for
  ``stall_seconds``, then reads again (`ScriptedServer.resumed` turns True).

DATA is sent within the client's flow-control windows (more as WINDOW_UPDATEs arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import httpx
import pytest
from hyperframe.frame import GoAwayFrame

from httpx_resilience import AsyncConnectionPoolTransport
from httpx_resilience._classify import FailureKind, classify_error
from tests.support.raw import RawServer

pytestmark = pytest.mark.anyio

_LOOPBACK = "127.0.0.1"


@dataclass
class _Conn:
    h2: h2.connection.H2Connection
    writer: asyncio.StreamWriter
    paths: dict[int, str] = field(default_factory=dict)
    #: stream id -> [bytes still to send, end the stream after them]
    pending: dict[int, list[Any]] = field(default_factory=dict)
    waiting_data: list[tuple[int, int]] = field(default_factory=list)
    stall: bool = False

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)


class ScriptedServer:
    def __init__(
        self,
        *,
        big_window: bool = False,
        stall_seconds: float = 15.0,
        max_streams: int = 100,
        goaway_at_once: bool = False,
    ) -> None:
        self._big_window = big_window
        self._max_streams = max_streams
        self._goaway_at_once = goaway_at_once
        self._conns: list[_Conn] = []
        self._stall_seconds = stall_seconds
        self.arrived: list[str] = []
        self.errors: list[str] = []
        self.resets: list[int] = []
        self.connections = 0
        self.resumed = False
        #: SETTINGS acknowledgements received from clients (the first: of the preface's).
        self.acks = 0
        self._server: asyncio.Server | None = None
        self._held: list[tuple[_Conn, int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{_LOOPBACK}:{self.port}"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted server did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def release(self) -> None:
        """Answer the ``/hold`` requests."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._release)

    def raise_limit(self, max_streams: int) -> None:
        """Send SETTINGS with a new MAX_CONCURRENT_STREAMS on every connection."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._raise_limit, max_streams)

    def _raise_limit(self, max_streams: int) -> None:
        for conn in self._conns:
            conn.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
            conn.flush()

    def stop_listening(self) -> None:
        """Close the listening socket (open connections stay): new connections are refused."""
        assert self._loop is not None
        done = threading.Event()

        def close() -> None:
            assert self._server is not None
            self._server.close()
            done.set()

        self._loop.call_soon_threadsafe(close)
        if not done.wait(10):
            raise RuntimeError("the listener did not close")

    def _release(self) -> None:
        held, self._held = self._held, []
        for conn, stream_id in held:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._respond(conn, stream_id, b"held", end=True)
            conn.flush()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = self._server = await asyncio.start_server(self._handle, _LOOPBACK, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        state = h2.connection.H2Connection(config=config)
        settings: dict[h2.settings.SettingCodes, int] = {
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self._max_streams
        }
        if self._big_window:
            settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = 2**31 - 1
        state.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        state.initiate_connection()
        if self._big_window:
            state.increment_flow_control_window(2**31 - 1 - 65535)
        conn = _Conn(state, writer)
        self._conns.append(conn)
        if self._goaway_at_once:
            # A server shutting down: GOAWAY(last_stream_id=0) with its preface, in one write;
            # it answers no stream on this connection (RFC 9113 §6.8).
            goaway = GoAwayFrame(0, last_stream_id=0, error_code=0).serialize()
            writer.write(state.data_to_send() + goaway)
        conn.flush()
        try:
            while not writer.is_closing():
                data = await asyncio.wait_for(reader.read(65536), 60)
                if not data:
                    break
                for event in state.receive_data(data):
                    self._on_event(conn, event)
                self._pump(conn)
                conn.flush()
                if conn.stall:
                    conn.stall = False
                    # Stop reading: the client's writes fill the socket buffers.
                    await asyncio.sleep(self._stall_seconds)
                    self.resumed = True
        except h2.exceptions.ProtocolError as exc:
            self.errors.append(repr(exc))
        except (OSError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping: end quietly
        finally:
            writer.close()

    def _on_event(self, conn: _Conn, event: h2.events.Event) -> None:
        state = conn.h2
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers or [])
            path = headers[b":path"].decode()
            conn.paths[event.stream_id] = path
            self.arrived.append(path)
            if path.startswith("/upload-stall"):
                conn.stall = True
                for stream_id, size in conn.waiting_data:
                    self._respond(conn, stream_id, b"x" * size, end=True)
                conn.waiting_data.clear()
        elif isinstance(event, h2.events.DataReceived):
            state.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.acks += 1
        elif isinstance(event, h2.events.StreamReset):
            self.resets.append(event.stream_id)
            conn.pending.pop(event.stream_id, None)
        elif isinstance(event, h2.events.StreamEnded):
            self._answer(conn, event.stream_id)

    def _answer(self, conn: _Conn, stream_id: int) -> None:
        if self._goaway_at_once:
            return
        url = urlsplit(conn.paths.get(stream_id, "/"))
        size = int(parse_qs(url.query).get("n", ["0"])[0])
        if url.path == "/ok":
            self._respond(conn, stream_id, b"ok", end=True)
        elif url.path == "/hold":
            self._held.append((conn, stream_id))
        elif url.path == "/fill":
            self._respond(conn, stream_id, b"x" * size, end=False)
        elif url.path == "/data":
            self._respond(conn, stream_id, b"x" * size, end=True)
        elif url.path == "/wait-data":
            conn.waiting_data.append((stream_id, size))

    def _respond(self, conn: _Conn, stream_id: int, body: bytes, *, end: bool) -> None:
        conn.h2.send_headers(stream_id, [(b":status", b"200")])
        conn.pending[stream_id] = [bytearray(body), end]
        self._pump(conn)

    @staticmethod
    def _pump(conn: _Conn) -> None:
        """Send what the flow-control windows allow."""
        state = conn.h2
        for stream_id, (buffer, end) in list(conn.pending.items()):
            try:
                while buffer:
                    window = state.local_flow_control_window(stream_id)
                    if window <= 0:
                        break
                    size = min(window, state.max_outbound_frame_size, len(buffer))
                    state.send_data(stream_id, bytes(buffer[:size]))
                    del buffer[:size]
                if not buffer:
                    del conn.pending[stream_id]
                    if end:
                        state.end_stream(stream_id)
            except h2.exceptions.StreamClosedError:
                conn.pending.pop(stream_id, None)


#: The client's receive windows (the connection's, and each stream's): 65,535 + 2**24.
WINDOW = 65_535 + 2**24


class Upload:
    """A large request body (256 MB, made as it is sent). Not an async generator: httpx does
    not close the user's generator when its own wrapper is closed, and trio warns about that."""

    def __init__(self) -> None:
        self.left = 256

    def __aiter__(self) -> Upload:
        return self

    async def __anext__(self) -> bytes:
        if not self.left:
            raise StopAsyncIteration
        self.left -= 1
        return b"u" * 1_000_000


def h2c(**kwargs: Any) -> AsyncConnectionPoolTransport:
    return AsyncConnectionPoolTransport(http1=False, http2=True, **kwargs)


async def wait_for_arrival(server: ScriptedServer, path: str) -> None:
    for _ in range(1_000):
        if path in server.arrived:
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"{path} never reached the server")


# --- 1. flow control: a response closed early keeps its unread DATA's connection window ------


async def test_a_response_closed_early_gives_its_unread_window_back() -> None:
    # A response's DATA arrives (queued for its stream) and the response is closed unread.
    # Those bytes count against the connection's receive window (2**24 + 65,535) until the
    # client acknowledges them; closing drops them unacknowledged, so the connection's window
    # shrinks for good by that much. Here the whole window but the 2 bytes of /ok's body: no
    # later response on the connection gets any DATA, and the connection stays in the pool.
    with ScriptedServer() as server:
        transport = h2c()
        timeout = httpx.Timeout(5.0)
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=timeout
        ) as client:
            with anyio.fail_after(60):
                async with client.stream("GET", f"/fill?n={WINDOW - 2}") as response:
                    assert response.status_code == 200
                    # Sent after all of /fill's DATA: once read, all of it is in the client.
                    assert (await client.get("/ok")).text == "ok"
                later = await client.get("/data?n=1000000")
            assert len(later.content) == 1_000_000
    assert server.connections == 1


# --- 2. an invalid header: h2 raised after opening the stream -------------------------------


async def test_a_request_h2_refuses_to_send_does_not_break_the_other_streams() -> None:
    # h2's send_headers raises ProtocolError for a header it will not send (here a user header
    # named like a pseudo-header) *after* moving the stream to OPEN and feeding the headers
    # before it to the HPACK encoder. The request fails with LocalProtocolError (fine), but the
    # stream is then reset (RST_STREAM on a stream the server never saw: a connection error,
    # RFC 9113 §6.4) and the encoder's table no longer matches the server's, so the requests
    # in flight on that connection die with it.
    with ScriptedServer() as server:
        transport = h2c()
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(10.0)
        ) as client:
            results: dict[str, Any] = {}

            async def held() -> None:
                try:
                    results["held"] = (await client.get("/hold")).status_code
                except httpx.TransportError as exc:
                    results["held"] = exc

            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(held)
                    await wait_for_arrival(server, "/hold")
                    with pytest.raises(httpx.LocalProtocolError):
                        await client.get("/ok", headers={"x-first": "1", ":bad": "x"})
                    try:
                        results["next"] = (await client.get("/ok")).status_code
                    except httpx.TransportError as exc:
                        results["next"] = exc
                    server.release()
    assert results == {"held": 200, "next": 200}
    assert server.errors == []


# --- 3. a blocked write must not hang a reader past its timeout ------------------------------


async def test_reading_a_complete_response_does_not_wait_forever_on_a_blocked_write() -> None:
    # The server stops reading the connection (for 15 s) while an upload on one stream fills
    # the socket buffers; on another stream it sends a complete 9 MB response. Reading that
    # body makes the client acknowledge DATA, and the acknowledgement write waits for the
    # write buffer to drain with no timeout at all (asyncio: `send(b"", None)`; trio: a
    # shielded `send(out, None)` that cannot even be cancelled). The read should end (with
    # the body, or at worst a ReadTimeout after 3 s) while the server is still not reading.
    with ScriptedServer(big_window=True, stall_seconds=15.0) as server:
        transport = h2c()
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(3.0)
        ) as client:
            outcome: dict[str, Any] = {}

            async def upload() -> None:
                with contextlib.suppress(httpx.TransportError):
                    await client.post("/upload-stall", content=Upload())

            async def download() -> None:
                try:
                    async with client.stream("GET", "/wait-data?n=9000000") as response:
                        size = 0
                        async for chunk in response.aiter_raw():
                            size += len(chunk)
                    outcome["result"] = size
                except httpx.TransportError as exc:
                    outcome["result"] = type(exc).__name__
                outcome["server_was_still_stalled"] = not server.resumed

            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(download)
                    await wait_for_arrival(server, "/wait-data?n=9000000")
                    group.start_soon(upload)
    assert outcome["server_was_still_stalled"], outcome
    assert outcome["result"] in (9_000_000, "ReadTimeout"), outcome


# --- 4. asyncio: a connection whose write timed out keeps taking new streams ----------------


async def test_a_connection_whose_write_timed_out_takes_no_new_request() -> None:
    # Under trio a write timeout marks the connection failed (`_write_failed`): the next
    # request opens a new one. Under asyncio nothing is marked, and the pool places the next
    # request on the connection whose write buffer is stuck: it fails with a WriteTimeout too.
    with ScriptedServer(big_window=True, stall_seconds=15.0) as server:
        transport = h2c()
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(3.0)
        ) as client:
            with anyio.fail_after(60):
                with pytest.raises(httpx.WriteTimeout):
                    await client.post("/upload-stall", content=Upload())
                response = await client.get("/ok")
            assert response.text == "ok"
            stalled = not server.resumed
    assert stalled
    assert server.connections == 2


# --- 5. a stream limit raised by SETTINGS does not reach the requests waiting in the pool ---


async def test_requests_waiting_in_the_pool_get_the_streams_a_raised_limit_allows() -> None:
    # One connection allowed, and the server allows one stream on it; a second request waits
    # in the pool. The server then raises MAX_CONCURRENT_STREAMS to 10 (SETTINGS): the
    # connection has room, but the pool hands streams out only when one ends, so the waiting
    # request gets a PoolTimeout while the first is still running.
    with ScriptedServer(max_streams=1) as server:
        transport = h2c(limits=httpx.Limits(max_connections=1))
        timeout = httpx.Timeout(10.0, pool=3.0)
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=timeout
        ) as client:
            results: dict[str, Any] = {}

            async def send(name: str, path: str) -> None:
                try:
                    results[name] = (await client.get(path)).status_code
                except httpx.TransportError as exc:
                    results[name] = type(exc).__name__
                if name == "second":
                    results["first_still_held"] = "first" not in results

            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(send, "first", "/hold")
                    await wait_for_arrival(server, "/hold")
                    group.start_soon(send, "second", "/ok")
                    for _ in range(1_000):
                        stats = transport.pool_stats
                        if stats is not None and stats.waiting == 1:
                            break
                        await anyio.sleep(0.01)
                    assert transport.pool_stats is not None
                    assert transport.pool_stats.waiting == 1
                    server.raise_limit(10)
                    for _ in range(1_000):
                        if "second" in results:
                            break
                        await anyio.sleep(0.01)
                    server.release()
    assert results == {"first": 200, "second": 200, "first_still_held": True}


# --- 6. a server that sends GOAWAY on every new connection ------------------------------------


async def test_a_server_that_goes_away_at_once_ends_the_request() -> None:
    # Each new connection's preface comes with GOAWAY(last_stream_id=0): the connection takes
    # no stream (ConnectionUnavailable), and the pool loops to open another, with no bound,
    # no timeout and no error (a server being drained that still accepts connections).
    with ScriptedServer(goaway_at_once=True) as server:
        transport = h2c()
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(3.0)
        ) as client:
            outcome: Any = None
            with anyio.move_on_after(10):
                try:
                    outcome = (await client.get("/ok")).status_code
                except httpx.TransportError as exc:
                    outcome = exc
            connections = server.connections
    assert isinstance(outcome, httpx.TransportError), (outcome, connections)
    assert connections <= 10, connections


# --- 7. trio: a write the server does not read cannot be cancelled ---------------------------


async def test_a_request_blocked_writing_can_be_cancelled() -> None:
    # With no write timeout, a request whose body the server does not read waits in the
    # write; the caller's cancel scope must still end it. Under trio `_flush` writes inside
    # `CancelScope(shield=True)` with the write timeout as the only bound: with none, the
    # request ignores cancellation until the server reads again (15 s later here).
    with ScriptedServer(big_window=True, stall_seconds=15.0) as server:
        transport = h2c()
        timeout = httpx.Timeout(10.0, write=None)
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=timeout
        ) as client:
            with anyio.fail_after(60):
                with anyio.move_on_after(3) as scope:
                    await client.post("/upload-stall", content=Upload())
                stalled = not server.resumed
            assert scope.cancelled_caught
            stats = transport.pool_stats
    assert stalled
    assert stats is not None
    assert (stats.in_use, stats.waiting) == (0, 0), stats


# --- 8. a connection whose HTTP/2 preface never completes: the request was never sent -------


def _silent(sock: socket.socket) -> None:
    """Accept, read what comes, never send a byte (no SETTINGS): at most ~5 s."""
    sock.settimeout(0.1)
    for _ in range(50):
        try:
            if not sock.recv(65536):
                return
        except TimeoutError:
            continue


def _close_at_once(sock: socket.socket) -> None:
    """Accept, read the client's preface, close without a SETTINGS frame."""
    sock.settimeout(2.0)
    with contextlib.suppress(OSError):
        sock.recv(65536)
        sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("handler", [_silent, _close_at_once], ids=["silent", "closes"])
async def test_a_failed_http2_preface_is_a_connect_failure(
    handler: Callable[[socket.socket], None],
) -> None:
    # Nothing of the request is written before the server's SETTINGS arrive (`start`), so a
    # preface that times out or a connection closed before it are connect failures: NOT_SENT,
    # retried for every method. They surface as ReadTimeout / RemoteProtocolError, which
    # `_classify` must treat as MAYBE_PROCESSED: a POST is then never retried.
    transport = h2c()
    with RawServer(handler) as server:
        async with httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(5.0, read=1.0)
        ) as client:
            with anyio.fail_after(20):
                with pytest.raises(httpx.TransportError) as caught:
                    await client.post(f"{server.url}/create", content=b"{}")
    assert classify_error(caught.value) is FailureKind.NOT_SENT, repr(caught.value)


# --- 9. an idle connection whose stream limit drops to 0 stays in the idle list --------------


async def test_an_idle_connection_paused_by_settings_is_closed_cleanly() -> None:
    # An idle connection whose server sends SETTINGS_MAX_CONCURRENT_STREAMS = 0 (a pause, which
    # the asyncio callback reads at once) has capacity 0: `_take_stream` drops it from the
    # origin's ``shared`` but leaves it in ``_idle_all``, still counted in the pool's total.
    # Once the origin is forgotten (here: the new connection it opens instead is refused), the
    # next `_close_idle` of it -- a full pool making room, or `_expire_oldest` -- looks up
    # ``self._origins[conn.key]`` and raises KeyError out of an unrelated request.
    with ScriptedServer() as a, ScriptedServer() as b, ScriptedServer() as c:
        transport = h2c(limits=httpx.Limits(max_connections=2))
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0)) as client:
            results: dict[str, Any] = {}
            with anyio.fail_after(30):
                assert (await client.get(f"{a.url}/ok")).text == "ok"
                a.raise_limit(0)
                for _ in range(500):  # the client acknowledges the new SETTINGS (asyncio)
                    if a.acks >= 2:
                        break
                    await anyio.sleep(0.01)
                a.stop_listening()
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"{a.url}/ok")

                async def held() -> None:
                    results["b"] = (await client.get(f"{b.url}/hold")).status_code

                async with anyio.create_task_group() as group:
                    group.start_soon(held)
                    await wait_for_arrival(b, "/hold")
                    # The pool is full (the paused idle connection and b's): c's request
                    # replaces the idle one.
                    try:
                        results["c"] = (await client.get(f"{c.url}/ok")).status_code
                    finally:
                        b.release()
            stats = transport.pool_stats
    assert results == {"b": 200, "c": 200}
    assert stats is not None
    assert (stats.in_use, stats.waiting) == (0, 0), stats
