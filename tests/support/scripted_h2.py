"""A path-scripted h2 server for HTTP/2 cases that depend on *what* a request asks for and on
the test's timing: a response held until the test releases it, a body that fills the client's
window, a server that stops reading its socket, a stream limit raised later, GOAWAY with the
preface. (`tests.support.h2server.H2Server` scripts whole connections by `Plan`; this one
scripts requests by path.) Plain TCP on 127.0.0.1, HTTP/2 by prior knowledge, run by asyncio on
a thread of its own.

What it answers is chosen by the request path:

* ``/ok``: 200 ``ok``;
* ``/cookies``: 200 ``ok`` with two ``cookie`` fields among its headers (a response has no use
  for them; HTTP/2 says received ``cookie`` fields are joined);
* ``/status?value=V``: ``:status`` V, as given (h2's checks of what it sends off), and
  ``/no-status``: a response head without ``:status``: servers breaking the protocol;
* ``/hold``: answered when the test calls `ScriptedServer.release`;
* ``/credit``: the client's send window for the stream opened to 2**31 - 1 (WINDOW_UPDATE),
  then 200 ``ok``;
* ``/fill?n=N``: HEADERS and N bytes of DATA, never ended;
* ``/data?n=N``: HEADERS and N bytes of DATA, ended;
* ``/wait-data?n=N``: like ``/data``, but only once an ``/upload-stall`` request has arrived;
* ``/upload-stall``: the server stops reading the connection (its socket buffers fill) for
  ``stall_seconds``, then reads again (`ScriptedServer.resumed` turns True); a body that ends
  is answered 200 ``uploaded``. With ``?ping=1`` it sends a PING as it stops reading: a frame
  the client has to read while its writes are blocked (with ``?ping=N``, N - 1 more follow,
  50 ms apart). `ScriptedServer.stalled` counts the
  connections that have stopped reading (what they sent before is written by then).

DATA is sent within the client's flow-control windows (more as WINDOW_UPDATEs arrive);
`ScriptedServer.data_sent` counts the DATA bytes sent per path, and
`ScriptedServer.window_updates` the paths of the streams the client sent a WINDOW_UPDATE for.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
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
from hyperframe.frame import GoAwayFrame

from tests.support.server import LOOPBACK

__all__ = ["WINDOW", "ScriptedServer", "Upload", "wait_for_arrival"]


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
    """The server (a context manager). Keyword options: ``big_window`` (open the client's
    send windows to 2**31 - 1), ``stall_seconds`` (how long ``/upload-stall`` stops reading),
    ``max_streams`` (its SETTINGS_MAX_CONCURRENT_STREAMS), ``goaway_at_once`` (every
    connection's preface comes with GOAWAY(last_stream_id=0); no stream is answered)."""

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
        #: Each request's header fields as the server's HPACK decoder gave them (never-indexed
        #: fields as `hpack.NeverIndexedHeaderTuple`).
        self.request_headers: list[list[Any]] = []
        self.errors: list[str] = []
        self.resets: list[int] = []
        #: DATA bytes sent so far, per request path (as far as the client's windows allowed).
        self.data_sent: dict[str, int] = {}
        #: The path of each stream a WINDOW_UPDATE from the client named (one per frame; the
        #: connection's own updates, stream 0, are not counted).
        self.window_updates: list[str] = []
        self.connections = 0
        #: Connections that have stopped reading for ``/upload-stall`` (their last frames, a
        #: PING with ``?ping=1``, written); `resumed` turns True when one reads again.
        self.stalled = 0
        self.resumed = False
        #: SETTINGS acknowledgements received from clients (the first: of the preface's).
        self.acks = 0
        self._server: asyncio.Server | None = None
        self._held: list[tuple[_Conn, int]] = []
        #: The tasks sending ``?ping=N``'s later PINGs (held so that they are not collected).
        self._pingers: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

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

    def set_initial_window(self, size: int) -> None:
        """Send SETTINGS with a new INITIAL_WINDOW_SIZE on every connection."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._set_initial_window, size)

    def _set_initial_window(self, size: int) -> None:
        for conn in self._conns:
            conn.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: size})
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
        server = self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
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
                self._pump(conn, self.data_sent)
                conn.flush()
                if conn.stall:
                    conn.stall = False
                    # Stop reading: the client's writes fill the socket buffers.
                    self.stalled += 1
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
            self.request_headers.append(list(event.headers or []))
            headers = dict(event.headers or [])
            path = headers[b":path"].decode()
            conn.paths[event.stream_id] = path
            self.arrived.append(path)
            if path.startswith("/upload-stall"):
                conn.stall = True
                pings = int(parse_qs(urlsplit(path).query).get("ping", ["0"])[0])
                if pings:
                    state.ping(b"stalling")
                if pings > 1:
                    pinger = asyncio.ensure_future(self._ping(conn, pings - 1))
                    self._pingers.add(pinger)
                    pinger.add_done_callback(self._pingers.discard)
                for stream_id, size in conn.waiting_data:
                    self._respond(conn, stream_id, b"x" * size, end=True)
                conn.waiting_data.clear()
        elif isinstance(event, h2.events.DataReceived):
            state.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                self.window_updates.append(conn.paths.get(event.stream_id, "?"))
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.acks += 1
        elif isinstance(event, h2.events.StreamReset):
            self.resets.append(event.stream_id)
            conn.pending.pop(event.stream_id, None)
        elif isinstance(event, h2.events.StreamEnded):
            self._answer(conn, event.stream_id)

    async def _ping(self, conn: _Conn, count: int) -> None:
        """``count`` more PINGs, 50 ms apart (the connection still not read meanwhile)."""
        for _ in range(count):
            await asyncio.sleep(0.05)
            if conn.writer.is_closing():
                return
            conn.h2.ping(b"stalling")
            conn.flush()

    def _answer(self, conn: _Conn, stream_id: int) -> None:
        if self._goaway_at_once:
            return
        url = urlsplit(conn.paths.get(stream_id, "/"))
        size = int(parse_qs(url.query).get("n", ["0"])[0])
        if url.path == "/ok":
            self._respond(conn, stream_id, b"ok", end=True)
        elif url.path == "/cookies":
            fields = [(b"cookie", b"a=1"), (b"x-one", b"1"), (b"cookie", b"b=2"), (b"x-two", b"2")]
            self._respond(conn, stream_id, b"ok", end=True, headers=fields)
        elif url.path in ("/status", "/no-status"):
            value = parse_qs(url.query).get("value", [None])[0]
            status = None if value is None else value.encode()
            conn.h2.config.validate_outbound_headers = False
            try:
                fields = [(b"content-type", b"text/plain")]  # never an empty header block
                self._respond(conn, stream_id, b"ok", end=True, status=status, headers=fields)
            finally:
                conn.h2.config.validate_outbound_headers = True
        elif url.path == "/hold":
            self._held.append((conn, stream_id))
        elif url.path == "/credit":
            # The request had no body: the stream's window is still the initial one.
            opened = 2**31 - 1 - conn.h2.local_settings.initial_window_size
            conn.h2.increment_flow_control_window(opened, stream_id=stream_id)
            self._respond(conn, stream_id, b"ok", end=True)
        elif url.path == "/fill":
            self._respond(conn, stream_id, b"x" * size, end=False)
        elif url.path == "/data":
            self._respond(conn, stream_id, b"x" * size, end=True)
        elif url.path == "/wait-data":
            conn.waiting_data.append((stream_id, size))
        elif url.path == "/upload-stall":
            self._respond(conn, stream_id, b"uploaded", end=True)

    def _respond(
        self,
        conn: _Conn,
        stream_id: int,
        body: bytes,
        *,
        end: bool,
        headers: list[tuple[bytes, bytes]] | None = None,
        status: bytes | None = b"200",
    ) -> None:
        head = [] if status is None else [(b":status", status)]
        conn.h2.send_headers(stream_id, [*head, *(headers or [])])
        conn.pending[stream_id] = [bytearray(body), end]
        self._pump(conn, self.data_sent)

    @staticmethod
    def _pump(conn: _Conn, sent: dict[str, int]) -> None:
        """Send what the flow-control windows allow (counted in ``sent``, per path)."""
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
                    path = conn.paths.get(stream_id, "?")
                    sent[path] = sent.get(path, 0) + size
                if not buffer:
                    del conn.pending[stream_id]
                    if end:
                        state.end_stream(stream_id)
            except h2.exceptions.StreamClosedError:
                conn.pending.pop(stream_id, None)


#: The client's receive windows (the connection's, and each stream's): 65,535 + 2**24.
WINDOW = 65_535 + 2**24


class Upload:
    """A large request body (256 MB unless told, made as it is sent, a megabyte at a time). Not
    an async generator: httpx does not close the user's generator when its own wrapper is
    closed, and trio warns about that."""

    def __init__(self, megabytes: int = 256) -> None:
        self.left = megabytes

    def __aiter__(self) -> Upload:
        return self

    async def __anext__(self) -> bytes:
        if not self.left:
            raise StopAsyncIteration
        self.left -= 1
        return b"u" * 1_000_000


async def wait_for_arrival(server: ScriptedServer, path: str) -> None:
    for _ in range(1_000):
        if path in server.arrived:
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"{path} never reached the server")
