"""HTTP/2 over one connection: many requests at once, each on a stream, with h2 as the protocol
machine and httpx's `Request`/`Response` at the edge.

**How reading works.** One reader per connection dispatches what arrives to per-stream queues,
and a stream waits only for its own queue:

* under asyncio the reader is the stream's `asyncio.Protocol` callback itself
  (`connect.AsyncioStream`): ``data_received`` feeds h2, appends each event to its stream's
  queue and wakes that stream's future; acknowledgements (SETTINGS, PING, window updates) are
  written from the callback. No task, no lock, nothing read twice; an idle connection notices a
  GOAWAY or a close the moment it arrives.
* under trio (anyio's pull-based streams) a callback cannot read, and a background task would
  need a nursery that outlives every request; so whoever waits reads: a stream takes the read
  lock, reads once, dispatches to every stream's queue, and lets go. A stream whose events a
  previous reader already queued returns without reading.

**Writing.** Requests write under the write timeout. A write that fails or times out marks the
connection failed: it takes no new stream, and nothing more is written on it (under trio a
write cut short may leave half a frame). Under trio a write is shielded from cancellation only
when it has a deadline; cancelled without one, it marks the connection failed. A request that
times out waiting for another stream's write (asyncio's drain lock, trio's write lock) fails
alone: the connection takes no new stream, and the write it waited for goes on. Acknowledgements
(window updates, resets) never make a reader wait on a blocked write: under asyncio they are
buffered; under trio a reader that finds the write lock taken leaves them to its holder, which
writes what h2 has queued before letting go. Under trio a request takes the write lock before
it reads what the server sent ahead of its write, and its own write carries the
acknowledgements that read calls for: the DATA it has just queued goes out under its own write
timeout, not in a quiet write of acknowledgements (whose failure is kept quiet); and a quiet
write lets go of the lock as soon as a request waits for it, so that request writes its DATA
itself. Under asyncio a request waits for the buffer to drain even when the protocol callback
wrote its DATA, with an acknowledgement, during its catch-up. DATA a stream never read (closed
early) is acknowledged on the connection when the stream ends, so the connection's window is
not lost.

**Flow control.** The connection's receive window, and each stream's when its HEADERS are
sent, are opened by 2**24. Received DATA is acknowledged as the caller reads it, but for a
stream's last DATA frame, acknowledged when it arrives (nothing more can come on that stream).

httpcore's `AsyncHTTP2Connection` uses the second design on every backend; the first is simpler
to reason about (the reader never waits for a consumer, events go to the one stream they name)
and costs nothing per read under asyncio. Parts of the protocol handling follow httpcore's
``_async/http2.py`` (BSD-3-Clause, Copyright © 2020, Encode OSS Ltd.): the local SETTINGS, the
2**24 flow-control windows, the request header mapping, DATA chunked to the window and the frame
size.

**What the server did, and did not, process** (RFC 9113 §6.8, §8.7):

* GOAWAY is graceful: h2 closes its state machine on *receiving* GOAWAY (python-hyper/h2#1181);
  `_GracefulH2Connection` keeps it open, so streams at or below ``last_stream_id`` are read to
  their end. After a GOAWAY the connection takes no new stream.
* A stream above ``last_stream_id``, or reset with ``REFUSED_STREAM``, raises an
  `httpx.RemoteProtocolError` caused by `StreamNotProcessed` (the shape httpx gave it when it
  came from httpcore; `_classify.is_not_processed` follows the cause) -- unless the server sent
  anything for it (headers, data, trailers): that evidence beats the GOAWAY's number, and such
  a stream is never "not processed".
* After a connection-level failure (a write that failed, the connection lost) without a GOAWAY
  seen, a stream reads what the server sent before judging, for at most a second: a GOAWAY there
  says which streams it never saw. Not after a timeout (the connection may be alive).
* Before writing (trio) what the server has sent is read first, so a write into a connection the
  server closed is judged by the GOAWAY that preceded the close. Under asyncio the callback has
  already read it.
* One stream's failed write does not fail the streams that are only reading: the connection takes
  no new stream, and the others are decided by what arrives.
* A connection whose preface fails (no SETTINGS in time, or closed before them) raises
  `httpx.ConnectTimeout` / `httpx.ConnectError`: nothing of any request was written.
* Frames that break the protocol (h2's ``ProtocolError`` on what was received) and a server whose
  SETTINGS allow no stream are the server's failure: `httpx.RemoteProtocolError` for every
  stream.

**Capacity.** The pool asks `capacity`: ``min(server's MAX_CONCURRENT_STREAMS, 100)`` minus the
streams placed here, 0 once the connection takes no new stream, and never more in total than the
origin's request limit learned from an earlier GOAWAY (see `capacity`). When the server's
SETTINGS raise its limit after the preface, the connection tells the pool (``limit_raised``),
which gives the new room to the requests waiting for it. Request headers are checked as h2
checks them before h2 opens the stream; a header h2 still refuses half-way leaves the HPACK
state in doubt, so the connection takes no new stream.

**Leases.** The pool counts the requests it placed here in ``leases`` and ``placed``; each ends by
exactly one call of the pool's ``release`` callback: when the response body has been read or
closed, or the request failed or was cancelled at any await. A response closed before its end
resets only its own stream (``CANCEL``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.utilities
import hpack
import httpx
from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hyperframe.frame import RstStreamFrame

from .connect import AsyncioStream, NetworkStream
from .errors import is_not_processed, not_processed
from .hpack import install as install_hpack

if TYPE_CHECKING:
    from hyperframe.frame import Frame, GoAwayFrame

__all__ = ["H2_CONFIG", "LOCAL_MAX_STREAMS", "ConnectionUnavailable", "HTTP2Connection"]

#: How many concurrent streams a connection asks the server to allow (httpcore's value).
LOCAL_MAX_STREAMS = 100
#: The flow-control windows opened for the connection and each stream (httpcore's value).
_WINDOW = 1 << 24
#: How long a stream that failed with its connection reads what the server had sent before the
#: failure, to find a GOAWAY that says whether it was processed.
_GOAWAY_SEARCH_SECONDS = 1.0
#: The most a stream waits for an RST_STREAM or acknowledgement to be written when it ends
#: while cancelled (trio; under asyncio such writes never wait).
_CLOSE_FLUSH_SECONDS = 1.0
#: How many event-loop turns a writer gives the asyncio callback to read what is waiting (a
#: task resumed by the loop runs before the reader callbacks of the same turn: two suffice).
_CATCH_UP_TURNS = 2
#: Request headers HTTP/2 forbids (RFC 9113 §8.2.2); ``host`` becomes ``:authority``.
_DROPPED_HEADERS = frozenset(
    {b"host", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
#: How many streams, open or closed, h2 may hold before its count of open streams drops the
#: closed ones (`_GracefulH2Connection.open_outbound_streams`).
_CULL_AT = 2 * LOCAL_MAX_STREAMS
_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM


class _Configuration(h2.config.H2Configuration):
    """h2's configuration with its options as plain attributes. h2 reads several of them for
    each frame it sends or receives, and `h2.config.H2Configuration` makes every read a call
    of a Python-level descriptor (there to check the type of a value assigned later; this
    module's values are fixed). ``__init__`` stores the options given to it, as h2's does."""

    # Plain class attributes in place of h2's descriptors and property: `__init__`'s
    # assignments then land in the instance's ``__dict__``, read without a call.
    client_side = True
    header_encoding = None
    validate_outbound_headers = True
    normalize_outbound_headers = True
    split_outbound_cookies = False
    validate_inbound_headers = True
    normalize_inbound_headers = True


#: h2's outbound normalization and checks are done once, by `_send_request`: names stripped
#: and lowercased, values stripped, connection-specific headers dropped, credentials never
#: indexed (what h2's `normalize_outbound_headers` does), then h2's `validate_outbound_headers`.
#: Its inbound normalization (``cookie`` fields joined into one, last) is done by `_read_head`.
H2_CONFIG = _Configuration(
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    header_encoding=None,
)
#: Request headers sent as HPACK "never indexed" fields, as h2's normalization marks them
#: (``cookie`` too when shorter than 20 bytes).
_SECRET_HEADERS = frozenset({b"authorization", b"proxy-authorization"})
#: How h2 validates a request's headers (`h2.utilities.validate_outbound_headers`).
_REQUEST_HEADER_FLAGS = h2.utilities.HeaderValidationFlags(
    is_client=True, is_trailer=False, is_response_header=False, is_push_promise=False
)

#: The events addressed to one stream, by their type (h2's event classes have no subclasses),
#: and what each is: evidence that the server processed the stream (it answered, whatever a
#: later GOAWAY says), something the stream's reader consumes, or both; and DATA.
_ANSWER = 1
_QUEUE = 2
_DATA = 4
_STREAM_EVENTS: dict[type[h2.events.Event], int] = {
    h2.events.ResponseReceived: _ANSWER | _QUEUE,
    h2.events.DataReceived: _ANSWER | _QUEUE | _DATA,
    h2.events.StreamEnded: _QUEUE,
    h2.events.StreamReset: _QUEUE,
    h2.events.InformationalResponseReceived: _ANSWER,
    h2.events.TrailersReceived: _ANSWER,
}


class ConnectionUnavailable(Exception):
    """The connection cannot take this request, and nothing of it was sent: the pool places it
    on another connection. Never seen outside the pool."""


class _GracefulH2Connection(h2.connection.H2Connection):
    """An h2 client connection that keeps receiving after the server's GOAWAY.

    h2 moves its connection state machine to CLOSED on a received GOAWAY, after which every
    frame for the streams the server is still finishing raises ``ProtocolError``. RFC 9113 §6.8
    says those streams "might still complete successfully"; this subclass reports the GOAWAY as
    `h2.events.ConnectionTerminated` and leaves the state machine open. `HTTP2Connection` opens
    no stream after a GOAWAY.
    """

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _receive_frame(self, frame: Frame) -> list[Event]:
        """h2's own `_receive_frame` (h2 4.x), without its first line: a trace log of
        ``repr(frame)``, built for every frame received although h2's default logger drops it
        (about 6 % of this layer's instructions per request). `tests/test_h2_machine.py` checks
        that this body is h2's, that line aside, for the h2 installed."""
        events: list[Event]
        try:
            # I don't love using __class__ here, maybe reconsider it.
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # If the stream was closed by RST_STREAM, we just send a RST_STREAM
            # to the remote peer. Otherwise, this is a connection error, and so
            # we will re-raise to trigger one.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            # The stream ID seems invalid. This may happen when the closed
            # stream has been cleaned up, or when the remote peer has opened a
            # new stream with a higher stream ID than this one, forcing it
            # closed implicitly.
            #
            # Check how the stream was closed: depending on the mechanism, it
            # is either a stream error or a connection error.
            if self._stream_is_closed_by_reset(e.stream_id):
                # Closed by RST_STREAM is a stream error.
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                # Closed by END_STREAM is a connection error.
                raise StreamClosedError(e.stream_id) from e
            else:
                # Closed implicitly, also a connection error, but of type
                # PROTOCOL_ERROR.
                raise
        else:
            self._prepare_for_sending(frames)

        return events

    @property
    def open_outbound_streams(self) -> int:
        """At least the number of open outbound streams, and exactly it whenever that could
        reach the server's limit.

        h2 asks for it once per stream it opens (`send_headers` refuses a stream beyond the
        server's ``MAX_CONCURRENT_STREAMS``), and h2's count walks every stream it holds,
        dropping the closed ones: at 50 streams in flight, a walk of 50 per request. While
        h2 holds fewer streams than the server allows (and fewer than ``_CULL_AT``), their
        number is already below the limit, so it is returned as is and h2's check comes out
        the same; otherwise h2 counts, and drops the closed streams (at most one walk of
        ``_CULL_AT`` streams per ``_CULL_AT`` - 100 opened: the pool never places more than
        100 at once). Nothing else reads it."""
        held = len(self.streams)
        if held < _CULL_AT and held < self.remote_settings.max_concurrent_streams:
            return held
        count: int = h2.connection.H2Connection.open_outbound_streams.fget(self)  # type: ignore[attr-defined]
        return count

    def _flow_control_change_from_settings(self, old_value: int | None, new_value: int) -> None:
        """The server's SETTINGS changed INITIAL_WINDOW_SIZE: h2 moves the send window of
        every stream it holds by the difference, and fails the connection (FLOW_CONTROL_ERROR)
        if one passes 2**31 - 1. The closed streams `open_outbound_streams` leaves in h2's
        hands are dropped first, as h2's own count drops them: a closed stream's window (one
        the server opened to the maximum, say) is no reason to fail the connection."""
        h2.connection.H2Connection.open_outbound_streams.fget(self)  # type: ignore[attr-defined]
        super()._flow_control_change_from_settings(old_value, new_value)


class _Expired(Exception):
    """A wait passed its timeout (mapped to httpx's timeouts by the waiter)."""


class _Stream:
    """One request's stream: the events the reader queued for it, and how to wake it."""

    __slots__ = (
        "answered",
        "closed",
        "deadline",
        "ended",
        "events",
        "id",
        "opened",
        "signal",
        "waiter",
    )

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.events: collections.deque[h2.events.Event] = collections.deque()
        #: The server sent something for this stream: it was processed.
        self.answered = False
        #: Something changed (an event, a window update, GOAWAY, the connection's end).
        self.signal = False
        self.waiter: asyncio.Future[None] | None = None
        #: (asyncio) When the wait in progress times out (`loop.time()`), or None.
        self.deadline: float | None = None
        self.closed = False
        #: Its HEADERS were given to h2 (the server may know the stream: it can be reset).
        self.opened = False
        #: The reader has reached the end of the response (`read_body`).
        self.ended = False


class HTTP2Connection:
    """One HTTP/2 connection, shared by up to `capacity` more requests at once."""

    #: Pool bookkeeping: requests placed here and not yet ended; requests placed here ever.
    leases: int
    placed: int

    def __init__(
        self,
        stream: NetworkStream,
        key: Any,
        keepalive_expiry: float | None,
        release: Callable[[HTTP2Connection], None],
        request_limits: MutableMapping[Any, int],
        limit_raised: Callable[[HTTP2Connection], None] = lambda _: None,
    ) -> None:
        self._stream = stream
        self.key = key
        self._keepalive_expiry = keepalive_expiry
        self._release = release
        #: Told when the server's SETTINGS raise MAX_CONCURRENT_STREAMS after `start` (the
        #: pool gives the new room to the requests waiting for it).
        self._limit_raised = limit_raised
        self._started = False
        #: Learned per-origin request limits, shared by a pool's connections.
        self._limits = request_limits
        self.leases = 0
        self.placed = 0
        self.expires_at = float("inf")
        self._finished = 0
        self._streams: dict[int, _Stream] = {}
        self._setup = _Stream(0)  # woken by the server's SETTINGS (and by failures)
        self._settings_received = False
        self._goaway: h2.events.ConnectionTerminated | None = None
        #: Why the connection cannot go on (read failure, end of stream, protocol violation).
        self._failure: httpx.TransportError | None = None
        self._write_failed = False
        #: A request gave up waiting for another stream's write (`_acquire`), or h2 refused a
        #: stream the pool had room for (`_send_request`): no new stream, but writing goes on.
        self._congested = False
        #: h2 refused a request's headers half-way: the HPACK state is no longer trusted.
        self._broken = False
        self._exhausted = False  # no stream ids left
        self._closed = False
        self._asyncio = isinstance(stream, AsyncioStream)
        self._loop = asyncio.get_running_loop() if self._asyncio else None
        # asyncio: one drain waiter at a time; anyio: one reader and one writer at a time.
        self._drain_lock = asyncio.Lock() if self._asyncio else None
        #: asyncio: a write of what h2 has queued is scheduled for the end of this turn.
        self._send_scheduled = False
        self._read_lock = None if self._asyncio else anyio.Lock()
        #: asyncio: the streams waiting with a deadline, and one timer for all of them, armed
        #: for the earliest deadline or earlier (`_on_timer`), instead of a timer made and
        #: cancelled for every wait.
        self._timed: set[_Stream] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._write_lock = None if self._asyncio else anyio.Lock()

        state = self._h2 = _GracefulH2Connection(config=H2_CONFIG)
        install_hpack(state)  # HPACK memoized, no dynamic table of our own (`hpack.py`)
        state.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: LOCAL_MAX_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
                # Not INITIAL_WINDOW_SIZE: each stream's window is opened by a WINDOW_UPDATE
                # (`_send_request`), as httpcore does. With the window in SETTINGS instead,
                # Hypercorn 0.18 left hundreds of app tasks stuck in `drain` after connections
                # it closed by GOAWAY (`benchmarks/goaway.py`'s Hypercorn row: 3 runs of 3);
                # so it did when a stream's window was opened only once its first DATA came
                # without END_STREAM (2 runs of 2), though that saves a WINDOW_UPDATE for
                # most responses.
            },
        )
        # Some servers balk at a setting the original RFC did not define (as httpcore notes).
        del state.local_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL]
        state.initiate_connection()
        state.increment_flow_control_window(_WINDOW)
        self._max_streams = min(state.remote_settings.max_concurrent_streams, LOCAL_MAX_STREAMS)
        stream.set_sink(self)  # last: what arrived early is dispatched now

    # --- what the pool asks ---------------------------------------------------------------------

    @property
    def stream(self) -> NetworkStream:
        """The byte stream the connection runs on (the pool closes an anyio one with an
        await)."""
        return self._stream

    @property
    def usable(self) -> bool:
        """Whether a new stream may be opened here (no GOAWAY, no failure, not closed)."""
        return (
            self._goaway is None
            and self._failure is None
            and not self._write_failed
            and not self._congested
            and not self._broken
            and not self._exhausted
            and not self._closed
        )

    @property
    def max_streams(self) -> int:
        """How many streams may be open at once: the server's limit capped at ours (kept up
        to date by `data_received`, on each SETTINGS from the server)."""
        return self._max_streams

    @property
    def capacity(self) -> int:
        """How many more requests the pool may place here now.

        A server that closes connections after N requests (nginx's ``keepalive_requests``, a
        load balancer's limit) says so only by GOAWAY, after the pool may have placed far more
        streams here; those are refused and resent, and at high concurrency a resent request
        could be refused again and again. So a GOAWAY's ``last_stream_id`` is remembered as the
        origin's request limit, and no connection is given more requests in total. A connection
        that finishes that many without a GOAWAY shows the limit stale: it is forgotten.
        """
        if not self.usable:
            return 0
        capacity = self._max_streams - self.leases
        limits = self._limits
        if limits:
            limit = limits.get(self.key)
            if limit is not None:
                left = limit - self.placed
                if left <= 0 and self._finished >= limit:
                    limits.pop(self.key, None)
                else:
                    capacity = min(capacity, left)
        return capacity

    def is_reusable(self, now: float) -> bool:
        """For an idle connection (no lease): usable and not expired. What the server sent
        meanwhile (a GOAWAY, a close) and the event loop has not delivered yet is read by the
        request before it writes (`_catch_up`), which backs out if the connection is done
        for."""
        return self.usable and now < self.expires_at

    def went_idle(self) -> None:
        """The last lease ended: the keep-alive expiry starts."""
        if self._keepalive_expiry is not None:
            self.expires_at = time.monotonic() + self._keepalive_expiry

    def close(self) -> None:
        """Close at once (safe in any state, even while cancelled); open streams fail."""
        if not self._closed:
            self._closed = True
            if self._failure is None:
                self._failure = httpx.ReadError("the connection was closed")
            self._wake_all()
            if self._timer is not None:
                self._timer.cancel()  # every wait has been woken: it ends
                self._timer = None
        self._stream.abort()

    async def aclose(self) -> None:
        self.close()
        await self._stream.aclose()

    # --- connect.Sink: what the server sent ------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            failure = httpx.RemoteProtocolError(f"the server broke the HTTP/2 protocol: {exc!r}")
            failure.__cause__ = exc
            self._fail(failure)
            return
        streams = self._streams
        kinds = _STREAM_EVENTS
        event: Any
        for event in events:
            kind = kinds.get(type(event))
            if kind is not None:
                s = streams.get(event.stream_id)
                if s is None:
                    if kind & _DATA:
                        # A stream already ended here: give its window back to the connection.
                        self._give_back(event.flow_controlled_length, event.stream_id)
                    continue
                if kind & _ANSWER:
                    s.answered = True
                if kind & _QUEUE:
                    s.events.append(event)
                    _wake(s)
                if kind & _DATA and event.stream_ended is not None:
                    # The stream's last DATA: nothing more can come on it, so its bytes go back
                    # to the connection's window now, while h2 still holds the stream (once h2
                    # has dropped a closed stream, acknowledging costs two exceptions inside
                    # h2). `read_body` and `finish` skip them.
                    self._give_back(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                self._wake_all()  # senders waiting for window
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._settings_received = True
                # h2 has applied the server's SETTINGS (and acknowledged them) by now.
                self._max_streams = min(
                    self._h2.remote_settings.max_concurrent_streams, LOCAL_MAX_STREAMS
                )
                self._wake_all()
                changed = event.changed_settings.get(
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
                )
                if (
                    self._started
                    and changed is not None
                    and (changed.original_value or 0) < changed.new_value
                ):
                    self._limit_raised(self)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._note_goaway(event)
        if self._asyncio:
            self._write_queued()  # acknowledgements (SETTINGS, PING) go at once

    def eof_received(self, exc: BaseException | None) -> None:
        if self._failure is None:
            if exc is None:
                self._fail(httpx.RemoteProtocolError("Server disconnected"))
            else:
                failure = httpx.ReadError(str(exc) or type(exc).__name__)
                failure.__cause__ = exc
                self._fail(failure)

    def _give_back(self, size: int | None, stream_id: int) -> None:
        """Acknowledge ``size`` bytes of DATA received on ``stream_id``: h2 gives them back
        to the connection's window (and the stream's, while it is open) by WINDOW_UPDATE when
        enough have been acknowledged."""
        if size:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.acknowledge_received_data(size, stream_id)

    def _fail(self, failure: httpx.TransportError) -> None:
        self._failure = failure
        self._wake_all()

    def _note_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self._goaway = event
        accepted = ((event.last_stream_id or 0) + 1) // 2  # client streams are 1, 3, 5, ...
        # Learned only from a GOAWAY that cuts into traffic: one on an idle connection is an
        # idle timeout (or a shutdown), not a request limit.
        if self._streams and event.error_code == _NO_ERROR and accepted > 0:
            self._limits[self.key] = accepted
        self._wake_all()

    def _wake_all(self) -> None:
        _wake(self._setup)
        for s in self._streams.values():
            _wake(s)

    # --- waiting and writing ------------------------------------------------------------------

    async def _wait(self, s: _Stream, seconds: float | None, kind: type[Exception]) -> None:
        """Wait until something changes for ``s`` (or, under trio, until one read is done).
        Raises ``kind`` (a timeout) after ``seconds``."""
        if s.signal:
            s.signal = False
            return
        if self._asyncio:
            loop = self._loop
            assert loop is not None
            future = s.waiter = loop.create_future()
            if seconds is not None:
                deadline = s.deadline = loop.time() + seconds
                self._timed.add(s)
                timer = self._timer
                if timer is None or timer.when() > deadline:
                    if timer is not None:
                        timer.cancel()
                    self._timer = loop.call_at(deadline, self._on_timer)
            try:
                await future
            except _Expired:
                raise kind(_timeout_message(kind)) from None
            finally:
                s.waiter = None
                s.signal = False
                if s.deadline is not None:
                    s.deadline = None
                    self._timed.discard(s)
            return
        lock = self._read_lock
        assert lock is not None
        try:
            with anyio.fail_after(seconds):
                async with lock:
                    if s.signal or self._failure is not None:
                        s.signal = False
                        return
                    await self._stream.receive(None)
        except TimeoutError:
            raise kind(_timeout_message(kind)) from None
        s.signal = False
        await self._flush_quietly(seconds)

    def _on_timer(self) -> None:
        """(asyncio) Time out the waits whose deadline has passed, and arm the timer for the
        earliest of the others. (A timer armed for a wait that has ended since finds nothing to
        do, or re-arms for a later deadline.)"""
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        earliest: float | None = None
        for s in list(self._timed):
            deadline, waiter = s.deadline, s.waiter
            if deadline is None or waiter is None or waiter.done():
                continue
            if deadline <= now:
                waiter.set_exception(_Expired())
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._timer = loop.call_at(earliest, self._on_timer)

    async def _catch_up(self, *, answer: bool = True) -> None:
        """Read what the server sent and nobody has read yet (a GOAWAY, a close, SETTINGS or
        PING) before anything more is written: a GOAWAY there says which streams the server
        will not process, and a write that fails on a closed socket would discard it (asyncio
        drops unread data then). Never blocks on a read.

        Under trio what the read calls for (a SETTINGS or PING acknowledgement) is written
        quietly (`_flush_quietly`), unless ``answer`` is False: then the caller holds the
        write lock and its own write carries it."""
        stream = self._stream
        if isinstance(stream, AsyncioStream):
            # The protocol callback reads; let the event loop run it.
            for _ in range(_CATCH_UP_TURNS):
                if not stream.has_unread():
                    return
                await anyio.lowlevel.checkpoint()
            return
        lock = self._read_lock
        assert lock is not None
        if lock.locked() or self._failure is not None:
            return
        if stream.is_alive():  # on the anyio stream: nothing waiting to be read
            return
        with anyio.move_on_after(_GOAWAY_SEARCH_SECONDS):
            async with lock:
                if self._failure is None and not stream.is_alive():
                    await stream.receive(None)
        if answer:
            await self._flush_quietly(_CLOSE_FLUSH_SECONDS)

    async def _flush(self, seconds: float | None, *, catch_up: bool = True) -> None:
        """Write what h2 has to send. Raises `httpx.WriteError` or `httpx.WriteTimeout`; either
        marks the connection failed (it takes no new stream), and nothing more is written on
        it: under trio the write may have stopped half-way through a frame."""
        stream = self._stream
        if isinstance(stream, AsyncioStream):
            if catch_up:
                await self._catch_up()
            if self._write_failed:
                raise httpx.WriteError("an earlier write on this connection failed")
            out = self._h2.data_to_send()
            # With nothing left to write, what the caller queued may be gone already: written
            # by the protocol callback during the catch-up, with the acknowledgement of what it
            # read (SETTINGS, PING). It is in the buffer all the same, and waited for under this
            # write timeout (else the request reads its response while its body has not left).
            paused = stream.write(out) if out else catch_up and stream.writing_paused
            if paused:
                drain_lock = self._drain_lock
                assert drain_lock is not None
                # Another stream waiting for the drain holds the lock: the write timeout
                # covers that wait too (giving up fails this request only, `_acquire`).
                await self._acquire(drain_lock, seconds)
                try:
                    await stream.send(b"", seconds)  # waits for the buffer to drain
                except (httpx.WriteError, httpx.WriteTimeout):
                    self._write_failed = True
                    self._wake_all()
                    raise
                finally:
                    drain_lock.release()
            return
        if self._write_failed:
            raise httpx.WriteError("an earlier write on this connection failed")
        lock = self._write_lock
        assert lock is not None
        await self._acquire(lock, seconds)
        try:
            if catch_up:
                # Under the write lock, and answered by this write: what this stream queued
                # (its DATA) goes out under its own write timeout, never in a quiet flush (this
                # stream's or another's: one second, its failure kept quiet), which would turn
                # a blocked write into "an earlier write failed" after a second.
                await self._catch_up(answer=False)
            await self._send_pending(seconds)
        finally:
            lock.release()

    async def _acquire(self, lock: asyncio.Lock | anyio.Lock, seconds: float | None) -> None:
        """Take a write lock within the write timeout. Timed out, this request fails with
        `httpx.WriteTimeout` and the connection takes no new stream (its writes are slower
        than a request allows), but nothing failed on the wire: the writer holding the lock
        goes on (its own write timeout may be longer), and what this stream queued is written
        after it (under asyncio it already was), followed by the stream's reset."""
        if seconds is None:
            await lock.acquire()
            return
        with anyio.move_on_after(seconds):
            await lock.acquire()
            return
        self._congested = True
        raise httpx.WriteTimeout("timed out while writing")

    async def _send_pending(self, seconds: float | None, *, quiet: bool = False) -> None:
        """(trio, holding the write lock) Write what h2 has to send, including what other
        streams queued meanwhile (acknowledgements that found the lock taken skip writing).

        A ``quiet`` write (`_flush_quietly`) lets go as soon as a request waits for the lock:
        what that request queued (its DATA) is written by its own write, under its write
        timeout, not under this one's with the failure kept quiet."""
        stream = self._stream
        lock = self._write_lock
        assert lock is not None
        while not self._write_failed:
            if quiet and lock.statistics().tasks_waiting:
                return
            out = self._h2.data_to_send()
            if not out:
                return
            done = False
            try:
                if seconds is None:
                    # No deadline: the caller's cancellation must still end the write (a
                    # server that does not read would hold it forever).
                    await stream.send(out, None)
                else:
                    # Cut short, a write would leave a partial frame (or TLS record) on the
                    # wire for every stream: finish it, within the write timeout.
                    with anyio.CancelScope(shield=True):
                        await stream.send(out, seconds)
                done = True
            except (httpx.WriteError, httpx.WriteTimeout):
                self._write_failed = True
                self._wake_all()
                raise
            finally:
                if not done and not self._write_failed:
                    # Cancelled mid-write: a frame may be cut, so nothing more is written here
                    # (the server waits for the rest of it; streams only reading go on, as
                    # after a write timeout) and the connection takes no new stream.
                    self._write_failed = True
                    self._wake_all()
        raise httpx.WriteError("an earlier write on this connection failed")

    def _send_soon(self) -> bool:
        """(asyncio) Write what h2 has queued at the end of this turn of the event loop,
        with what other streams queue meanwhile: at concurrency, one TLS record and one system
        call carry many requests' HEADERS. False when the caller must write now and wait for
        the buffer to drain (not asyncio, or the buffer is over its high-water mark), or
        raise the failure of an earlier write (`_flush`)."""
        stream = self._stream
        if not isinstance(stream, AsyncioStream) or stream.writing_paused or self._write_failed:
            return False
        self._schedule_send()
        return True

    def _schedule_send(self) -> None:
        if not self._send_scheduled:
            self._send_scheduled = True
            loop = self._loop
            assert loop is not None
            loop.call_soon(self._send_now)

    def _send_now(self) -> None:
        self._send_scheduled = False
        self._write_queued()

    def _write_queued(self) -> None:
        """(asyncio) Write what h2 has queued, without waiting for the buffer to drain."""
        out = self._h2.data_to_send()
        if out:
            stream = self._stream
            assert isinstance(stream, AsyncioStream)
            stream.write(out)  # nothing on a closed stream: its sink has been told

    async def _flush_quietly(self, seconds: float | None) -> None:
        """Write acknowledgements and resets without ever making a reader wait on a blocked
        write: under asyncio they are buffered (no wait for the buffer to drain); under trio
        they are left to the writer holding the write lock (it writes them after its own), or
        written within ``seconds``. A failure is left to whoever writes or reads next (a
        reader's stream is decided by what the server sent)."""
        if self._write_failed:
            return
        stream = self._stream
        if isinstance(stream, AsyncioStream):
            self._schedule_send()
            return
        lock = self._write_lock
        assert lock is not None
        try:
            lock.acquire_nowait()
        except anyio.WouldBlock:
            return
        try:
            with contextlib.suppress(httpx.TransportError):
                await self._send_pending(seconds, quiet=True)
        finally:
            lock.release()

    # --- one request ----------------------------------------------------------------------------

    async def start(self, seconds: float | None) -> None:
        """Send the connection preface and wait for the server's SETTINGS (RFC 9113 §3.4), so
        that its MAX_CONCURRENT_STREAMS is known before streams are placed here."""
        s = self._setup
        # Nothing of a request is written before the server's SETTINGS: a preface that fails
        # is a connection that failed (`_classify`: NOT_SENT, safe to send again).
        try:
            await self._flush(seconds, catch_up=False)
            while not self._settings_received:
                if self._failure is not None:
                    raise _copy(self._failure)
                await self._wait(s, seconds, httpx.ReadTimeout)
        except httpx.TimeoutException as exc:
            raise httpx.ConnectTimeout(f"the server's HTTP/2 preface did not come: {exc}") from exc
        except httpx.TransportError as exc:
            raise httpx.ConnectError(f"the HTTP/2 preface failed: {exc}") from exc
        if self._h2.remote_settings.max_concurrent_streams == 0:
            # Legal only as a pause, with no way to learn when it ends: a server that allows
            # no stream is failing, like one that refuses connections.
            self._failure = httpx.RemoteProtocolError(
                "the server's SETTINGS allow no streams (MAX_CONCURRENT_STREAMS = 0)"
            )
            raise _copy(self._failure)
        self._started = True

    async def handle(self, request: httpx.Request, timeouts: dict[str, Any]) -> httpx.Response:
        """Send ``request`` on a new stream and read the response head. The caller holds a
        lease; it ends with the response (or here, if this raises)."""
        try:
            if not self._asyncio or not self._streams:
                # Under asyncio a busy connection's callback is reading all along; an idle one
                # may have a GOAWAY or a close the event loop has not delivered yet.
                await self._catch_up()
            if not self.usable:
                raise ConnectionUnavailable()
            try:
                stream_id = self._h2.get_next_available_stream_id()
            except h2.exceptions.NoAvailableStreamIDError:  # pragma: no cover - 2**30 streams
                self._exhausted = True
                raise ConnectionUnavailable() from None
        except BaseException:
            self._release(self)
            raise
        # No await between taking the id and sending the HEADERS that open the stream (the
        # start of `_send_request`): h2 gives the same id to whoever asks until then.
        s = self._streams[stream_id] = _Stream(stream_id)
        read_timeout = timeouts.get("read")
        try:
            try:
                await self._send_request(s, request, timeouts.get("write"))
            except httpx.WriteError:
                if not s.events:
                    raise
                # The server answered before the request was all written (an early response,
                # or an answer read just before its close): the answer decides.
            status, headers = await self._read_head(s, read_timeout)
        except ConnectionUnavailable:
            self._streams.pop(stream_id, None)
            self._release(self)
            raise
        except BaseException as exc:
            failure: BaseException = exc
            try:
                if isinstance(exc, Exception) and not isinstance(exc, httpx.TimeoutException):
                    await self._read_before_judging(s, exc)
                    failure = self._explain(s, exc)
            finally:
                flush = self.finish(s)  # no await before it: the lease ends even if cancelled
            if flush:
                await self.flush_after_finish()
            if failure is exc:
                raise
            raise failure from failure.__cause__  # "not processed"; its context is ``exc``
        response = httpx.Response(
            status,
            stream=_ResponseStream(self, s, read_timeout),
            extensions={"http_version": b"HTTP/2", "stream_id": stream_id},
        )
        # httpx finds the headers' encoding on first use by decoding every name and value;
        # for all-ASCII headers (nearly all) say so at once (httpx's public Headers API).
        response.headers = httpx.Headers(headers, "ascii" if _all_ascii(headers) else None)
        return response

    async def _send_request(
        self, s: _Stream, request: httpx.Request, seconds: float | None
    ) -> None:
        url = request.url
        authority = b""
        has_body = False
        pseudo = False  # a user header named like a pseudo-header (h2 refuses those)
        fields: list[tuple[bytes, bytes]] = []
        for name, value in request.headers.raw:
            # Names and values (the Host value too: it becomes ``:authority``) stripped, as
            # h2's normalization strips them: surrounding whitespace is a protocol error to the
            # server, which then closes the connection (every stream on it).
            lowered = name.strip().lower()
            value = value.strip()
            if lowered[:1] == b":":
                pseudo = True
            elif lowered == b"host":
                authority = value
            elif lowered == b"content-length" or lowered == b"transfer-encoding":
                has_body = True
            if lowered in _DROPPED_HEADERS:
                continue
            if lowered == b"te" and value.lower() != b"trailers":
                continue  # the one value HTTP/2 allows (§8.2.2)
            if lowered in _SECRET_HEADERS or (lowered == b"cookie" and len(value) < 20):
                # Kept out of both sides' HPACK tables (an attacker who can add headers of
                # their own could otherwise guess a credential from the compressed size).
                fields.append(hpack.NeverIndexedHeaderTuple(lowered, value))
            else:
                fields.append((lowered, value))
        # CR, LF and NUL are not allowed in a field (RFC 9113 §8.2.1); sent anyway, the server
        # answers with a connection error that fails every stream on the connection. (h11
        # refuses them for HTTP/1.1 alike.) The message quotes nothing: it may be a credential.
        if not _clean(b" ".join([authority, *itertools.chain.from_iterable(fields)])):
            raise httpx.LocalProtocolError(
                "invalid HTTP/2 request: a header name or value contains CR, LF or NUL"
            )
        method = request.method.encode("ascii")
        path = url.raw_path
        headers = [
            (b":method", method),
            (b":authority", authority or url.netloc),
            (b":scheme", url.scheme.encode("ascii")),
            (b":path", path),
            *fields,
        ]
        if pseudo or not path or method == b"CONNECT":
            # What h2 would check while encoding (its own outbound checks and normalization
            # are off, `H2_CONFIG`), checked before h2 opens the stream: h2 feeds the headers
            # before the bad one to the HPACK encoder, and only then raises. The rest of its
            # checks hold by construction above: pseudo-headers first, once each; no
            # connection-specific header; ``te`` only as ``trailers``; no ``host``.
            try:
                for _ in h2.utilities.validate_outbound_headers(headers, _REQUEST_HEADER_FLAGS):
                    pass
            except h2.exceptions.ProtocolError as exc:
                raise httpx.LocalProtocolError(f"invalid HTTP/2 request: {exc}") from exc
        state = self._h2
        try:
            state.send_headers(s.id, headers, end_stream=not has_body)
        except h2.exceptions.TooManyStreamsError:
            # The server lowered its limit since the pool placed this request: nothing sent.
            if self.leases <= self._max_streams:
                # Yet by the pool's count there was room (this request's lease included): h2
                # holds a stream open that no lease here accounts for. Placed again, the
                # request would come straight back here, and round again without a pause; so
                # the connection takes no new stream (those in flight finish).
                self._congested = True
            raise ConnectionUnavailable() from None
        except h2.exceptions.ProtocolError as exc:
            # Refused half-way: the encoder's table may no longer match the server's. The
            # connection takes no new stream; those in flight finish (nothing of this one
            # was sent, so it is not reset either).
            self._broken = True
            raise httpx.LocalProtocolError(f"invalid HTTP/2 request: {exc}") from exc
        s.opened = True
        state.increment_flow_control_window(_WINDOW, stream_id=s.id)
        if not has_body and self._send_soon():
            return
        await self._flush(seconds, catch_up=False)  # `handle` has just caught up
        if not has_body:
            return
        body = request.stream
        if type(body) is httpx.ByteStream:
            try:
                content = request.content
            except httpx.RequestNotRead:
                # A request built with ``stream=`` (httpx's redirects are): bytes in memory.
                content = await request.aread()
            await self._send_data(s, content, seconds)
        else:
            assert isinstance(body, httpx.AsyncByteStream), (
                "a sync body cannot go through an async transport"
            )
            chunks = body.__aiter__()
            try:
                async for chunk in chunks:
                    if not await self._send_data(s, chunk, seconds):
                        break
            finally:
                # Closed when a write fails mid-body: an async generator abandoned half-way
                # is only finalised by the garbage collector (and trio warns about it).
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
        if self._can_send(s):
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                state.end_stream(s.id)
            await self._flush(seconds)

    def _can_send(self, s: _Stream) -> bool:
        """False once the server has ended or reset the stream (it answered early): the rest
        of the body is not sent, and the answer is read."""
        return not any(
            isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in s.events
        )

    async def _send_data(self, s: _Stream, data: bytes, seconds: float | None) -> bool:
        """Send ``data`` within the flow-control windows and the frame size (as many frames as
        the window allows, then one write). False when the server ended the stream first."""
        state = self._h2
        # Frames are cut from a view: slicing the bytes would copy what is left of the body
        # for every frame (quadratic: a 32 MB body held the event loop for seconds).
        view = memoryview(data)
        offset, end = 0, len(view)
        while offset < end:
            if not self._can_send(s):
                return False
            self._raise_failure(s, writing=True)
            try:
                window = state.local_flow_control_window(s.id)
                if window <= 0:
                    await self._wait(s, seconds, httpx.WriteTimeout)
                    continue
                frame = state.max_outbound_frame_size
                while offset < end and window > 0:
                    size = min(end - offset, window, frame)
                    state.send_data(s.id, view[offset : offset + size])
                    offset += size
                    window -= size
            except h2.exceptions.StreamClosedError:
                return False
            await self._flush(seconds)
        return True

    def _raise_failure(self, s: _Stream, *, writing: bool = False) -> None:
        """Raise what keeps stream ``s`` from going on: a GOAWAY that excludes it (not
        processed), a GOAWAY with an error, or the connection's failure."""
        goaway = self._goaway
        if goaway is not None:
            if not s.answered and s.id > (goaway.last_stream_id or 0):
                raise not_processed(
                    f"HTTP/2 stream {s.id} is above the last_stream_id "
                    f"({goaway.last_stream_id}) of the server's GOAWAY: not processed"
                )
            if goaway.error_code != _NO_ERROR:
                raise httpx.RemoteProtocolError(
                    f"the server closed the connection: GOAWAY({goaway.error_code!r}, "
                    f"last_stream_id={goaway.last_stream_id})"
                )
        if self._failure is not None:
            raise _copy(self._failure)
        if writing and self._write_failed:
            raise httpx.WriteError("an earlier write on this connection failed")

    async def _read_head(
        self, s: _Stream, seconds: float | None
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        events = s.events
        while True:
            while events:
                event = events[0]
                if isinstance(event, h2.events.ResponseReceived):
                    events.popleft()
                    status = None
                    headers = []
                    cookies = None
                    for name, value in event.headers or ():
                        if name == b":status":
                            status = value
                        elif name == b"cookie":
                            if cookies is None:
                                cookies = [value]
                            else:
                                cookies.append(value)
                        elif not name.startswith(b":"):
                            headers.append((name, value))
                    if cookies is not None:
                        # h2's inbound normalization (off, `H2_CONFIG`): ``cookie`` fields
                        # joined into one, after the others (RFC 9113 §8.2.3).
                        headers.append((b"cookie", b"; ".join(cookies)))
                    return _status_code(status), headers
                if isinstance(event, h2.events.StreamReset):
                    raise self._reset_error(s, event)  # `finish` gives back unread DATA
                events.popleft()  # DATA or the end before any HEADERS: h2 refuses those
            self._raise_failure(s)
            await self._wait(s, seconds, httpx.ReadTimeout)

    async def read_body(self, s: _Stream, seconds: float | None) -> bytes | None:
        """The next part of the body, or None at its end. ``s.ended`` turns True with the last
        part when the end has arrived with it."""
        events = s.events
        while True:
            chunks: list[bytes] = []
            acknowledged = 0
            while events:
                event = events[0]
                if isinstance(event, h2.events.DataReceived):
                    events.popleft()
                    if event.stream_ended is None:  # the last DATA was acknowledged on arrival
                        acknowledged += event.flow_controlled_length or 0
                    if event.data:
                        chunks.append(event.data)
                elif isinstance(event, h2.events.StreamEnded):
                    events.popleft()
                    s.ended = True
                    if not chunks:
                        return None
                    break
                elif isinstance(event, h2.events.StreamReset):
                    if chunks:
                        break
                    raise self._reset_error(s, event)
                else:
                    events.popleft()
            if acknowledged:
                self._give_back(acknowledged, s.id)
                await self._flush_quietly(seconds)
            if chunks:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._raise_failure(s)
            await self._wait(s, seconds, httpx.ReadTimeout)

    def _reset_error(self, s: _Stream, event: h2.events.StreamReset) -> httpx.TransportError:
        if event.error_code == _REFUSED and not s.answered:
            return not_processed(
                f"HTTP/2 stream {s.id} was refused by the server (REFUSED_STREAM): not processed"
            )
        return httpx.RemoteProtocolError(
            f"the server reset HTTP/2 stream {s.id} ({event.error_code!r})"
        )

    async def _read_before_judging(self, s: _Stream, exc: Exception) -> None:
        """After a stream failed with its connection and no GOAWAY seen: read what the server
        sent before it went, to its end, for at most a second -- a GOAWAY there says which
        streams it never processed. A write into a socket the server already closed fails
        before any reader has seen the GOAWAY that preceded the close."""
        if self._goaway is not None or is_not_processed(exc):
            return
        if self._failure is None and not self._write_failed:
            return  # the connection is fine: the stream's own failure
        with anyio.move_on_after(_GOAWAY_SEARCH_SECONDS):
            while self._goaway is None and self._failure is None:
                await self._wait(s, None, httpx.ReadTimeout)

    def _explain(self, s: _Stream, exc: Exception) -> BaseException:
        """How stream ``s`` failed with ``exc``: "not processed" only when nothing from the
        server says otherwise."""
        goaway = self._goaway
        if (
            goaway is not None
            and not s.answered
            and s.id > (goaway.last_stream_id or 0)
            and not is_not_processed(exc)
        ):
            return not_processed(
                f"HTTP/2 stream {s.id} is above the last_stream_id "
                f"({goaway.last_stream_id}) of the server's GOAWAY: not processed"
            )
        return exc

    def finish(self, s: _Stream) -> bool:
        """The stream is done with (read, closed early, failed or cancelled): reset it if the
        server may still send on it, and end its lease. Synchronous, so that it happens even
        when the caller is being cancelled. True when a reset or an acknowledgement waits to be
        written (trio)."""
        if s.closed:
            return False
        s.closed = True
        self._streams.pop(s.id, None)
        self._finished += 1
        reset = False
        # DATA queued and never read still counts against the connection's receive window
        # until acknowledged: give it back, or every early close shrinks the window for good
        # (and once it is gone, no response on the connection gets any DATA).
        unread = 0
        for event in s.events:
            if isinstance(event, h2.events.DataReceived) and event.stream_ended is None:
                unread += event.flow_controlled_length or 0
        s.events.clear()
        if unread and self._failure is None and not self._write_failed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.acknowledge_received_data(unread, s.id)
                reset = True  # something to write
        state = self._h2.streams.get(s.id)
        goaway = self._goaway
        if (
            s.opened
            and state is not None
            and not state.closed
            and self._failure is None
            and not self._write_failed
            and (goaway is None or goaway.error_code == _NO_ERROR)  # else it is closing anyway
        ):
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(s.id, h2.errors.ErrorCodes.CANCEL)
                reset = True
        self._release(self)
        if reset and self._asyncio:
            self._schedule_send()
            return False
        return reset

    async def flush_after_finish(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._flush_quietly(_CLOSE_FLUSH_SECONDS)

    async def end_stream(self, s: _Stream) -> None:
        if self.finish(s):
            await self.flush_after_finish()


def _clean(value: bytes) -> bool:
    """No CR, LF or NUL in ``value`` (one pass deleting them is faster than three searches)."""
    return len(value.translate(None, b"\r\n\0")) == len(value)


def _status_code(value: bytes | None) -> int:
    """A response's ``:status``: three digits, 100 or more (RFC 9113 §8.3.2, RFC 9110 §15; h11
    takes the same for HTTP/1.1), or the server broke the protocol. (h2's inbound checks are
    off, `H2_CONFIG`.)"""
    if value is None or len(value) != 3 or not value.isdigit() or value[:1] == b"0":
        shown = "none" if value is None else repr(value[:16])
        raise httpx.RemoteProtocolError(f"the server's response has no valid :status ({shown})")
    return int(value)


def _all_ascii(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:  # noqa: SIM110 - a plain loop is faster than all() here
        if not (name.isascii() and value.isascii()):
            return False
    return True


def _wake(s: _Stream) -> None:
    s.signal = True
    waiter = s.waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _copy(failure: httpx.TransportError) -> httpx.TransportError:
    """A fresh exception per stream (one instance raised in many tasks would collect all their
    tracebacks), chained to the same cause."""
    exc = type(failure)(str(failure))
    exc.__cause__ = failure.__cause__
    return exc


def _timeout_message(kind: type[Exception]) -> str:
    return "timed out while writing" if kind is httpx.WriteTimeout else "timed out while reading"


class _ResponseStream(httpx.AsyncByteStream):
    """A response body: the stream's DATA, acknowledged as the caller reads it."""

    __slots__ = ("_conn", "_stream", "_timeout")

    def __init__(self, conn: HTTP2Connection, s: _Stream, seconds: float | None) -> None:
        self._stream = s
        self._timeout = seconds
        # Held until the body has been read to its end or the response is closed; then None.
        self._conn: HTTP2Connection | None = conn

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        s = self._stream
        try:
            chunk = await conn.read_body(s, self._timeout)
        except BaseException:
            self._conn = None
            await conn.end_stream(s)
            raise
        if s.ended:
            # The end of the body has arrived (with this chunk, or alone): the stream and its
            # lease end now, not at the next call.
            self._conn = None
            if conn.finish(s):
                await conn.flush_after_finish()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.end_stream(self._stream)
