"""The demo's scenarios: the same load, through plain httpx and through httpx-resilience.

A scenario names what the upstream does (see `upstream.FaultPlan`), which server it runs on,
how the load is sent, and the clients that send it. Each client sends the same requests
``0 .. requests - 1`` to a path of its own, so the upstream counts each client's run apart.

Loads:

* ``sequential``: one request after another, so that a dropped connection only ever breaks
  the request it carries (HTTP/2 multiplexes, and a cut connection takes every stream on it).
  The retry budget and the circuit breaker read a schedule clock on which request ``i`` is
  sent at ``i * TICK`` seconds (32 requests a second), so their decisions, and so the counts,
  do not depend on how fast the machine is. The requests themselves go out back to back.
* ``paced``: an open loop on the real clock, one request every `PACE` seconds whatever the
  answers, for the scenarios whose upstream makes callers wait. Their fault rates keep the
  retry budget from ever running dry, so their counts do not depend on timing either.

The faults and the counts are reproducible for a seed; latencies are measured.
"""

from __future__ import annotations

import random
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx

from .. import (
    APIClientError,
    AsyncAPIClient,
    Attempt,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    DeadlineExceeded,
    Origin,
    ResilientTransport,
    RetryConfig,
    get_retry_history,
)
from . import upstream

__all__ = [
    "DEMO_RETRY",
    "SCENARIOS",
    "ClientRun",
    "Outcome",
    "Scenario",
    "Target",
    "run_scenario",
]

#: The demo's retry policy: the defaults (3 retries, full jitter, a 20 % retry budget), but
#: with backoff waits scaled down 50-fold so that the demo ends in seconds. Retry-After is
#: honoured as the upstream sends it.
DEMO_RETRY = RetryConfig(base_delay=0.01, max_delay=0.2)

PACE = 0.006  # paced loads: one request every 6 ms (about 167 requests/s)
TICK = 1 / 32  # sequential loads: request i is sent at i * TICK on the schedule clock
BREAKER_THRESHOLD = 5  # outage: consecutive failures that open the circuit
BREAKER_RECOVERY = 0.5  # outage: seconds (of the schedule: 16 requests) before a probe
ATTEMPT_TIMEOUT = 0.3  # deadline: httpx's own timeout, per attempt
DEADLINE = 0.8  # deadline: the caller's overall deadline (total_timeout)
NAIVE_RETRIES = 3  # post: the hand-written loop's retries


@dataclass(frozen=True, slots=True)
class Target:
    """Where a scenario's requests go."""

    base_url: str
    protocol: str  # "HTTP/1.1" or "HTTP/2"
    verify: ssl.SSLContext  # trusts the demo's certificate authority

    @property
    def http2(self) -> bool:
        return self.protocol == "HTTP/2"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one caller request went."""

    ok: bool
    failure: str | None  # a short kind: "503", "dropped", "timeout", "circuit open", ...
    attempts: int  # the attempts the client says it sent
    http_version: str | None = None  # of the final response, if there was one


@dataclass(frozen=True, slots=True)
class Transition:
    """A circuit state change, and the request during which it happened."""

    rid: int
    old: CircuitState
    new: CircuitState


class Call(Protocol):
    async def __call__(self, url: str, rid: int) -> Outcome: ...


@dataclass
class RunContext:
    """What a client factory may use: the target, the seed, the clock."""

    target: Target
    seed: int
    sequential: bool
    rid: int = 0  # the request being sent (sequential loads)
    transitions: list[Transition] | None = None  # once a circuit breaker reports to it

    def clock(self) -> float:
        """The clock for retry budgets and circuit breakers: on sequential loads the schedule
        (request ``rid`` is sent at ``rid * TICK`` seconds), else the real one."""
        return self.rid * TICK if self.sequential else time.monotonic()

    def jitter(self) -> Callable[[], float]:
        """A seeded random source for the transport's jitter."""
        return random.Random(f"{self.seed}:jitter").random

    def breaker(self) -> CircuitBreaker:
        """The outage scenario's circuit breaker, on this context's clock, reporting its
        transitions to `transitions`."""
        self.transitions = []
        return CircuitBreaker(
            failure_threshold=BREAKER_THRESHOLD,
            recovery_time=BREAKER_RECOVERY,
            on_state_change=self._on_state_change,
            clock=self.clock,
        )

    def _on_state_change(self, origin: Origin, old: CircuitState, new: CircuitState) -> None:
        assert self.transitions is not None
        self.transitions.append(Transition(self.rid, old, new))


