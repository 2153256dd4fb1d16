"""The HTTP/2 connection: httpcore's, taught to tell "not processed" from "maybe processed".

httpcore 1.0's `AsyncHTTP2Connection` loses requests when a server closes a connection in the
ordinary way (RFC 9113 §6.8, §8.7), and cannot say which of them the server never saw:

* h2's state machine closes the whole connection on *receiving* GOAWAY (python-hyper/h2#1181),
  so the responses the server still sends for streams at or below ``last_stream_id`` raise
  ``ProtocolError: Invalid input RECV_HEADERS in state CLOSED`` instead of arriving.
* A stream above ``last_stream_id`` becomes `ConnectionNotAvailable` only when it happens to be
  reading; one still writing its headers or body fails with a `RemoteProtocolError` or an empty
  `WriteError` that says nothing about whether the server acted on it. With
  ``last_stream_id == 0`` the check does not fire at all.
* ``RST_STREAM(REFUSED_STREAM)`` ("closed before any processing", §8.7) surfaces as a generic
  `RemoteProtocolError`.
* An idle connection whose server sent GOAWAY and closed it still looks available: the next
  request is written into a dead socket.
* Requests beyond the server's ``MAX_CONCURRENT_STREAMS`` wait for a stream slot on the same
  connection, even when the pool could open another (the pool side is in `_pool.py`).

`ResilientHTTP2Connection` overrides the few methods involved (request handling, expiry,
availability) and keeps the rest of httpcore's connection. A failure the server provably did not
process raises `StreamNotProcessed`, which httpx maps to `httpx.RemoteProtocolError` (chained as
its ``__cause__``); `_classify.py` recognises it, and the transport retries such requests for
every method without spending the user's retries (`RetryConfig.max_unprocessed_retries`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING

import anyio
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from httpcore import (
    ConnectionNotAvailable,
    LocalProtocolError,
    Origin,
    RemoteProtocolError,
    Response,
    TimeoutException,
)
from httpcore._async.http2 import (
    AsyncHTTP2Connection,
    HTTP2ConnectionByteStream,
    HTTPConnectionState,
    logger,
)
from httpcore._backends.base import AsyncNetworkStream
from httpcore._synchronization import AsyncSemaphore, AsyncShieldCancellation
from httpcore._trace import Trace

if TYPE_CHECKING:
    from httpcore import Request
    from hyperframe.frame import Frame, GoAwayFrame

__all__ = [
    "OriginKey",
    "ResilientHTTP2Connection",
    "StreamNotProcessed",
    "is_not_processed",
    "origin_key",
]

_IDLE = HTTPConnectionState.IDLE
_ACTIVE = HTTPConnectionState.ACTIVE

#: httpcore's `Origin` is not hashable: the key of the per-origin request limits.
OriginKey = tuple[bytes, bytes, int]


def origin_key(origin: Origin) -> OriginKey:
    return (origin.scheme, origin.host, origin.port)


#: How long a stream that failed with the connection waits to read what the server had sent
#: before the failure (a GOAWAY says which streams it never processed). The data is already in
#: the receive buffer when a write fails on a closed connection, so this is a safety net only.
_GOAWAY_SEARCH_SECONDS = 1.0
#: The events httpcore's stream readers consume.
_STREAM_EVENTS = (
    h2.events.ResponseReceived,
    h2.events.DataReceived,
    h2.events.StreamEnded,
    h2.events.StreamReset,
)
#: Frames that prove the server processed a stream (RFC 9113 §8.1: it answered), whatever a
#: later GOAWAY's ``last_stream_id`` says.
_ANSWER_EVENTS = (
    h2.events.InformationalResponseReceived,
    h2.events.ResponseReceived,
    h2.events.DataReceived,
    h2.events.TrailersReceived,
)

#: httpcore's default: how many concurrent streams a connection asks the server to allow.
LOCAL_MAX_STREAMS = 100


class StreamNotProcessed(RemoteProtocolError):
    """The server provably did not process the request: its HTTP/2 stream was above the
    ``last_stream_id`` of the server's GOAWAY, or the server refused it with
    ``REFUSED_STREAM``. Safe to send again on another connection, whatever the method."""


def is_not_processed(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, a `StreamNotProcessed`."""
    cause: BaseException | None = exc
    for _ in range(4):  # httpx chains the httpcore error once; a little slack for wrappers
        if cause is None:
            return False
        if isinstance(cause, StreamNotProcessed):
            return True
        cause = cause.__cause__
    return False


