"""A small h2-based HTTP/2 server for protocol cases no maintained server can be told to produce.

Plain TCP on 127.0.0.1 with HTTP/2 prior knowledge (clients use ``http1=False, http2=True``),
run by asyncio on a thread of its own, like `tests.support.server.ServerThread`. What each
connection does is scripted by a `Plan`:

* send GOAWAY with a chosen ``last_stream_id`` once N requests have arrived -- before answering
  any, then answer the streams at or below it (a graceful shutdown, RFC 9113 §6.8) and close;
* refuse chosen streams with ``RST_STREAM(REFUSED_STREAM)`` (§8.7);
* advertise a small ``SETTINGS_MAX_CONCURRENT_STREAMS`` and answer slowly;
* close an idle connection with GOAWAY after a pause;
* answer a request with response HEADERS, then GOAWAY(0) before the body ends;
* stall: withhold flow-control window (a request body stops mid-write), or answer with HEADERS
  and part of the body and never finish it;
* break the protocol (flow-control window overflow, PUSH_PROMISE with push disabled, a
  CONTINUATION flood).

A connection closes the way nginx closes one (its "lingering close"): stop writing (FIN), read
and discard what the client still sends, and close once the client has closed too or a short
linger time has passed. A plain close with unread data would send RST, and the client's kernel
may then drop the GOAWAY that preceded it: a race no real graceful server makes its clients
run. ``Plan(abrupt_close=True)`` closes that way all the same, to test the safe outcome.

GOAWAY is written as a raw frame: h2 closes its state machine on *sending* GOAWAY too, which
would stop the server from answering the streams it promised to finish.

The server records every request it *processed* (answered); requests above a GOAWAY's
``last_stream_id`` and refused ones are not processed.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PushPromiseFrame,
    WindowUpdateFrame,
)

from tests.support.server import LOOPBACK

__all__ = ["H2Server", "Plan", "Processed"]

_TIMEOUT = 10.0
#: How long a closing connection keeps draining what the client sends (nginx: 5 s).
_LINGER = 2.0
#: How long a connection that sent GOAWAY waits for promised streams the client never opened.
_GOAWAY_GRACE = 2.0


@dataclass(frozen=True)
class Plan:
    """What one connection does. Defaults: answer everything at once, never close."""

    #: Send GOAWAY(``goaway_last_stream_id``) once this many requests have arrived.
    goaway_after: int | None = None
    goaway_last_stream_id: int = 0
    #: Stream ids answered with RST_STREAM(REFUSED_STREAM).
    refuse: frozenset[int] = frozenset()
    max_concurrent_streams: int = 100
    #: Seconds before each answer.
    delay: float = 0.0
    #: Send GOAWAY and close once the connection has been idle this long.
    close_when_idle_for: float | None = None
    #: Close at once (RST when unread data is left) instead of nginx's lingering close.
    abrupt_close: bool = False
    #: For these stream ids: response HEADERS and part of the body, then GOAWAY(0) and close.
    goaway_mid_response: frozenset[int] = frozenset()
    #: On the first request: send GOAWAY(last_stream_id=0) and close, before reading its body.
    goaway_on_headers: bool = False
    #: Break the protocol on the first request: "window_overflow", "push_promise" or
    #: "continuation_flood".
    violation: str | None = None
    #: Never acknowledge received DATA: the client's flow-control window runs out, and a large
    #: request body stalls mid-write.
    withhold_window: bool = False
    #: Answer with HEADERS and part of the body, then send nothing more (the stream stays open).
    stall_body: bool = False


@dataclass(frozen=True)
class Processed:
    connection: int
    stream_id: int
    method: str
    path: str


@dataclass
class _Conn:
    index: int
    plan: Plan
    writer: asyncio.StreamWriter
    h2: h2.connection.H2Connection
    requests: dict[int, tuple[str, str]] = field(default_factory=dict)
    arrived: list[int] = field(default_factory=list)
    active: int = 0
    goaway_sent: bool = False
    #: The ``last_stream_id`` of the GOAWAY sent: streams up to it are finished, even those
    #: whose request ends after the GOAWAY went out.
    goaway_last: int = 0
    #: Writing is over (FIN sent); what the client still sends is read and dropped.
    lingering: bool = False
    idle_timer: asyncio.TimerHandle | None = None

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)


class H2Server:
    """The server; ``plan(connection_index)`` gives each new connection (0, 1, 2, ...) its
    `Plan`. Use as a context manager."""

    def __init__(self, plan: Callable[[int], Plan] = lambda _: Plan()) -> None:
        self._plan = plan
        self._counter = itertools.count()
        self.processed: list[Processed] = []
        self.connections = 0
        #: The most streams any connection had open at once.
        self.max_active = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="h2server", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> H2Server:
        self._thread.start()
        if not self._ready.wait(_TIMEOUT) or self._server is None:
            raise RuntimeError("h2 test server did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(_TIMEOUT)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        async with self._server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = next(self._counter)
        self.connections += 1
        plan = self._plan(index)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        connection = h2.connection.H2Connection(config=config)
        connection.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: plan.max_concurrent_streams
            },
        )
        conn = _Conn(index, plan, writer, connection)
        connection.initiate_connection()
        conn.flush()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not writer.is_closing():
                timeout = _LINGER if conn.lingering else _TIMEOUT
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    break
                if conn.lingering:
                    continue  # drained and dropped, as nginx's lingering close does
                for event in connection.receive_data(data):
                    self._on_event(conn, event, tasks)
                conn.flush()
        except (OSError, asyncio.TimeoutError, h2.exceptions.ProtocolError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
            writer.close()

    def _on_event(
        self, conn: _Conn, event: h2.events.Event, tasks: set[asyncio.Task[None]]
    ) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers or [])
            method, path = headers[b":method"].decode(), headers[b":path"].decode()
            conn.requests[event.stream_id] = (method, path)
            if conn.plan.goaway_on_headers and not conn.goaway_sent:
                self._send_goaway(conn, 0)
                self._close(conn)
            elif conn.plan.violation is not None and len(conn.requests) == 1:
                self._violate(conn, event.stream_id, conn.plan.violation)
            return
        if isinstance(event, h2.events.DataReceived):
            if not conn.plan.withhold_window:
                conn.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        if not isinstance(event, h2.events.StreamEnded):
            return
        stream_id = event.stream_id
        if stream_id not in conn.requests:
            return
        if conn.goaway_sent:
            if stream_id <= conn.goaway_last:  # promised: finished like the others
                conn.arrived.append(stream_id)
                self._start_answer(conn, stream_id, tasks)
            return  # a stream above last_stream_id: ignored, as RFC 9113 §6.8 allows
        plan = conn.plan
        if stream_id in plan.refuse:
            conn.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        conn.arrived.append(stream_id)
        if stream_id in plan.goaway_mid_response:
            self.processed.append(Processed(conn.index, stream_id, *conn.requests[stream_id]))
            conn.h2.send_headers(stream_id, [(":status", "200"), ("content-length", "100")])
            conn.h2.send_data(stream_id, b"partial")
            self._send_goaway(conn, 0)
            self._close(conn)
        elif plan.goaway_after is None:
            self._start_answer(conn, stream_id, tasks)
        elif len(conn.arrived) == plan.goaway_after:
            self._send_goaway(conn, plan.goaway_last_stream_id)
            for arrived in conn.arrived:
                if arrived <= plan.goaway_last_stream_id:
                    self._start_answer(conn, arrived, tasks)
            if conn.active == 0:
                self._close_when_finished(conn)

    def _start_answer(self, conn: _Conn, stream_id: int, tasks: set[asyncio.Task[None]]) -> None:
        conn.active += 1
        self.max_active = max(self.max_active, conn.active)
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        task = asyncio.get_running_loop().create_task(self._answer(conn, stream_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _answer(self, conn: _Conn, stream_id: int) -> None:
        if conn.plan.delay:
            await asyncio.sleep(conn.plan.delay)
        method, path = conn.requests[stream_id]
        self.processed.append(Processed(conn.index, stream_id, method, path))
        if conn.plan.stall_body:
            conn.h2.send_headers(stream_id, [(":status", "200"), ("content-length", "100")])
            conn.h2.send_data(stream_id, b"partial")
            conn.flush()
            return  # never finished: the stream stays active
        body = f"{method} {path} conn {conn.index} stream {stream_id}".encode()
        conn.h2.send_headers(stream_id, [(":status", "200"), ("content-length", str(len(body)))])
        conn.h2.send_data(stream_id, body, end_stream=True)
        conn.flush()
        conn.active -= 1
        if conn.active == 0:
            if conn.goaway_sent:
                self._close_when_finished(conn)
            elif conn.plan.close_when_idle_for is not None:
                conn.idle_timer = asyncio.get_running_loop().call_later(
                    conn.plan.close_when_idle_for, self._close_idle, conn
                )

    def _close_when_finished(self, conn: _Conn) -> None:
        """After GOAWAY, with no answer running: close once every stream up to its
        ``last_stream_id`` has been answered. A request the client sent before the GOAWAY
        reached it may still be arriving; one the client never opens is waited for
        `_GOAWAY_GRACE` seconds at most."""
        if all(s in conn.arrived for s in range(1, conn.goaway_last + 1, 2)):
            self._close(conn)
        elif conn.idle_timer is None:
            conn.idle_timer = asyncio.get_running_loop().call_later(
                _GOAWAY_GRACE, lambda: conn.active == 0 and self._close(conn)
            )

    def _close_idle(self, conn: _Conn) -> None:
        if conn.active == 0 and not conn.writer.is_closing():
            self._send_goaway(conn, max(conn.arrived, default=0))
            self._close(conn)

    @staticmethod
    def _close(conn: _Conn) -> None:
        """Close as nginx does (stop writing, drain, then close), or abruptly if planned."""
        conn.flush()
        if conn.plan.abrupt_close or conn.writer.is_closing():
            conn.writer.close()
        elif not conn.lingering:
            conn.lingering = True
            conn.writer.write_eof()

    @staticmethod
    def _violate(conn: _Conn, stream_id: int, violation: str) -> None:
        """Write frames that break RFC 9113, as raw bytes (h2 would refuse to send them)."""
        conn.flush()
        frames: list[Frame]
        if violation == "window_overflow":  # the window may not exceed 2**31 - 1 (§6.9.1)
            frames = [WindowUpdateFrame(0, window_increment=2**31 - 1)]
        elif violation == "push_promise":  # the client's SETTINGS disabled push (§8.4)
            push = PushPromiseFrame(stream_id, promised_stream_id=2, data=b"\x82")
            push.flags.add("END_HEADERS")
            frames = [push]
        elif violation == "continuation_flood":  # a header block that never ends
            frames = [HeadersFrame(stream_id, data=b"\x88")]
            frames += [ContinuationFrame(stream_id, data=b"\x00") for _ in range(1_000)]
        else:
            raise ValueError(f"unknown violation {violation!r}")
        conn.writer.write(b"".join(frame.serialize() for frame in frames))

    @staticmethod
    def _send_goaway(conn: _Conn, last_stream_id: int) -> None:
        conn.flush()
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0)
        conn.writer.write(frame.serialize())
        conn.goaway_sent = True
        conn.goaway_last = last_stream_id