ClientFactory = Callable[[RunContext], AbstractAsyncContextManager[Call]]


@dataclass(frozen=True, slots=True)
class Client:
    label: str
    factory: ClientFactory


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    upstream: str  # what the upstream does, in a line
    protocol: str  # "HTTP/1.1" or "HTTP/2"
    load: str  # "sequential" or "paced"
    clients: tuple[Client, ...]
    method: str = "GET"


@dataclass
class ClientRun:
    """One client's run of one scenario, as the client saw it."""

    client: int
    label: str
    outcomes: list[Outcome]
    seconds: list[float]  # each call's latency
    transitions: list[Transition] | None  # None: the client has no circuit breaker

    @property
    def failures(self) -> Counter[str]:
        """How many calls failed, by kind."""
        return Counter(o.failure for o in self.outcomes if not o.ok and o.failure)

    @property
    def http_versions(self) -> Counter[str]:
        """How many final responses came over each HTTP version."""
        return Counter(o.http_version for o in self.outcomes if o.http_version)


# --- sending requests, and reading what happened ---------------------------------------------


def _request(method: str, rid: int, idempotency_key: bool) -> dict[str, Any]:
    if method != "POST":
        return {}
    kwargs: dict[str, Any] = {"json": {"order": rid}}
    if idempotency_key:
        kwargs["headers"] = {"Idempotency-Key": f"order-{rid}"}
    return kwargs


def _failure(exc: BaseException) -> str:
    """A short name for why a call failed."""
    if isinstance(exc, APIClientError):
        if exc.status_code is not None:
            return str(exc.status_code)
        exc = exc.__cause__ or exc
    if isinstance(exc, CircuitOpenError):
        return "circuit open"
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return "dropped"
    return type(exc).__name__


def _why(failure: str, history: Sequence[Attempt]) -> str:
    """``failure``, and why the transport stopped there, when that says more."""
    reason = history[-1].reason if history else None
    if reason is None or reason in _SAYS_NOTHING:
        return failure
    return f"{failure} ({reason})"


# Stop reasons the failure's own name already tells.
_SAYS_NOTHING = frozenset({"final response", "circuit open", "status not retryable"})


def _httpx_call(
    client: httpx.AsyncClient, method: str, *, resilient: bool, idempotency_key: bool = False
) -> Call:
    async def call(url: str, rid: int) -> Outcome:
        try:
            response = await client.request(method, url, **_request(method, rid, idempotency_key))
        except httpx.HTTPError as exc:
            if not resilient:
                return Outcome(False, _failure(exc), 1)
            history = get_retry_history(exc)
            return Outcome(False, _why(_failure(exc), history), len(history))
        history = get_retry_history(response) if resilient else ()
        ok = response.is_success
        failure = None if ok else _why(str(response.status_code), history)
        return Outcome(ok, failure, len(history) or 1, response.http_version)

    return call


def plain(method: str = "GET", *, timeout: float = 5.0) -> ClientFactory:
    """Plain ``httpx.AsyncClient`` (httpx's default timeout is 5 s)."""

    @asynccontextmanager
    async def factory(ctx: RunContext) -> AsyncIterator[Call]:
        target = ctx.target
        async with httpx.AsyncClient(
            verify=target.verify, http2=target.http2, timeout=timeout
        ) as client:
            yield _httpx_call(client, method, resilient=False)

    return factory