class _GracefulH2Connection(h2.connection.H2Connection):
    """An h2 client connection that keeps receiving after the server's GOAWAY.

    h2 moves its connection state machine to CLOSED on a received GOAWAY, after which every
    frame for the streams the server is still finishing raises ``ProtocolError``. RFC 9113 §6.8
    says those streams "might still complete successfully"; this subclass reports the GOAWAY as
    `h2.events.ConnectionTerminated` and leaves the state machine open. Opening *new* streams
    after a GOAWAY is prevented one level up, by `ResilientHTTP2Connection`.
    """

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class ResilientHTTP2Connection(AsyncHTTP2Connection):
    """httpcore's HTTP/2 connection with GOAWAY, REFUSED_STREAM and stale-connection handling.

    Differences from the base class, all in the methods overridden here:

    * GOAWAY does not kill the streams the server is still finishing (`_GracefulH2Connection`);
      after it, the connection takes no new requests.
    * A request whose stream the server provably did not process raises `StreamNotProcessed`.
    * Before an idle connection takes a request, frames the server sent meanwhile are read, so a
      GOAWAY or a closed socket is noticed before anything is written to it.
    * A connection that failed or was told to go away expires as soon as its last stream ends.
    * `stream_capacity` tells the pool how many streams it may place here.
    """

    def __init__(
        self,
        origin: Origin,
        stream: AsyncNetworkStream,
        keepalive_expiry: float | None = None,
        *,
        request_limits: dict[OriginKey, int] | None = None,
    ) -> None:
        super().__init__(origin, stream, keepalive_expiry)
        #: Learned per-origin request limits, shared by a pool's connections (see
        #: `stream_capacity`); a private dict when the connection stands alone.
        self._request_limits = {} if request_limits is None else request_limits
        self._finished_streams = 0
        self._settings_received = False
        self._waiting = 0  # requests between the capacity check and opening their stream
        self._h2_state = _GracefulH2Connection(config=self.CONFIG)
        #: Open streams the server has begun to answer: processed, whatever a GOAWAY says.
        self._answered: set[int] = set()
        #: Whether a task is reading from the socket (it holds ``_read_lock``).
        self._reading = False

    @property
    def stream_capacity(self) -> int:
        """How many more requests the pool may place on this connection at once: the server's
        ``MAX_CONCURRENT_STREAMS`` capped at ours (until the server's SETTINGS arrive, ours
        alone), or 0 once it takes no new stream.

        A server that closes connections after N requests (nginx's ``keepalive_requests``,
        a load balancer's limit) says so only by GOAWAY, after the pool may have placed far
        more streams on the connection; those are refused and resent, and at high
        concurrency a resent request can be refused again and again. So a GOAWAY's
        ``last_stream_id`` is remembered as the origin's request limit, and no connection is
        given more requests in total than that. A connection that reaches the limit without
        a GOAWAY shows it stale: it is forgotten.
        """
        if not self.is_available():
            return 0
        capacity: int = min(
            self._h2_state.remote_settings.max_concurrent_streams, LOCAL_MAX_STREAMS
        )
        limit = self._request_limits.get(origin_key(self._origin))
        if limit is not None:
            left = limit - self._finished_streams
            if left > 0:
                capacity = min(capacity, left)
            else:
                self._request_limits.pop(origin_key(self._origin), None)
        return capacity

    def _note_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self._connection_terminated = event
        accepted = ((event.last_stream_id or 0) + 1) // 2  # client streams are 1, 3, 5, ...
        # Learned only from a GOAWAY that cuts into traffic: one on an idle connection is an
        # idle timeout (or a shutdown), not a request limit.
        if self._events and event.error_code == h2.errors.ErrorCodes.NO_ERROR and accepted > 0:
            self._request_limits[origin_key(self._origin)] = accepted

    async def _receive_remote_settings_change(self, event: h2.events.RemoteSettingsChanged) -> None:
        # httpcore moves its stream limit only when a SETTINGS frame names
        # MAX_CONCURRENT_STREAMS, so a server that sets no limit got one stream at a time.
        self._settings_received = True
        new_max = min(
            self._h2_state.remote_settings.max_concurrent_streams,
            self._h2_state.local_settings.max_concurrent_streams,
        )
        while new_max > self._max_streams:
            await self._max_streams_semaphore.release()
            self._max_streams += 1
        while 0 < new_max < self._max_streams:
            await self._max_streams_semaphore.acquire()
            self._max_streams -= 1

    async def _response_closed(self, stream_id: int) -> None:
        self._finished_streams += 1
        self._answered.discard(stream_id)
        await super()._response_closed(stream_id)

    def is_available(self) -> bool:
        return self._connection_terminated is None and super().is_available()

    def has_expired(self) -> bool:
        if self._events:
            return False  # streams in flight: never close under them
        if self._connection_terminated is not None or self._connection_error:
            return True
        return self._expire_at is not None and time.monotonic() > self._expire_at

    async def handle_async_request(self, request: Request) -> Response:
        if not self.can_handle_request(request.url.origin):  # pragma: no cover - pool guards
            raise RuntimeError(
                f"Attempted to send request to {request.url.origin} on connection to {self._origin}"
            )
        if self._state == _IDLE and self._sent_connection_init:
            await self._catch_up(request)

        async with self._state_lock:
            if self._state in (_ACTIVE, _IDLE) and self.is_available():
                self._request_count += 1
                self._expire_at = None
                self._state = _ACTIVE
            else:
                raise ConnectionNotAvailable()

        async with self._init_lock:
            if not self._sent_connection_init:
                if not self.is_available():
                    raise ConnectionNotAvailable()  # an earlier request's setup failed
                try:
                    async with Trace("send_connection_init", logger, request, {"request": request}):
                        await self._send_connection_init(request=request)
                    # One stream until the server's SETTINGS say how many (as httpcore does).
                    self._max_streams = 1
                    local_max = self._h2_state.local_settings.max_concurrent_streams
                    self._max_streams_semaphore = AsyncSemaphore(local_max)
                    for _ in range(local_max - self._max_streams):
                        await self._max_streams_semaphore.acquire()
                    # The server's preface is a SETTINGS frame (RFC 9113 §3.4). Wait for it, so
                    # that its MAX_CONCURRENT_STREAMS is known before streams are opened here.
                    while not self._settings_received:
                        await self._receive_events(request)
                    if self._h2_state.remote_settings.max_concurrent_streams == 0:
                        # Legal only as a pause, and no way to learn when it ends: a server
                        # that allows no stream is failing, like one that refuses connections.
                        self._connection_error = True
                        raise RemoteProtocolError(
                            "the server's SETTINGS allow no streams (MAX_CONCURRENT_STREAMS = 0)"
                        )
                except BaseException:
                    with AsyncShieldCancellation():
                        await self.aclose()
                    raise
                self._sent_connection_init = True

        if len(self._events) + self._waiting >= self._max_streams:
            # Full: the pool places the request on another connection (or queues it) rather
            # than have it wait here for a slot. Nothing was sent.
            await self._settle()
            raise ConnectionNotAvailable()
        self._waiting += 1
        try:
            await self._max_streams_semaphore.acquire()
        finally:
            self._waiting -= 1
        if not self.is_available():
            # GOAWAY (or a failure) arrived while this request waited for a stream slot:
            # nothing was sent, so the pool may simply try another connection.
            await self._max_streams_semaphore.release()
            await self._settle()
            raise ConnectionNotAvailable()

        try:
            stream_id = self._h2_state.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:  # pragma: no cover - 2**30 streams
            self._used_all_stream_ids = True
            await self._max_streams_semaphore.release()
            await self._settle()
            raise ConnectionNotAvailable() from None
        self._events[stream_id] = []

        kwargs = {"request": request, "stream_id": stream_id}
        try:
            async with Trace("send_request_headers", logger, request, kwargs):
                await self._send_request_headers(request=request, stream_id=stream_id)
            async with Trace("send_request_body", logger, request, kwargs):
                await self._send_request_body(request=request, stream_id=stream_id)
            async with Trace("receive_response_headers", logger, request, kwargs) as trace:
                status, headers = await self._receive_response(request=request, stream_id=stream_id)
                trace.return_value = (status, headers)
        except BaseException as exc:
            failure = exc
            if isinstance(exc, Exception):  # cancellation is not ours to reinterpret
                with AsyncShieldCancellation():
                    await self._read_what_was_sent(request, exc)
                failure = self._explain(exc, stream_id)
            with AsyncShieldCancellation():
                async with Trace("response_closed", logger, request, {"stream_id": stream_id}):
                    await self._response_closed(stream_id=stream_id)
            if failure is exc:
                raise
            raise failure from exc
        return Response(
            status=status,
            headers=headers,
            content=HTTP2ConnectionByteStream(self, request, stream_id=stream_id),
            extensions={
                "http_version": b"HTTP/2",
                "network_stream": self._network_stream,
                "stream_id": stream_id,
            },
        )

    async def _send_request_body(self, request: Request, stream_id: int) -> None:
        # httpcore's, except that the body's iterator is closed when a write fails mid-body:
        # an async generator abandoned half-way is only finalised by the garbage collector
        # (and trio warns about it).
        if not any(
            k.lower() in (b"content-length", b"transfer-encoding") for k, _ in request.headers
        ):
            return
        assert isinstance(request.stream, AsyncIterable)
        chunks = request.stream.__aiter__()
        try:
            async for data in chunks:
                await self._send_stream_data(request, stream_id, data)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with AsyncShieldCancellation():
                    await aclose()
        await self._send_end_stream(request, stream_id)

    async def _receive_events(self, request: Request, stream_id: int | None = None) -> None:
        # httpcore's, except after a GOAWAY: a stream above last_stream_id fails as not
        # processed, and the streams at or below it keep reading, since a graceful server
        # finishes them (RFC 9113 §6.8) -- httpcore failed them at once.
        # A stream the server has begun to answer keeps reading: it was processed, whatever
        # the GOAWAY says, and its fate is decided by what arrives (or the connection's end).
        async with self._read_lock:
            terminated = self._connection_terminated
            if terminated is not None:
                if (
                    stream_id is not None
                    and stream_id > (terminated.last_stream_id or 0)
                    and stream_id not in self._answered
                ):
                    raise self._explain(ConnectionNotAvailable(), stream_id)
                if terminated.error_code != h2.errors.ErrorCodes.NO_ERROR:
                    raise RemoteProtocolError(terminated)
            if stream_id is None or not self._events.get(stream_id):
                await self._read_and_dispatch(request)
        # Acknowledgements and window updates. A failure is recorded for the writers
        # (`_write_exception`); a reader's stream is decided by what the server sent, which
        # may still be waiting in the receive buffer.
        with contextlib.suppress(Exception):
            await self._write_outgoing_data(request)

    async def _read_and_dispatch(self, request: Request) -> None:
        """Read once and act on what arrived (the caller holds the read lock)."""
        self._reading = True
        try:
            events = await self._read_incoming_data(request)
        finally:
            self._reading = False
        await self._dispatch(request, events)

    async def _read_incoming_data(self, request: Request) -> list[h2.events.Event]:
        # httpcore's, except that a frame that breaks the protocol is the server's fault: a
        # RemoteProtocolError (may have been processed; counted by the breaker) that fails
        # every stream on the connection, never a LocalProtocolError.
        if self._read_exception is not None:
            raise self._read_exception
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            data = await self._network_stream.read(self.READ_NUM_BYTES, timeout)
            if data == b"":
                raise RemoteProtocolError("Server disconnected")
            events: list[h2.events.Event] = self._h2_state.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            failure = RemoteProtocolError(f"the server broke the HTTP/2 protocol: {exc!r}")
            self._read_exception = failure
            self._connection_error = True
            raise failure from exc
        except Exception as exc:
            self._read_exception = exc
            self._connection_error = True
            raise
        return events

    async def _write_outgoing_data(self, request: Request) -> None:
        # Evidence first: what the server already sent (a GOAWAY, a reset) is read before
        # anything more is written, so a write into a connection the server closed is judged
        # by the GOAWAY that preceded the close. asyncio's transport discards unread data once
        # a write fails, so afterwards it would be too late. One poll when no reader is active.
        if self._sent_connection_init and not self._reading and self._read_exception is None:
            await self._read_pending(request)
        await super()._write_outgoing_data(request)

    async def _read_pending(self, request: Request) -> None:
        """Read what the server has sent, if anything is waiting and no reader is active."""
        if not self._network_stream.get_extra_info("is_readable"):
            return
        async with self._read_lock:
            # Checked again under the lock: this must never block on a read.
            if self._read_exception is not None or not self._network_stream.get_extra_info(
                "is_readable"
            ):
                return
            try:
                await self._read_and_dispatch(request)
            except Exception:
                return  # recorded in _read_exception; the streams see it when they read

    async def _dispatch(self, request: Request, events: list[h2.events.Event]) -> None:
        """Act on events read from the server (the caller holds the read lock): settings,
        the events of open streams, GOAWAY."""
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                async with Trace("receive_remote_settings", logger, request) as trace:
                    await self._receive_remote_settings_change(event)
                    trace.return_value = event
            elif isinstance(event, _STREAM_EVENTS):
                if event.stream_id in self._events:
                    self._events[event.stream_id].append(event)
                    if isinstance(event, _ANSWER_EVENTS):
                        self._answered.add(event.stream_id)
            elif isinstance(event, _ANSWER_EVENTS):  # 1xx and trailers: evidence only
                if event.stream_id in self._events:
                    self._answered.add(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._note_goaway(event)

    async def _catch_up(self, request: Request) -> None:
        """Read what the server sent while this connection was idle (a GOAWAY, a closed socket,
        SETTINGS or PING), before a new request is written to it."""
        try:
            async with self._read_lock:
                # Checked under the lock: an idle connection must never block on a read.
                if self._state != _IDLE or not self._network_stream.get_extra_info("is_readable"):
                    return
                await self._read_and_dispatch(request)
            await self._write_outgoing_data(request)  # acknowledgements of SETTINGS and PING
        except Exception:
            self._connection_error = True
        if not self.is_available():
            await self._settle()
            raise ConnectionNotAvailable()

    async def _settle(self) -> None:
        """After a request backed out before opening a stream: go idle, or close the connection
        if it is done for and no stream is left on it."""
        async with self._state_lock:
            if self._events:
                return
            if not self.is_available():
                await self.aclose()
            elif self._state == _ACTIVE:
                self._state = _IDLE

    async def _read_what_was_sent(self, request: Request, exc: Exception) -> None:
        """After a stream failed with the connection (a write or read error, a disconnect)
        and no GOAWAY seen: read what the server sent before it went, to its end, since a
        GOAWAY there says which streams it never processed. A write into a socket the server
        already closed fails before any reader has seen the GOAWAY that preceded the close.
        Not after a timeout: the connection may be alive, and reading would only wait."""
        if (
            self._connection_terminated is not None
            or not self._connection_error
            or isinstance(exc, TimeoutException)
        ):
            return
        with anyio.move_on_after(_GOAWAY_SEARCH_SECONDS):
            async with self._read_lock:
                while self._connection_terminated is None and self._read_exception is None:
                    try:
                        await self._read_and_dispatch(request)
                    except Exception:
                        return

    def _explain(self, exc: Exception, stream_id: int) -> Exception:
        """The exception that describes how stream ``stream_id`` failed with ``exc``.

        "Not processed" only when nothing from the server says otherwise: a stream it has
        begun to answer was processed, whatever a later GOAWAY or reset claims."""
        terminated = self._connection_terminated
        if stream_id not in self._answered:
            if terminated is not None and stream_id > (terminated.last_stream_id or 0):
                return StreamNotProcessed(
                    f"HTTP/2 stream {stream_id} is above the last_stream_id "
                    f"({terminated.last_stream_id}) of the server's GOAWAY: not processed"
                )
            reset = exc.args[0] if isinstance(exc, RemoteProtocolError) and exc.args else None
            if (
                isinstance(reset, h2.events.StreamReset)
                and reset.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            ):
                return StreamNotProcessed(
                    f"HTTP/2 stream {stream_id} was refused by the server (REFUSED_STREAM): "
                    "not processed"
                )
        if isinstance(exc, h2.exceptions.ProtocolError):
            if terminated is not None:
                return RemoteProtocolError(terminated)
            return LocalProtocolError(exc)
        return exc
