"""`ResilientTransport`: the thin I/O shell around the retry decision in `_decision.py`.

It sends each attempt through the inner transport, asks `decide()` what follows a failure,
closes what it discards, waits through an injectable sleeper, and records every attempt.
"""

from __future__ import annotations

import contextlib
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

import anyio
import httpx

from ._auth import CREDENTIALS_EXTENSION, request_secrets, strip_foreign_credentials
from ._breaker import CircuitBreaker, CircuitState, Permit
from ._budget import RetryBudget
from ._classify import FailureKind, classify_error, counts_against_upstream
from ._config import RetryConfig
from ._connection.transport import (
    DEFAULT_LIMITS,
    build_transport,
    check_connection_options,
    direct_send,
)
from ._cooldown import CoolDown, Gate, GateKind, Waited, server_wait
from ._decision import BUDGET_EXHAUSTED, RETRY_AFTER_STATUSES, Decision, decide, spend_budget
from ._exceptions import CircuitOpenError, CoolDownError, DeadlineExceeded
from ._fleet import Fleet, SharedBudget
from ._history import HISTORY_EXTENSION, Attempt, attach_history
from ._instrument._hooks import (
    AttemptEnd,
    AttemptEndHook,
    AttemptOutcome,
    AttemptStart,
    BudgetRefusal,
    CoolDownRefusal,
    FailFast,
    GiveUp,
    HookSet,
    attach_hooks,
    check_hooks,
    current_hooks,
)
from ._instrument._stats import AttemptCounts, TransportStats, snapshot
from ._origin import Origin, origin_of
from ._redact import redact_url, scrub_exception
from ._stores import StateStore
from ._testing import is_testing
from ._validate import (
    check_callable,
    check_type,
)

if TYPE_CHECKING:
    from ._connection.connect import SocketOption
    from ._connection.transport import CertTypes, ProxyTypes

__all__ = ["READ_BODY_EXTENSION", "RETRY_EXTENSION", "ResilientTransport"]

#: The ``extensions`` key of a request that overrides its transport's `RetryConfig`:
#: a `RetryConfig`, or ``None``/``False`` to send the request exactly once.
RETRY_EXTENSION = "retry"

#: The ``extensions`` key of a request whose response body is read inside each attempt
#: (``True``), so that an error while reading it is retried like any other. The response then
#: arrives fully read. The `AsyncAPIClient` facade sets it for every non-streaming request.
READ_BODY_EXTENSION = "read_body"

_UNSET = object()
_IDEMPOTENCY_KEY = "idempotency-key"
_FINAL = "final response"
_NOT_PROCESSED = "not processed by the server; resent at once, not counted as a retry"
_CIRCUIT_OPENED = "circuit open"
_FINAL_DECISION = Decision(False, 0.0, _FINAL)
_CIRCUIT_OPEN_DECISION = Decision(False, 0.0, _CIRCUIT_OPENED)
_NO_RETRY = RetryConfig(max_retries=0, budget_ratio=None)
_SEND = GateKind.SEND  # a module global: an enum's member is slower to look up on its class
#: Origins a transport remembers the `Origin` object of (see `ResilientTransport._origin`).
_MAX_ORIGINS = 1024
# ``tuple.__new__(Attempt, fields)`` is ``Attempt(*fields)`` without the named tuple's
# Python-level ``__new__``: for the one record every attempt makes.
_new_tuple = tuple.__new__
_SYNC_CLIENT = (
    "ResilientTransport is an async transport: give it to httpx.AsyncClient, not httpx.Client "
    "(there is no sync ResilientTransport yet)"
)


class ResilientTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` that retries what is safe to retry.

    Wraps ``transport`` or, when none is given, a transport built from the connection options
    below (the same as httpx's, but with ``http2=True`` by default; ALPN falls back to HTTP/1.1
    for servers without HTTP/2): with ``http2=False`` and no proxy, this package's own
    connection layer (`AsyncConnectionPoolTransport`); otherwise an `httpx.AsyncHTTPTransport`
    with this package's HTTP/2 handling. httpx ignores a client's own
    ``verify``, ``cert``, ``http1``, ``http2``, ``limits``, ``proxy`` and ``trust_env`` once a
    ``transport`` is given to the client, so give them here instead.

    Args:
        transport: The transport each attempt goes through. Closed by `aclose`. When given,
            the connection options below cannot be: configure that transport instead.
        retry: The retry policy; `RetryConfig()` when None. A request's
            ``extensions={"retry": ...}`` overrides it for that request.
        circuit_breaker: Fails requests fast, per origin, while an upstream is down. May be
            shared by several transports (per-host mounts), which then share its state.
        cool_down: Holds every request to an origin that answered 429 or 503 with
            ``Retry-After`` (or ``retry-after-ms``) until the wait has passed, or fails it at
            once with `CoolDownError`. True (the default): a `CoolDown()` of the transport's
            own; a `CoolDown` to share one between transports; False or None: off. Requests
            whose `RetryConfig` has ``respect_retry_after=False`` are not held.
        state_store: Shares the circuit breaker's state, the retry budget and cool-downs with
            every other transport (process, worker, host) using the same store, such as a
            `RedisStore`. None (the default): this transport's own state only. The store is
            not closed by `aclose` (it may be shared).
        verify: TLS verification: True (the default CA bundle), an `ssl.SSLContext`, or a
            CA bundle path (deprecated by httpx). False turns verification off.
        cert: A client certificate, as httpx takes it.
        trust_env: Read ``SSL_CERT_FILE``/``SSL_CERT_DIR``, as `httpx.create_ssl_context`
            does. Proxies from the environment (``HTTPS_PROXY``...) are not read here:
            `httpx.AsyncClient` applies them only to the transports it builds itself, not
            to one given as ``transport=``; pass ``proxy=`` to route through one.
        http1: Allow HTTP/1.1.
        http2: Negotiate HTTP/2 over TLS (ALPN); True by default, unlike httpx.
        limits: Connection pool limits; httpx's defaults (100 connections, 20 kept alive for
            5 s) when not given.
        proxy: A proxy URL or `httpx.Proxy`. Proxied connections use httpx's own pool.
        uds: Connect through this Unix domain socket.
        local_address: The local IP address to connect from.
        retries: The connection layer's immediate retries of a failed connect (0 s, 0.5 s,
            1 s, ... apart, as httpx's), before any of ours.
        socket_options: Socket options set on each new connection.
        hooks: Instrumentation hooks (see `Hook`) this transport reports to, besides the
            global ones (`set_hooks`, `add_hook`). Its circuit breaker reports its
            transitions to them too.
        clock: Monotonic seconds, for deadlines and the retry budget. For tests.
        sleep: Awaited to wait between attempts. For tests; `anyio.sleep` by default.
        random: Returns a float in [0, 1), for jitter. For tests.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retry: RetryConfig | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        cool_down: CoolDown | bool | None = True,
        state_store: StateStore | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
        proxy: ProxyTypes | None = None,
        uds: str | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: Iterable[SocketOption] | None = None,
        hooks: Iterable[object] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        random: Callable[[], float] = random.random,
    ) -> None:
        if retry is None:
            retry = RetryConfig()
        elif not isinstance(retry, RetryConfig):
            raise TypeError(f"ResilientTransport.retry must be a RetryConfig, got {retry!r}")
        owner = "ResilientTransport"
        check_type(owner, "transport", transport, (httpx.AsyncBaseTransport, type(None)),
                   "an httpx.AsyncBaseTransport or None")  # fmt: skip
        options = {
            "verify": verify, "cert": cert, "trust_env": trust_env, "http1": http1,
            "http2": http2, "limits": limits, "proxy": proxy, "uds": uds,
            "local_address": local_address, "retries": retries, "socket_options": socket_options,
        }  # fmt: skip
        check_connection_options(owner, **options)
        for name, function in (("clock", clock), ("sleep", sleep), ("random", random)):
            check_callable(owner, name, function)
        if transport is None:
            transport = build_transport(**options)  # type: ignore[arg-type]
        else:
            given = [name for name, value in options.items() if value != _DEFAULTS[name]]
            if given:
                raise TypeError(
                    f"ResilientTransport: {', '.join(given)} configure the transport it builds "
                    "and cannot be combined with transport=; configure that transport instead"
                )
        self._transport = transport
        #: The pool's own request method when the inner transport is exactly this package's
        #: (one call and one coroutine less per attempt); else None, and each request looks up
        #: the inner transport's `handle_async_request`, as httpx's clients do (a wrapper put
        #: on it after this transport was built, by instrumentation or a test, sees every
        #: attempt).
        self._send = direct_send(transport)
        self._retry = retry
        if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
            raise TypeError(
                "ResilientTransport.circuit_breaker must be a CircuitBreaker or None, "
                f"got {circuit_breaker!r}"
            )
        self._breaker = circuit_breaker
        if cool_down is True:
            cool_down = CoolDown(clock=clock)
        elif cool_down is False:
            cool_down = None
        elif cool_down is not None and not isinstance(cool_down, CoolDown):
            raise TypeError(
                "ResilientTransport.cool_down must be a CoolDown, True (a CoolDown of its own), "
                f"False or None (off), got {cool_down!r}"
            )
        self._cool_down: CoolDown | None = cool_down
        self._hooks = check_hooks("ResilientTransport.hooks", hooks)
        self._hook_cache: list[object] = [-1, None]  # [global hooks' version, HookSet]
        if circuit_breaker is not None:
            attach_hooks(circuit_breaker, self._hooks)
        if cool_down is not None:
            attach_hooks(cool_down, self._hooks)
        self._counts = AttemptCounts()
        # Each origin's `Origin`, by the URL's (scheme, host, port): one object per origin, so
        # that the per-origin tables (cool-down, stats, breaker) find it by identity.
        self._origins: dict[tuple[str, str, int | None], Origin] = {}
        self._budget = _make_budget(retry)
        self._fleet: Fleet | None = None
        if state_store is not None:
            if not isinstance(state_store, StateStore):
                raise TypeError(
                    "ResilientTransport.state_store must be a StateStore (MemoryStore, "
                    f"RedisStore) or None, got {state_store!r}"
                )
            self._fleet = Fleet(
                state_store, breaker=circuit_breaker, cool_down=self._cool_down, retry=retry,
                clock=clock,
            )  # fmt: skip
            attach_hooks(self._fleet, self._hooks)
            if self._budget is not None:
                self._budget = SharedBudget(self._fleet, retry)
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._closed = False

    @property
    def retry(self) -> RetryConfig:
        """The transport's default `RetryConfig`."""
        return self._retry

    @property
    def circuit_breaker(self) -> CircuitBreaker | None:
        """The transport's `CircuitBreaker`, if any."""
        return self._breaker

    @property
    def cool_down(self) -> CoolDown | None:
        """The transport's `CoolDown`, if any."""
        return self._cool_down

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """The inner transport every attempt goes through."""
        return self._transport

    @property
    def hooks(self) -> tuple[object, ...]:
        """The transport's own instrumentation hooks (the global ones come on top)."""
        return self._hooks

    def stats(self) -> TransportStats:
        """A snapshot for health endpoints: per origin, the circuit state and the attempts
        and failures of the last minute; the retry budget left (with a store, the fleet's as
        the store last reported it: see `TransportStats.budget_left`). Cheap, and never
        blocks: no store call."""
        now = self._clock()
        budget = None if self._budget is None else self._budget.reading(now)
        return snapshot(self._counts, now, self._breaker, budget, self._transport)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(transport={self._transport!r}, retry={self._retry!r})"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # The happy path (a response at the first attempt) runs top to bottom through this
        # method with as few calls and objects as it can: every attempt pays for it. What only
        # failures, hooks or the fleet need stays in the helpers below.
        extensions = request.extensions
        config = extensions.get(RETRY_EXTENSION, _UNSET)
        if config is _UNSET:
            config = self._retry
        elif config is None or config is False:
            config = _NO_RETRY
        elif not isinstance(config, RetryConfig):
            raise TypeError(
                f'request.extensions["{RETRY_EXTENSION}"] must be a RetryConfig, None or False, '
                f"got {config!r}"
            )
        # A redirect to another origin must not carry the credentials set for this one (only
        # a request marked with them can carry any).
        if CREDENTIALS_EXTENSION in extensions:
            strip_foreign_credentials(request)
        clock = self._clock
        attempt_start = clock()
        budget = self._budget if config.budget_ratio is not None else None
        if budget is not None:
            budget.record_request(attempt_start)
        deadline = None if config.total_timeout is None else attempt_start + config.total_timeout
        read_body = extensions.get(READ_BODY_EXTENSION) is True
        cool = self._cool_down if config.respect_retry_after else None
        fleet = self._fleet
        # The request's origin: for the breaker and the cool-down, and for `stats()` and the
        # instrumentation hooks.
        url = request.url
        key = (url.scheme, url.host, url.port)
        target = self._origins.get(key)
        if target is None:
            target = self._origin(key)
        if fleet is not None:
            fleet.started(target if self._breaker is not None or cool is not None else None)
        breaker = self._breaker
        origin = None if breaker is None else target
        hooks = current_hooks(self._hooks, self._hook_cache)
        guard = None
        if type(request.stream) is not httpx.ByteStream:
            guard = await _ReplayGuard.for_request(request)
        history: list[Attempt] = []
        # What the helpers need about the request, made the first time one is called: never
        # on the happy path (no cool-down, no refusal, no hook for every attempt, no fleet, a
        # final response at the first attempt).
        run: _Run | None = None
        direct = self._send  # the pool's own method, given the origin read above
        waited: Waited | None = None  # what this retry waited for in the retry loop
        while True:
            probe = False  # whether this attempt is the probe of a cool-down window
            # (The gate answers "send" for an origin without a window; with no window at all,
            # the common case, it is not asked.)
            if cool is not None and (waited is not None or not cool.idle):
                gate = cool.gate(target, waited=waited)
                if gate.kind is not _SEND:
                    if run is None:
                        run = _Run(request, config, guard, deadline, budget, origin, target,
                                   hooks, history)  # fmt: skip
                    probe = await self._hold(cool, run, gate, waited)
                waited = None
            noted = False  # whether this attempt's answer started or extended a cool-down
            try:
                if fleet is not None and origin is not None and fleet.suspect(origin):
                    await fleet.check(origin, deadline)
                permit = None
                if breaker is not None:
                    try:
                        permit = breaker.admit(target)
                    except CircuitOpenError as error:
                        if run is None:
                            run = _Run(request, config, guard, deadline, budget, origin, target,
                                       hooks, history)  # fmt: skip
                        self._refused(run, error)
                if fleet is not None and permit is not None and permit.generation:
                    if run is None:
                        run = _Run(request, config, guard, deadline, budget, origin, target,
                                   hooks, history)  # fmt: skip
                    await self._claim_probe(fleet, permit, run)
            except BaseException:
                if probe:
                    _probe_failed(cool, target)
                raise
            # Instrumentation: nothing at all unless some hook wants every attempt.
            ends = None
            if hooks.on_attempt:
                if run is None:
                    run = _Run(request, config, guard, deadline, budget, origin, target, hooks,
                               history)  # fmt: skip
                ends = self._start(run)
            try:
                if deadline is None and not read_body:
                    if direct is not None:
                        response = await direct(request, key)
                    else:
                        response = await self._transport.handle_async_request(request)
                elif deadline is None:
                    response = await self._attempt(request, read_body)
                else:
                    response = await self._attempt_before(
                        request, read_body, deadline, len(history) + 1
                    )
            except Exception as exc:
                # Its message may quote a header value (h11: "Illegal header value b'...'"):
                # clear the request's credentials from it before it reaches history or a log.
                scrub_exception(exc, request_secrets(request))
                if probe:
                    _probe_failed(cool, target)
                if run is None:
                    run = _Run(request, config, guard, deadline, budget, origin, target, hooks,
                               history)  # fmt: skip
                if permit is not None:
                    failed = self._record_error(permit, exc)
                    if fleet is not None:
                        if failed is None:
                            fleet.ignored(permit)
                        else:
                            try:
                                await fleet.outcome(permit, failed)
                            except BaseException as stopped:  # cancelled
                                self._end_cancelled(run, ends, attempt_start, stopped)
                                raise
                self._counts.record(target, clock(), counts_against_upstream(exc))
                if self._resend_unprocessed(run, exc):
                    elapsed = clock() - attempt_start
                    history.append(
                        Attempt(len(history) + 1, None, exc, elapsed, 0.0, _NOT_PROCESSED)
                    )
                    if ends is not None or hooks.after:
                        self._report(run, ends, AttemptOutcome.RESEND)
                    attempt_start = clock()
                    continue
                decision = self._decide(run, error=exc)
                if decision.retry and run.budget is not None:
                    try:
                        decision = await self._charge(run, decision)
                    except BaseException as stopped:  # cancelled
                        self._end_cancelled(run, ends, attempt_start, stopped)
                        raise
                history.append(_record(history, None, exc, attempt_start, clock, decision))
                if ends is not None or hooks.after:
                    self._report(run, ends, _outcome(decision))
                if not decision.retry:
                    attach_history(exc, tuple(history))
                    if decision.reason is _CIRCUIT_OPENED:
                        raise self._circuit_error(run) from exc
                    raise
            except BaseException as exc:  # cancelled: says nothing about the upstream
                if probe:
                    _probe_failed(cool, target)
                if permit is not None:
                    self._breaker.record_ignored(permit)  # type: ignore[union-attr]
                    if fleet is not None:
                        fleet.ignored(permit)
                if ends is not None:
                    assert run is not None  # made for the hooks' start
                    elapsed = clock() - attempt_start
                    cancelled = Attempt(len(history) + 1, None, exc, elapsed, None, "cancelled")
                    self._report(run, ends, AttemptOutcome.CANCELLED, cancelled)
                raise
            else:
                status = response.status_code
                # One reading of the wall clock for a Retry-After date: the cool-down's window
                # and the retry's wait must agree, or the retry is held again for the skew.
                # Taken here for a status that may start a cool-down; else, for a retried
                # status, by the retry decision (`_decide`); a final response needs none.
                wall_now = None
                if cool is not None and (probe or status in cool.statuses):
                    wall_now = time.time()
                    noted = _note_response(cool, target, response, probe, wall_now)
                    if noted and fleet is not None:
                        fleet.share_cool_down(target, cool.retry_in(target))
                if run is None and (fleet is not None or status in config.retry_on_status):
                    run = _Run(request, config, guard, deadline, budget, origin, target, hooks,
                               history)  # fmt: skip
                try:
                    if fleet is not None:
                        assert run is not None
                        await self._share_response(fleet, run, response, permit)
                    elif permit is not None:
                        self._record_status(permit, status)
                    if status in config.retry_on_status:
                        assert run is not None
                        decision = await self._judge(run, response, attempt_start, wall_now)
                    else:
                        # A final response, the common case: its attempt is recorded here.
                        now = clock()
                        self._counts.record(target, now, status >= 500)
                        elapsed = now - attempt_start
                        attempt = (len(history) + 1, status, None, elapsed, None, _FINAL)
                        history.append(_new_tuple(Attempt, attempt))
                        response.extensions[HISTORY_EXTENSION] = tuple(history)
                        if ends is None:
                            return response
                        decision = _FINAL_DECISION
                except BaseException as exc:
                    if ends is not None:  # end the hooks' attempt: spans, contexts
                        assert run is not None
                        elapsed = clock() - attempt_start
                        broken = Attempt(len(history) + 1, None, exc, elapsed, None, "cancelled")
                        self._report(run, ends, AttemptOutcome.CANCELLED, broken)
                    await _close_quietly(response)
                    raise
                # From here on a helper was called: ``run`` is made.
                assert run is not None
                if ends is not None or (hooks.after and decision is not _FINAL_DECISION):
                    self._report(run, ends, _outcome(decision), response=response)
                if not decision.retry:
                    if decision.reason is _CIRCUIT_OPENED:
                        await _close_quietly(response)
                        raise self._circuit_error(run)
                    return response
                # Free the connection before waiting, so that retries cannot starve the pool.
                await _close_quietly(response)
                if noted:
                    assert cool is not None
                    waited = cool.waited(target, decision.wait)
            await self._sleep(0.0 if is_testing() else decision.wait)
            attempt_start = clock()

    def _end_cancelled(
        self,
        run: _Run,
        ends: list[tuple[object, AttemptEndHook]] | None,
        attempt_start: float,
        exc: BaseException,
    ) -> None:
        """End the hooks' attempt (spans, contexts) of a failed attempt cancelled while the
        fleet was waited for (its outcome shared, its retry token): the ``except Exception``
        handler that awaits it is not covered by the one for cancellations beside it."""
        if ends is not None:
            elapsed = self._clock() - attempt_start
            cancelled = Attempt(len(run.history) + 1, None, exc, elapsed, None, "cancelled")
            self._report(run, ends, AttemptOutcome.CANCELLED, cancelled)

    async def _claim_probe(self, fleet: Fleet, permit: Permit, run: _Run) -> None:
        """A local half-open probe must also be the fleet's one probe: else fail it fast."""
        breaker = self._breaker
        assert breaker is not None
        try:
            retry_in = await fleet.claim_probe(permit)
        except BaseException:
            breaker.record_ignored(permit)
            raise
        if retry_in is not None:
            breaker.record_ignored(permit)
            error = CircuitOpenError(permit.origin, retry_in, breaker.name, request=run.request)
            attach_history(error, tuple(run.history))
            if run.hooks.after:
                self._report_refusal(run, retry_in)
            last = run.history[-1].error if run.history else None
            raise error from last

    async def _share_response(
        self, fleet: Fleet, run: _Run, response: httpx.Response, permit: Permit | None
    ) -> None:
        """Record a response's outcome in the breaker and share it (failures and probes wait
        for the store)."""
        if permit is not None:
            await fleet.outcome(permit, self._record_status(permit, response.status_code))

    async def _hold(
        self, cool: CoolDown, run: _Run, gate: Gate, waited: Waited | None = None
    ) -> bool:
        """Wait while ``run``'s origin cools down; True if this request goes as the window's
        probe.

        Raises `CoolDownError` at once when the wait left is above ``cool.max_wait`` or would
        pass the request's deadline. A wait for the probe's answer ends when it is in (an event
        the probe sets), or with `CoolDownError` once ``max_wait`` or the deadline is reached.
        The waits add up to at most ``max_wait`` per hold, so the loop ends even on a clock
        that does not move. ``waited``: what the request waited for in the retry loop (see
        `CoolDown.gate`); the sleeps here add to it."""
        origin = run.target
        held = 0.0
        while True:
            kind, wait = gate
            if kind is GateKind.PROBE:
                return True
            if kind is GateKind.SEND or is_testing():
                return False
            left = cool.max_wait - held
            reason = "max_wait"
            if run.deadline is not None and run.deadline - self._clock() < left:
                left = run.deadline - self._clock()
                reason = "total_timeout"
            if kind is GateKind.WAIT_PROBE:
                signal = cool.probe_signal(origin, anyio.Event)
                if signal is not None:
                    started = self._clock()
                    with anyio.move_on_after(max(0.0, left)) as scope:
                        await signal.wait()
                    if scope.cancelled_caught:
                        raise self._cool_down_error(cool, run, reason)
                    held += self._clock() - started
            elif wait >= left:
                raise self._cool_down_error(cool, run, reason)
            else:
                await self._sleep(wait)
                held += wait
                if waited is not None:
                    waited = waited._replace(until=waited.until + wait)
            gate = cool.gate(origin, waited=waited)

    @staticmethod
    def _cool_down_error(cool: CoolDown, run: _Run, reason: str) -> CoolDownError:
        retry_in = cool.retry_in(run.target)
        error = CoolDownError(run.target, retry_in, reason, request=run.request)
        attach_history(error, tuple(run.history))
        if run.hooks.on_cool_down_refusal:
            refusal = CoolDownRefusal(
                run.request.method, run.url, run.target, len(run.history) + 1, retry_in, reason
            )
            run.hooks.emit("on_cool_down_refusal", refusal)
        return error

    @staticmethod
    def _resend_unprocessed(run: _Run, exc: Exception) -> bool:
        """Whether ``exc`` is a failure the server provably did not process and the request
        may be resent at once without spending a retry (bounded by ``max_unprocessed_retries``;
        past that, `decide` treats it like any never-processed failure)."""
        if run.unprocessed >= run.config.max_unprocessed_retries:
            return False
        if run.body is not None and not run.body.replayable:
            return False
        if classify_error(exc) is not FailureKind.NOT_PROCESSED:
            return False
        run.unprocessed += 1
        return True

    def _origin(self, key: tuple[str, str, int | None]) -> Origin:
        """The `Origin` of a URL's (scheme, host, port), remembered for the next request
        (at most `_MAX_ORIGINS`; all are forgotten when that many are held)."""
        origins = self._origins
        if len(origins) >= _MAX_ORIGINS:
            origins.clear()
        origin = origins[key] = origin_of(*key)
        return origin

    async def _judge(
        self, run: _Run, response: httpx.Response, attempt_start: float, wall_now: float | None
    ) -> Decision:
        """Record the attempt of a response whose status the policy retries (its outcome in
        the breaker is recorded already) and decide what follows; attach the history when
        no retry follows."""
        status = response.status_code
        history = run.history
        self._counts.record(run.target, self._clock(), True)
        decision = self._decide(run, status=status, headers=response.headers, wall_now=wall_now)
        if decision.retry and run.budget is not None:
            decision = await self._charge(run, decision)
        history.append(_record(history, status, None, attempt_start, self._clock, decision))
        if not decision.retry:
            attach_history(response, tuple(history))
        return decision

    def _refused(self, run: _Run, error: CircuitOpenError) -> NoReturn:
        """The breaker refused an attempt: raise its `CircuitOpenError` for ``run``, chained to
        the last failure."""
        request, history = run.request, run.history
        error.request = request
        attach_history(error, tuple(history))
        if run.hooks.after:
            self._report_refusal(run, error.retry_in)
        last = history[-1].error if history else None
        if last is not None:
            raise error from last
        raise error

    def _circuit_error(self, run: _Run) -> CircuitOpenError:
        """The error for a retry loop that stops because its failures opened the circuit."""
        breaker, origin = self._breaker, run.origin
        assert breaker is not None
        assert origin is not None
        error = CircuitOpenError(
            origin, breaker.retry_in(origin), breaker.name, request=run.request
        )
        attach_history(error, tuple(run.history))
        return error

    def _record_error(self, permit: Permit, exc: Exception) -> bool | None:
        """Record an error's outcome: True (a failure) or None (ignored)."""
        breaker = self._breaker
        assert breaker is not None
        if counts_against_upstream(exc):
            breaker.record_failure(permit)
            return True
        breaker.record_ignored(permit)
        return None

    def _record_status(self, permit: Permit, status: int) -> bool:
        """Record a response's outcome; True if it counts as a failure."""
        breaker = self._breaker
        assert breaker is not None
        # Any other answer, a 4xx included, shows the upstream is up and answering.
        if status in breaker.failure_statuses:
            breaker.record_failure(permit)
            return True
        breaker.record_success(permit)
        return False

    def _decide(
        self,
        run: _Run,
        *,
        status: int | None = None,
        headers: httpx.Headers | None = None,
        error: Exception | None = None,
        wall_now: float | None = None,
    ) -> Decision:
        """Gather what `decide` needs about a failed attempt; only failures pay for this.

        The retry budget is not asked here: a retry costs one unit of it in `_charge`, so
        that a request which stops for any other reason spends none. A retry that the
        circuit would refuse becomes a stop with reason ``"circuit open"``."""
        circuit_open = self._circuit_open(run)
        request, config = run.request, run.config
        retry_after = retry_after_ms = None
        if headers is not None and status in RETRY_AFTER_STATUSES:
            retry_after = headers.get("retry-after")
            retry_after_ms = headers.get("retry-after-ms")
        decision = decide(
            config,
            attempt=len(run.history) - run.unprocessed + 1,
            status=status,
            error=error,
            kind=None if error is None else classify_error(error),
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            method_retryable=(
                request.method in config.retry_methods or _has_idempotency_key(request.headers)
            ),
            replayable=run.body is None or run.body.replayable,
            now=self._clock(),
            wall_now=time.time() if wall_now is None else wall_now,
            deadline=run.deadline,
            random=self._random,
            budget=None,
        )
        if circuit_open and decision.retry:
            return _CIRCUIT_OPEN_DECISION
        return decision

    def _circuit_open(self, run: _Run) -> bool:
        return (
            run.origin is not None
            and self._breaker is not None
            and self._breaker.state(run.origin) is CircuitState.OPEN
        )

    async def _charge(self, run: _Run, decision: Decision) -> Decision:
        """Spend one unit of ``run``'s retry budget on the retry ``decision`` (from `_decide`),
        or turn it into a stop if the budget refuses.

        With a fleet, a token of the fleet's budget is made sure of first (`Fleet.reserve_retry`:
        a call to the store when none is at hand, at most its ``timeout``; no token in time,
        no retry). Only a request that would retry asks, so a request that stops anyway (its
        last attempt, a method not retried, a status or error not retried, a wait past its
        deadline or above the Retry-After cap, an open circuit) neither takes a token from the
        rest of the fleet nor waits for its budget. (Its response is shared as any other is:
        a failure reported to the fleet's circuit, a 429/503 cool-down window, capped at
        ``max_cool_down``, shared in the background.)"""
        fleet = self._fleet
        if fleet is not None:
            # A token later than this would find the retry's wait past the deadline: no
            # wait for the store beyond it (`spend_budget` then says so).
            within = None
            if run.deadline is not None:
                within = run.deadline - self._clock() - decision.wait
            if within is None or within > 0:
                await fleet.reserve_retry(within)
            # The wait for the store may have let the circuit open meanwhile.
            if self._circuit_open(run):
                return _CIRCUIT_OPEN_DECISION
        return spend_budget(decision, run.budget, self._clock(), run.deadline)

    async def _attempt(self, request: httpx.Request, read_body: bool) -> httpx.Response:
        direct = self._send
        if direct is not None:
            response = await direct(request, None)
        else:
            response = await self._transport.handle_async_request(request)
        if read_body:
            # Read the body inside the attempt, so that an error while reading it is retried
            # like any other; hand it on as bytes, for the client to read and decode as usual.
            stream = response.stream
            assert isinstance(stream, httpx.AsyncByteStream)
            try:
                body = b"".join([chunk async for chunk in stream])
            finally:
                await stream.aclose()
            response.stream = httpx.ByteStream(body)
        return response

    async def _attempt_before(
        self, request: httpx.Request, read_body: bool, deadline: float, attempt: int
    ) -> httpx.Response:
        remaining = deadline - self._clock()
        with anyio.move_on_after(remaining) as scope:
            return await self._attempt(request, read_body)
        assert scope.cancelled_caught
        raise DeadlineExceeded(
            f"total_timeout ran out during attempt {attempt} of {request.method} "
            f"{redact_url(request.url)}",
            request=request,
        )

    # --- instrumentation: called only when some hook asked for the event -----------------

    @staticmethod
    def _start(run: _Run) -> list[tuple[object, AttemptEndHook]] | None:
        request = run.request
        start = AttemptStart(
            request.method, run.url, run.target, len(run.history) + 1, request.headers
        )
        return run.hooks.start(start) or None

    def _report(
        self,
        run: _Run,
        ends: list[tuple[object, AttemptEndHook]] | None,
        outcome: AttemptOutcome,
        attempt: Attempt | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        """Hand an attempt (the last in the history unless given) to the hooks: its end
        callbacks, then the events its outcome makes."""
        if attempt is None:
            attempt = run.history[-1]
        hooks, request = run.hooks, run.request
        version = None if response is None else response.extensions.get("http_version")
        record = AttemptEnd(
            request.method, run.url, run.target, attempt.number, outcome, attempt.status,
            attempt.error, attempt.elapsed, attempt.wait, attempt.reason,
            None if version is None else version.decode("ascii", "replace"),
            run.config.max_retries,
        )  # fmt: skip
        if ends is not None:
            hooks.end(ends, record)
        if outcome is AttemptOutcome.RETRY:
            hooks.emit("on_retry", record)
        elif outcome is AttemptOutcome.RESEND:
            hooks.emit("on_resend", record)
        elif outcome is AttemptOutcome.GIVE_UP:
            reason = attempt.reason
            if reason is BUDGET_EXHAUSTED and hooks.on_budget_refusal and run.budget is not None:
                # With a fleet: what its budget said (the answer that refused this retry), or
                # this worker's allowance while the store is unavailable.
                available, source, _ = run.budget.reading(self._clock())
                refusal = BudgetRefusal(
                    request.method, run.url, run.target, attempt.number, available or 0.0, source
                )
                hooks.emit("on_budget_refusal", refusal)
            elif reason is _CIRCUIT_OPENED:
                breaker = self._breaker
                assert breaker is not None
                self._report_refusal(run, breaker.retry_in(run.target))
            self._report_give_up(run, attempt)

    def _report_refusal(self, run: _Run, retry_in: float) -> None:
        """An open circuit refused the request's next attempt."""
        hooks, request = run.hooks, run.request
        if hooks.on_fail_fast:
            name = None if self._breaker is None else self._breaker.name
            attempt = len(run.history) + 1
            refusal = FailFast(request.method, run.url, run.target, attempt, retry_in, name)
            hooks.emit("on_fail_fast", refusal)
        # Refused before its first attempt, a request has nothing to give up on; refused
        # before a retry (opened meanwhile by other requests), it gives up now.
        if run.history and run.history[-1].wait is not None:
            last = run.history[-1]
            self._report_give_up(run, last._replace(reason=_CIRCUIT_OPENED))

    @staticmethod
    def _report_give_up(run: _Run, attempt: Attempt) -> None:
        hooks, request = run.hooks, run.request
        if hooks.on_give_up:
            give_up = GiveUp(
                request.method, run.url, run.target, len(run.history), attempt.status,
                attempt.error, attempt.reason,
            )  # fmt: skip
            hooks.emit("on_give_up", give_up)

    # httpx.Client (sync) never touches its transport when it is built; these are the first
    # things it calls on it: `with client:`, a request, `client.close()`. Each fails at once,
    # saying what to do instead of httpx's AttributeError about a missing method.
    def __enter__(self) -> NoReturn:
        raise TypeError(_SYNC_CLIENT)

    def __exit__(self, *exc_info: object) -> None:
        pass

    def handle_request(self, request: httpx.Request) -> NoReturn:
        raise TypeError(_SYNC_CLIENT)

    def close(self) -> NoReturn:
        raise TypeError(_SYNC_CLIENT)

    async def aclose(self) -> None:
        """Close the inner transport. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            try:
                if self._fleet is not None:
                    await self._fleet.aclose()
            finally:
                await self._transport.aclose()

    async def __aenter__(self) -> ResilientTransport:
        await self._transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()


_DEFAULTS: dict[str, object] = {
    "verify": True, "cert": None, "trust_env": True, "http1": True, "http2": True,
    "limits": DEFAULT_LIMITS, "proxy": None, "uds": None, "local_address": None,
    "retries": 0, "socket_options": None,
}  # fmt: skip


class _Run:
    """One request's way through the retry loop: what every decision about it needs. Kept
    apart from the (shared, immutable) config."""

    __slots__ = (
        "_url", "body", "budget", "config", "deadline", "history", "hooks", "origin", "request",
        "target",
        "unprocessed",
    )  # fmt: skip

    def __init__(
        self,
        request: httpx.Request,
        config: RetryConfig,
        body: _ReplayGuard | None,
        deadline: float | None,
        budget: RetryBudget | None,
        origin: Origin | None,
        target: Origin,
        hooks: HookSet,
        history: list[Attempt],
    ) -> None:
        self.request = request
        self.config = config
        self.body = body
        self.deadline = deadline
        self.budget = budget
        self.origin = origin  # set when a circuit breaker tracks the request's origin
        #: The request's origin.
        self.target = target
        #: The attempts so far (the retry loop's own list).
        self.history = history
        #: Attempts the server provably did not process, resent without spending a retry.
        self.unprocessed = 0
        self.hooks = hooks
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The request URL, redacted (for instrumentation; made once, on first use)."""
        if self._url is None:
            self._url = redact_url(self.request.url)
        return self._url


async def _close_quietly(response: httpx.Response) -> None:
    # A connection that fails while closing is no reason to change what we decided.
    with contextlib.suppress(httpx.TransportError):
        await response.aclose()


def _probe_failed(cool: CoolDown | None, origin: Origin) -> None:
    # The probe got no answer (an error, cancelled, refused by the breaker): the next waiting
    # request becomes the probe.
    assert cool is not None
    _wake(cool.probe_done(origin, answered=False))


def _wake(signal: anyio.Event | None) -> None:
    if signal is not None:
        signal.set()


def _note_response(
    cool: CoolDown, origin: Origin, response: httpx.Response, probe: bool, wall_now: float
) -> bool:
    """Start or extend a cool-down if the response asks clients to wait (then True: a retry of
    this request waits in the retry loop, see `CoolDown.waited`). Report a probe's answer.
    ``wall_now``: the Unix time a ``Retry-After`` date is read against, the same reading the
    retry decision uses."""
    status = response.status_code
    if status in cool.statuses:
        headers = response.headers
        wait = server_wait(headers.get("retry-after"), headers.get("retry-after-ms"), wall_now)
        if wait is not None:
            _wake(cool.note(origin, wait, status))
            return True
    if probe:
        _wake(cool.probe_done(origin, answered=True))
    return False


def _outcome(decision: Decision) -> AttemptOutcome:
    if decision.retry:
        return AttemptOutcome.RETRY
    return AttemptOutcome.FINAL if decision is _FINAL_DECISION else AttemptOutcome.GIVE_UP


def _make_budget(config: RetryConfig) -> RetryBudget | None:
    if config.budget_ratio is None:
        return None
    return RetryBudget(config.budget_ratio, config.budget_min_per_second, config.budget_window)


def _record(
    history: list[Attempt],
    status: int | None,
    error: BaseException | None,
    attempt_start: float,
    clock: Callable[[], float],
    decision: Decision,
) -> Attempt:
    wait = decision.wait if decision.retry else None
    return Attempt(len(history) + 1, status, error, clock() - attempt_start, wait, decision.reason)


def _has_idempotency_key(headers: httpx.Headers) -> bool:
    """Whether ``headers`` carry an ``Idempotency-Key`` the server can tell requests apart by:
    an empty or blank one protects nothing."""
    value = headers.get(_IDEMPOTENCY_KEY)
    return value is not None and value.strip() != ""


class _ReplayGuard(httpx.AsyncByteStream):
    """Wraps a request body that can be sent only once and notes whether sending began.

    Until its first byte is asked for, the body is intact and the request may still be retried
    after a failure that happened before sending (a refused connection, say); after that it
    never is, so a caller never gets ``StreamConsumed`` or a request re-sent with an empty body.
    """

    __slots__ = ("_stream", "started")

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream
        self.started = False

    @property
    def replayable(self) -> bool:
        return not self.started

    @classmethod
    async def for_request(cls, request: httpx.Request) -> _ReplayGuard | None:
        """Install a guard on ``request`` unless its body can be replayed (then return None).

        A multipart body httpx rendered from ``files=`` (a stream that is both sync and async,
        with a ``multipart/form-data`` type) of known length up to `MULTIPART_REPLAY_BYTES` is
        read into memory with httpx's public `httpx.Request.aread`, which turns the request's
        stream into bytes: replayable, whatever kind of file it came from. Any other stream is
        sent once."""
        if _small_multipart(request):
            await request.aread()
            return None
        guard = cls(request.stream)  # type: ignore[arg-type]
        request.stream = guard
        return guard

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


#: The largest multipart body (``files=``) that is kept in memory so that it can be replayed.
MULTIPART_REPLAY_BYTES = 1 << 20


def _small_multipart(request: httpx.Request) -> bool:
    stream = request.stream
    if not (isinstance(stream, httpx.SyncByteStream) and isinstance(stream, httpx.AsyncByteStream)):
        return False  # a caller's own stream, not one httpx rendered
    headers = request.headers
    if not headers.get("content-type", "").startswith("multipart/form-data"):
        return False
    length = headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= MULTIPART_REPLAY_BYTES