def naive_retry_loop(method: str) -> ClientFactory:
    """Plain httpx in the retry loop people write by hand: any error, any method, 3 retries."""

    @asynccontextmanager
    async def factory(ctx: RunContext) -> AsyncIterator[Call]:
        target = ctx.target
        async with httpx.AsyncClient(verify=target.verify, http2=target.http2) as client:

            async def call(url: str, rid: int) -> Outcome:
                failure = None
                for attempt in range(NAIVE_RETRIES + 1):
                    if attempt:
                        await anyio.sleep(DEMO_RETRY.base_delay * 2 ** (attempt - 1))
                    try:
                        response = await client.request(method, url, **_request(method, rid, False))
                    except httpx.TransportError as exc:
                        failure = _failure(exc)
                        continue
                    if response.status_code < 500:
                        ok = response.is_success
                        failure = None if ok else str(response.status_code)
                        return Outcome(ok, failure, attempt + 1, response.http_version)
                    failure = str(response.status_code)
                return Outcome(False, failure, NAIVE_RETRIES + 1)

            yield call

    return factory


def resilient(
    method: str = "GET",
    *,
    retry: RetryConfig = DEMO_RETRY,
    timeout: float = 5.0,
    idempotency_key: bool = False,
) -> ClientFactory:
    """``httpx.AsyncClient(transport=ResilientTransport(retry=...))``."""

    @asynccontextmanager
    async def factory(ctx: RunContext) -> AsyncIterator[Call]:
        target = ctx.target
        transport = ResilientTransport(
            retry=retry,
            verify=target.verify,
            http2=target.http2,
            random=ctx.jitter(),
            clock=ctx.clock,
        )
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            yield _httpx_call(client, method, resilient=True, idempotency_key=idempotency_key)

    return factory


def facade(method: str = "GET", *, breaker: bool = False) -> ClientFactory:
    """``AsyncAPIClient(...)``, with a `CircuitBreaker` if asked. (Its transport's retry
    budget reads the real clock; in the outage scenario it never runs dry.)"""

    @asynccontextmanager
    async def factory(ctx: RunContext) -> AsyncIterator[Call]:
        target = ctx.target
        async with AsyncAPIClient(
            retry_config=DEMO_RETRY,
            circuit_breaker=ctx.breaker() if breaker else None,
            verify=target.verify,
            http2=target.http2,
        ) as api:

            async def call(url: str, rid: int) -> Outcome:
                try:
                    result = await api.request(method, url, **_request(method, rid, False))
                except APIClientError as exc:
                    history = get_retry_history(exc)
                    return Outcome(False, _why(_failure(exc), history), len(history))
                response = result.response
                attempts = len(get_retry_history(response))
                return Outcome(True, None, attempts, response.http_version)

            yield call

    return factory


# --- the scenarios ---------------------------------------------------------------------------

_PLAIN = "plain httpx"
_RESILIENT = "httpx + ResilientTransport"

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "flaky",
        "flaky upstream",
        f"{upstream.FLAKY_FAILURE_RATE:.0%} of arrivals fail: half answer 503, half drop the "
        "connection",
        "HTTP/2",
        "sequential",
        (Client(_PLAIN, plain()), Client(_RESILIENT, resilient())),
    ),
    Scenario(
        "rate-limit",
        "rate limited",
        f"{upstream.RATE_LIMITED_SHARE:.0%} of requests first get 429 with Retry-After "
        f"({upstream.RETRY_AFTER_SECONDS} s as delta-seconds or as an HTTP-date, half each); "
        "a retry before that time gets 429 again",
        "HTTP/1.1",
        "paced",
        (Client(_PLAIN, plain()), Client(_RESILIENT, resilient())),
    ),
    Scenario(
        "outage",
        "outage and recovery",
        f"the upstream is down (503) from {upstream.OUTAGE_FROM:.0%} to "
        f"{upstream.OUTAGE_TO:.0%} of the run, then comes back",
        "HTTP/1.1",
        "sequential",
        (
            Client(_PLAIN, plain()),
            Client(_RESILIENT, resilient()),
            Client("AsyncAPIClient + CircuitBreaker", facade(breaker=True)),
        ),
    ),
    Scenario(
        "post",
        "POSTs, flaky upstream",
        f"{upstream.POST_FAILURE_RATE:.0%} of arrivals fail: "
        f"{upstream.POST_DROPPED_SHARE:.0%} of those are processed, then the connection drops "
        "(the answer is lost); the rest get 503 unprocessed",
        "HTTP/2",
        "sequential",
        (
            Client(_PLAIN, plain("POST")),
            Client("httpx + naive retry loop", naive_retry_loop("POST")),
            Client(_RESILIENT, resilient("POST")),
            Client("ResilientTransport + Idempotency-Key", resilient("POST", idempotency_key=True)),
        ),
        method="POST",
    ),
    Scenario(
        "deadline",
        "slow upstream, deadline",
        f"{upstream.STALL_RATE:.0%} of arrivals stall {upstream.STALL_SECONDS} s; the caller "
        f"wants an answer within {DEADLINE} s",
        "HTTP/1.1",
        "paced",
        (
            Client(f"{_PLAIN}, timeout 5 s", plain()),
            Client(f"{_PLAIN}, timeout {ATTEMPT_TIMEOUT} s", plain(timeout=ATTEMPT_TIMEOUT)),
            Client(
                f"ResilientTransport, total_timeout {DEADLINE}",
                resilient(
                    retry=DEMO_RETRY.replace(total_timeout=DEADLINE), timeout=ATTEMPT_TIMEOUT
                ),
            ),
        ),
    ),
)


# --- driving the load ------------------------------------------------------------------------


#: ``progress(label, done, total, failed)``: ``done`` of ``total`` calls ended, ``failed`` of
#: them in a failure.
Progress = Callable[[str, int, int, int], None]


async def run_scenario(
    scenario: Scenario,
    target: Target,
    *,
    requests: int,
    seed: int,
    progress: Progress = lambda label, done, total, failed: None,
) -> list[ClientRun]:
    """Send ``requests`` requests through each of the scenario's clients, one client after
    another; ``progress(label, done, total, failed)`` is called as calls complete."""
    runs = []
    for index, client in enumerate(scenario.clients):
        base_url = f"{target.base_url}/{scenario.name}/{index}"
        runs.append(
            await _run_client(
                scenario,
                client,
                index,
                base_url,
                RunContext(target, seed, sequential=scenario.load == "sequential"),
                requests,
                progress,
            )
        )
    return runs


async def _run_client(
    scenario: Scenario,
    client: Client,
    index: int,
    base_url: str,
    ctx: RunContext,
    requests: int,
    progress: Progress,
) -> ClientRun:
    outcomes: list[Outcome | None] = [None] * requests
    seconds = [0.0] * requests
    done = failed = 0

    async def one(call: Call, rid: int) -> None:
        nonlocal done, failed
        started = time.perf_counter()
        outcome = outcomes[rid] = await call(f"{base_url}/{rid}", rid)
        seconds[rid] = time.perf_counter() - started
        done += 1
        failed += not outcome.ok
        progress(client.label, done, requests, failed)

    progress(client.label, 0, requests, 0)
    async with client.factory(ctx) as call:
        if scenario.load == "paced":
            # Request rid starts at rid * PACE seconds, whatever the answers so far.
            async with anyio.create_task_group() as tg:
                start = anyio.current_time()
                for rid in range(requests):
                    await anyio.sleep(max(0.0, start + rid * PACE - anyio.current_time()))
                    tg.start_soon(one, call, rid)
        else:
            for rid in range(requests):
                ctx.rid = rid
                await one(call, rid)
    finished = [o for o in outcomes if o is not None]
    assert len(finished) == requests
    return ClientRun(index, client.label, finished, seconds, ctx.transitions)


def names() -> Sequence[str]:
    """The scenarios' names, in the order the demo runs them."""
    return [scenario.name for scenario in SCENARIOS]
