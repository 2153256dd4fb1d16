"""`Fleet`: one transport's link to a `StateStore` shared with the rest of its fleet.

The transport keeps its local state (breaker, budget, cool-down) exactly as without a store and
asks this class to share it:

* Happy path: nothing waits on the store. A request is counted locally (for the fleet's retry
  budget) and a success is noted locally; a background task flushes the counts and reads the
  fleet's view of the origins in use and of the retry budget every ``sync_interval`` seconds
  (one call), and the transport starts one only when requests flow. So the happy path's view
  of the fleet is at most ``sync_interval + timeout`` old. In count mode the first request to
  an origin asks the fleet's circuit first (once per origin).
* Failure paths wait for the store (each call at most ``timeout`` seconds): a failed request is
  reported at once and the answer applied (the fleet opened the circuit: open it here too);
  while the fleet counts failures for an origin (count mode), each request to it reserves an
  in-flight place first, or is held until the requests out decide (`check`); a half-open
  probe must claim the fleet's one probe first; a retry must be granted by the fleet's
  budget; a 429/503 with ``Retry-After`` is shared (in the background; the window as the
  local `CoolDown` cut it, at most its ``max_cool_down``), also when the request is not
  retried (a ``Retry-After`` above ``retry_after_cap``): the server asked every client.
* A burst makes few calls, so that a store with a bounded pool of connections
  (`RedisStore.from_url`'s ``max_connections``) keeps up: per origin, failures of requests
  that went without a reservation are gathered while a report is in flight and sent as one
  call (`_report_failure`); at most the in-flight limit of requests ask for an in-flight
  place at once, and once the fleet is at its limit one held request at a time asks again,
  the others waiting their turn and looking at what its answers showed (`check`); one
  cool-down share at a time;
  and retries wanted while a budget call is in flight are asked for together
  (`reserve_retry`). The calls not coalesced so (reserved requests' outcomes, probes) are
  bounded by the fleet's limits themselves.
* The store fails (down, slow, restarted, or an event loop it does not support): the call is
  given up after ``timeout``, a `StoreAvailability` hook event (logged by the default
  `LoggingHook`) and ``on_availability`` report it, and for ``retry_interval`` seconds every
  decision is local, the retry budget kept to this worker's share of what the fleet had left
  (`SharedBudget`). Then the next call tries again; the first that works reports that sharing
  resumed, and the retries spent meanwhile are added to the fleet's budget. No caller ever
  sees the store's exception.
* What `ResilientTransport.stats` reports of the budget (`SharedBudget.reading`): the fleet's
  retries left at the store's latest answer (``budget_left``, ``budget_seen_at``), kept by
  every answer that carries them; while the store is unavailable, the fallback allowance.

Calls are cancel-safe: a cancelled request cancels its store call, and redis-py (>= 5.0.2)
drops that connection rather than reusing it with an answer in flight.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

import anyio
import sniffio

from ._breaker import CircuitBreaker, CircuitState, Origin, Permit
from ._budget import BudgetSource, RetryBudget
from ._circuit import open_from_fleet
from ._config import RetryConfig
from ._cooldown import CoolDown
from ._instrument._hooks import StoreAvailability, emit
from ._logging import logger
from ._stores._protocol import BudgetPolicy, BudgetView, CircuitPolicy, CircuitView, StateStore

__all__ = ["Fleet", "SharedBudget"]

_T = TypeVar("_T")
_MAX_ORIGINS = 1_000  # origins whose fleet view is read in the background, at most
_MAX_RESERVED = 64  # reservations kept per origin; a lost one ends with its lease
_HOLD_FIRST_WAIT = 0.005  # seconds a request held at the in-flight limit waits first (doubling)
_HOLD_MAX_WAIT = 0.05  # ... and at most between two asks


class _Origin:
    """What this process has not told the fleet yet about one origin."""

    __slots__ = (
        "asking", "batches", "cool_down_pending", "fleet_failures", "full", "polling",
        "probe_elsewhere_until", "raised_at", "reserved", "sending", "sharing_cool_down",
        "success_at", "successes", "token",
    )  # fmt: skip

    def __init__(self, stamp: int) -> None:
        self.successes = 0  # since the last flush
        # When the latest success not yet reported came (it breaks the fleet's run of
        # failures if the run began before it), or None.
        self.success_at: float | None = None
        # The fleet's count-mode failures, as last read; -1: not read yet (count mode).
        self.fleet_failures = 0
        # `Fleet._stamp` when an answer last showed failures (or a circuit not closed) here,
        # or when this entry was made: an answer showing none lowers `fleet_failures` to 0
        # only if its call was issued since (else it may predate those failures).
        self.raised_at = stamp
        self.token = ""  # the claim of the fleet's probe this process holds
        # Another worker holds the fleet's probe: fail fast without asking until then.
        self.probe_elsewhere_until = 0.0
        # In-flight reservations (`Fleet.check`) of this process's requests: any request's
        # outcome gives one back (they are interchangeable).
        self.reserved: list[str] = []
        # Asking the fleet for an in-flight place here (`Fleet.check`): at most the fleet's
        # in-flight limit of requests ask at once; once an answer showed the fleet at its
        # limit (``full``), one held request at a time asks again. Made on first use.
        self.asking: anyio.Semaphore | None = None
        self.polling: anyio.Lock | None = None
        self.full = False
        # Failures without a reservation, gathered while a report is in flight
        # (`Fleet._report_failure`): in count mode a new batch after each success (the
        # failures before it are not in the run after it), sent in order; and whether a
        # task is sending them.
        self.batches: deque[_Batch] = deque()
        self.sending = False
        # The cool-down to share once the call in flight is done (`Fleet.share_cool_down`).
        self.cool_down_pending = 0.0
        self.sharing_cool_down = False

    def take_reservation(self) -> str:
        return self.reserved.pop() if self.reserved else ""


class _Batch:
    """What requests asked for while a call of the same kind was in flight (failures to
    report for one origin, retries to ask the budget for): sent as one call."""

    __slots__ = ("count", "done", "gone", "granted", "success_at")

    def __init__(self) -> None:
        self.count = 0
        self.success_at: float | None = None  # the latest success not reported yet
        self.done = anyio.Event()  # set once the store answered (or the call failed)
        # Retry batches: the requests that stopped waiting before the answer, and the
        # retries granted for the others that they have not claimed yet.
        self.gone = 0
        self.granted = 0


class SharedBudget(RetryBudget):
    """The transport's retry budget when a store shares it: a retry is spent from a token the
    fleet granted (`Fleet.reserve_retry`, awaited only once a failed attempt's decision says
    retry, just before this spends). While the store is unavailable, from this worker's share
    of what the fleet's budget had left when it last answered plus the ratio of its requests
    since (`Fleet.fallback_allowance`), so that the fleet as a whole stays within its
    allowance; if the store never answered, from the ratio of this worker's own requests,
    without the floor (the floor is the fleet's). Requests are counted locally too."""

    __slots__ = ("_fleet",)

    def __init__(self, fleet: Fleet, config: RetryConfig) -> None:
        assert config.budget_ratio is not None
        super().__init__(config.budget_ratio, config.budget_min_per_second, config.budget_window)
        self._fleet = fleet
        fleet.local_budget = self

    def requests_in_window(self, now: float) -> float:
        """This worker's requests over the budget's window."""
        counts = self._counts
        counts.slide(now)
        return counts.first

    def reading(self, now: float) -> tuple[float | None, BudgetSource, float | None]:
        """What decides this worker's next retry, for `ResilientTransport.stats` and
        `BudgetRefusal`, without a store call (see `TransportStats.budget_left`):

        * ``(left, "fleet", age)`` while the store is in use: the retries the fleet's budget
          had left at the store's latest answer (a budget call or a background read), ``age``
          seconds ago; ``(None, "fleet", None)`` before its first answer;
        * ``(allowance, "fallback", None)`` while it is unavailable (or the event loop is one
          it does not support): what `try_spend` allows this worker on its own now."""
        fleet = self._fleet
        if fleet.answering:
            if fleet.budget_seen_at is None or fleet.budget_left is None:
                return None, "fleet", None
            return max(0.0, fleet.budget_left), "fleet", max(0.0, now - fleet.budget_seen_at)
        return max(0.0, self._fallback_allowance(now, peek=True)), "fallback", None

    def available(self, now: float) -> float:
        """`reading`'s number (0.0 while the store has not answered yet)."""
        return self.reading(now)[0] or 0.0

    def _fallback_allowance(self, now: float, *, peek: bool = False) -> float:
        """``peek``: change nothing (`reading`, which `stats()` may call from another
        thread: `SlidingCounts.peek`)."""
        allowance = self._fleet.fallback_allowance(self._ratio)
        if allowance is None:
            # The store never answered: no share known. The floor is the fleet's, not each
            # worker's: only the ratio of this worker's own requests.
            counts = self._counts
            if peek:
                requests, retries = counts.peek(now)
            else:
                counts.slide(now)
                requests, retries = counts.first, counts.second
            allowance = self._ratio * requests - retries
        return allowance

    def try_spend(self, now: float) -> bool:
        fleet = self._fleet
        if fleet.sharing:
            if fleet.retry_tokens > 0:
                fleet.retry_tokens -= 1
                return True
            return False
        if self._fallback_allowance(now) < 1.0:
            return False
        self._counts.add(now, second=1)
        fleet.spent_locally()
        return True


class Fleet:
    """Shares one transport's circuit, budget and cool-down state through ``store``."""

    def __init__(
        self,
        store: StateStore,
        *,
        breaker: CircuitBreaker | None,
        cool_down: CoolDown | None,
        retry: RetryConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._breaker = breaker
        self._cool_down = cool_down
        self._clock = clock
        self.scope = (breaker.name if breaker is not None else None) or "default"
        self._circuit_policy = None
        if breaker is not None:
            self._circuit_policy = CircuitPolicy(
                breaker.failure_threshold,
                breaker.recovery_time,
                breaker.failure_rate_threshold,
                breaker.minimum_calls,
                breaker.window,
                store.probe_lease,
            )
        self._budget_policy = None
        if retry.budget_ratio is not None:
            self._budget_policy = BudgetPolicy(
                retry.budget_ratio,
                retry.budget_min_per_second * retry.budget_window,
                retry.budget_window,
            )
        # Count mode: the first request to an origin, and each while the fleet counts
        # failures there, reserves an in-flight place first (`check`).
        self._counting = (
            self._circuit_policy is not None and self._circuit_policy.failure_rate_threshold is None
        )
        self._origins: OrderedDict[Origin, _Origin] = OrderedDict()
        # Orders the store's answers against the calls out: bumped by each answer that shows
        # failures and each origin entry made; a call notes it when issued (`_apply`).
        self._stamp = 0
        self._requests = 0  # counted since the last flush
        self.retry_tokens = 0  # retries the fleet's budget granted this process, unspent
        # Retries wanted while a budget call is in flight (`reserve_retry`), and whether a
        # task is asking.
        self._retry_batch: _Batch | None = None
        self._asking_budget = False
        self.local_budget: SharedBudget | None = None
        # For when the store is unavailable: this worker's share of the retries the fleet's
        # budget had left at its last answer (None: no answer yet), and the requests made and
        # retries spent here since; the retries spent so are reported when it answers again.
        self._budget_share: float | None = None
        # The retries the fleet's budget had left at the store's latest answer, and when
        # (this fleet's clock) it came; None before the first: what `stats()` reports.
        self.budget_left: float | None = None
        self.budget_seen_at: float | None = None
        # Orders the budget's answers (`_note_budget`): the calls that carry the budget (a
        # budget call, a background read) are numbered when issued; an answer is kept only if
        # its call was issued after the one whose answer is kept, and after the store last
        # failed (`_unavailable`): the calls answer on connections of their own, so a late
        # answer may be older than one kept, or predate the retries spent on the fallback.
        self._budget_issued = 0
        self._budget_kept = 0
        self._since_requests = 0
        self._since_spent = 0
        self._unreported_retries = 0
        self._next_sync = 0.0
        self._sync_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False  # after aclose: no new background call
        self._down_until = 0.0  # while the store is unavailable: use local state until then
        self._available = True
        self._failures = 0  # calls that failed: a call that fails during another's flight
        self._supported: bool | None = None  # the event loop, checked on first use

    def __repr__(self) -> str:
        return f"Fleet(store={self.store!r}, scope={self.scope!r})"

    # --- availability -----------------------------------------------------------------------

    @property
    def answering(self) -> bool:
        """`sharing` as far as it is known, without checking the event loop (nor logging):
        for `stats()`, which may run anywhere, before any request or outside the loop."""
        return self._supported is not False and self._clock() >= self._down_until

    @property
    def sharing(self) -> bool:
        """Whether decisions go through the store now (else local state)."""
        if self._supported is None:
            library = _current_library()
            self._supported = library in self.store.async_libraries
            if not self._supported:
                logger.warning(
                    "%r does not work on %s: this transport keeps to local state",
                    self.store, library,
                )  # fmt: skip
        return self._supported and self._clock() >= self._down_until

    async def _call(self, call: Callable[[], Awaitable[_T]]) -> _T | None:
        """``call()`` within the store's timeout; None (and local state for a while) if it
        fails or times out."""
        if not self.sharing:
            return None
        failures = self._failures
        try:
            with anyio.fail_after(self.store.timeout):
                result = await call()
        except Exception as error:
            self._unavailable(error)
            return None
        # An answer to a call issued before another failed says nothing of the store since:
        # not that it answers again.
        if not self._available and self._failures == failures:
            self._available = True
            self._notify(True, None)
        return result

    def _unavailable(self, error: BaseException) -> None:
        self._failures += 1
        self._down_until = self._clock() + self.store.retry_interval
        self._budget_kept = self._budget_issued  # answers to calls out now are stale
        self.retry_tokens = 0
        for local in self._origins.values():
            local.token = ""
            local.reserved.clear()
            local.full = False
        if self._available:
            self._available = False
            self._notify(False, error)

    def _notify(self, available: bool, error: BaseException | None) -> None:
        # Logged by the default LoggingHook, like every other report.
        retry_in = 0.0 if available else self.store.retry_interval
        emit(self, "on_store_availability",
             lambda: StoreAvailability(repr(self.store), available, error, retry_in))  # fmt: skip
        hook = getattr(self.store, "on_availability", None)
        if hook is not None:
            try:
                hook(available, error)
            except Exception:  # a broken hook must not break requests
                logger.exception("on_availability hook raised")

    # --- the happy path: no waiting ---------------------------------------------------------

    def started(self, origin: Origin | None) -> None:
        """A request (not a retry) starts: count it; start a background sync if one is due."""
        self._requests += 1
        self._since_requests += 1
        if origin is not None:
            self._local(origin)
        now = self._clock()
        if now >= self._next_sync and self._sync_task is None and self.sharing:
            self._next_sync = now + self.store.sync_interval
            self._sync_task = self._spawn(self._sync())

    def _local(self, origin: Origin) -> _Origin:
        local = self._origins.get(origin)
        if local is None:
            if len(self._origins) >= _MAX_ORIGINS:
                self._origins.popitem(last=False)
            self._stamp += 1
            local = self._origins[origin] = _Origin(self._stamp)
            if self._counting:
                local.fleet_failures = -1
        return local

    async def _sync(self) -> None:
        try:
            await self._read()
        finally:
            self._sync_task = None

    async def _read(self) -> None:
        """Flush the request count and the successes, and read the fleet's view of the
        origins in use: one call (one Redis pipeline, whatever the number of origins)."""
        origins = list(self._origins)
        names = [str(origin) for origin in origins]
        store, policy, budget = self.store, self._circuit_policy, self._budget_policy
        requests, self._requests = self._requests, 0
        retries, self._unreported_retries = self._unreported_retries, 0
        if budget is None:
            requests = retries = 0
        # Successes since the last flush: in rate mode they are calls in the fleet's window;
        # in count mode they matter only to break a run of failures.
        reports: dict[str, tuple[int, float | None]] = {}
        if policy is not None:
            rate_mode = policy.failure_rate_threshold is not None
            now = self._clock()
            for name, local in zip(names, self._origins.values(), strict=True):
                successes, local.successes = local.successes, 0
                if successes and (rate_mode or local.fleet_failures > 0):
                    age = None if local.success_at is None else max(0.0, now - local.success_at)
                    reports[name] = (successes, age)
                    local.success_at = None
        if not names and not requests and not retries:
            return
        issued = self._stamp
        ticket = self._budget_ticket()
        views = await self._call(
            lambda: store.read(self.scope, names, policy, requests=requests, retries=retries,
                               budget=budget, reports=reports)
        )  # fmt: skip
        if views is None:
            # The retries are counted when the store answers again; the requests and
            # successes are not (the call may have reached it): the budget and the breaker
            # err on the strict side.
            self._unreported_retries += retries
            return
        budget_view = getattr(views, "budget", None)  # a `StoreRead`; a plain dict has none
        if isinstance(budget_view, BudgetView):
            self._note_budget(budget_view, ticket)
        for origin, name in zip(origins, names, strict=True):
            view, cool_down_left = views.get(name, (None, 0.0))
            if view is not None:
                self._apply(origin, view, issued)
            if cool_down_left > 0 and self._cool_down is not None:
                self._cool_down.hold(origin, cool_down_left)

    def _apply(self, origin: Origin, view: CircuitView, issued: int) -> None:
        """Make the local breaker agree with the fleet's view where the fleet is stricter.
        ``issued``: `_stamp` when the call that read ``view`` was issued.

        Calls overlap (a background read, a request's report), and the store answers each
        on its own connection: an answer may come after another that the store gave later.
        A view that shows failures is always taken (at worst the next request asks the fleet
        once more, and its answer is the truth); a view that shows none only if no answer
        showing failures came in here since its call was issued: else it may have been read
        before them, and taking it would let this worker's requests go without asking while
        the fleet counts failures (past `CircuitPolicy.in_flight_limit`)."""
        breaker = self._breaker
        if breaker is None:
            return
        local = self._origins.get(origin)
        if local is not None:
            # Open counts as suspect too: when it half-opens, its state is read again.
            failures = view.failures or int(view.state is not CircuitState.CLOSED)
            if failures:
                self._stamp += 1
                local.raised_at = self._stamp
                local.fleet_failures = failures
            elif local.raised_at <= issued:
                local.fleet_failures = 0
                local.full = False
        if view.state is CircuitState.OPEN:
            if local is not None:
                local.reserved.clear()  # the store dropped them when the circuit opened
                local.full = False
            open_from_fleet(breaker, origin, view.retry_in)
        elif view.state is CircuitState.HALF_OPEN and breaker.state(origin) is CircuitState.CLOSED:
            open_from_fleet(breaker, origin, 0.0)  # the fleet waits for its one probe

    # --- failure paths: wait for the store (within its timeout) ----------------------------

    def suspect(self, origin: Origin) -> bool:
        """Whether ``origin`` has failures in the fleet's count as last seen here, or (count
        mode) this transport has not read its circuit yet: then each request asks the fleet
        before it goes (`check`), so that a circuit another worker opened stops this one at
        once, not a ``sync_interval`` later, and the requests out while the fleet counts
        failures stay within `CircuitPolicy.in_flight_limit`."""
        local = self._origins.get(origin)
        return (
            local is not None
            and local.fleet_failures != 0
            and self._breaker is not None
            and self._breaker.state(origin) is CircuitState.CLOSED
            and self.sharing
        )

    async def check(self, origin: Origin, deadline: float | None = None) -> None:
        """Read ``origin``'s circuit from the fleet and apply it; in count mode, reserve one
        of the fleet's in-flight places for the request about to go (`StateStore`'s
        ``admit``). While the fleet is at its limit (failures in the run plus requests out),
        hold the request and ask again, for at most ``sync_interval`` seconds and never past
        ``deadline`` (the request's, on this fleet's clock): then it goes without a
        reservation. The requests out decide meanwhile: if they fail, the circuit opens and
        the request fails fast; a success ends the run and lets it go.

        At most the fleet's in-flight limit of requests per origin ask at once, and once the
        fleet is at its limit one held request at a time asks again; the others wait their
        turn (within the same limits), then ask only if the answers meanwhile left the
        origin suspect."""
        policy, store, name = self._circuit_policy, self.store, str(origin)
        if policy is None:
            return
        if policy.failure_rate_threshold is not None:
            issued = self._stamp
            answer = await self._call(lambda: store.circuit(self.scope, name, "read", policy))
            if answer is not None:
                self._apply(origin, answer[0], issued)
            return
        local = self._local(origin)
        # A burst of requests to an origin makes few calls, and the places fill at once: at
        # most the fleet's in-flight limit of them ask together (no more places than that
        # can be granted); once an answer shows the fleet at its limit, the requests held
        # wait for their turn to ask again, one at a time (not each every few ms), until a
        # place frees. Each waits for a turn within the hold's limit, or goes as a request
        # held that long does (without a reservation; the breaker, as the others' answers
        # left it, still decides).
        if local.asking is None or local.polling is None:
            # No more at once than the store's connections either (`RedisStore.from_url`'s
            # ``max_connections``): the others would wait for one within their timeout.
            width = policy.in_flight_limit
            bound = getattr(store, "max_connections", None)
            if isinstance(bound, int) and bound > 0:
                width = min(width, bound)
            local.asking = anyio.Semaphore(width)
            local.polling = anyio.Lock()
        asking, polling, began = local.asking, local.polling, anyio.current_time()
        while self.suspect(origin):
            # The first ask about an origin is one at a time too: its answer settles it for
            # the others (usually: no failures, go without asking).
            if local.full or local.fleet_failures < 0:
                if not await self._take_turn(polling, began, deadline):
                    return
                try:
                    if local.full:  # else a place freed meanwhile: ask with the others
                        await self._hold(origin, local, deadline, anyio.current_time() - began)
                        return
                    if (
                        local.fleet_failures < 0
                        and self.suspect(origin)
                        and not await self._ask_place(origin, local)
                    ):
                        return
                finally:
                    polling.release()
            else:
                if not await self._take_turn(asking, began, deadline):
                    return
                try:
                    refused = (
                        not local.full
                        and self.suspect(origin)
                        and await self._ask_place(origin, local)
                    )
                finally:
                    asking.release()
                if not refused and not local.full:
                    return

    async def _take_turn(
        self, turn: anyio.Lock | anyio.Semaphore, began: float, deadline: float | None
    ) -> bool:
        """Acquire ``turn`` for `check`, within the hold's limit (``sync_interval`` since
        ``began``, and ``deadline``); False if the limit came first."""
        limit = self.store.sync_interval - (anyio.current_time() - began)
        if deadline is not None:
            limit = min(limit, deadline - self._clock())
        if limit <= 0:
            return False
        try:
            turn.acquire_nowait()
            return True
        except anyio.WouldBlock:
            pass
        with anyio.move_on_after(limit):
            await turn.acquire()
            return True
        return False

    async def _ask_place(self, origin: Origin, local: _Origin) -> bool:
        """One ``admit`` call for `check`: True if refused (the fleet at its limit, its
        circuit closed): the request is held; else it goes (granted, the circuit not closed
        -- the breaker decides --, or the store unavailable)."""
        policy, store, name = self._circuit_policy, self.store, str(origin)
        assert policy is not None
        token = secrets.token_hex(8)
        issued = self._stamp
        answer = await self._call(
            partial(store.circuit, self.scope, name, "admit", policy, token=token)
        )
        if answer is None:
            return False  # the store is unavailable: local state decides
        view, granted = answer
        self._apply(origin, view, issued)
        if granted:
            local.full = False
            if view.failures:  # else granted without a reservation
                if len(local.reserved) >= _MAX_RESERVED:
                    del local.reserved[0]
                local.reserved.append(token)
            return False
        if view.state is not CircuitState.CLOSED:
            return False
        local.full = True
        return True

    async def _hold(
        self, origin: Origin, local: _Origin, deadline: float | None, held: float
    ) -> None:
        """`check`'s held request, while it has the origin's one turn to ask again: ask,
        5 ms later, then doubling to 50 ms between asks, until a place is granted or the
        circuit is not closed, for at most ``sync_interval`` held (``held``: seconds so
        far) and never past ``deadline``."""
        store = self.store
        wait = _HOLD_FIRST_WAIT
        while self.suspect(origin):
            if deadline is not None:
                wait = min(wait, deadline - self._clock())
            if wait <= 0 or held >= store.sync_interval:
                return
            await anyio.sleep(wait)
            held += wait
            wait = min(2 * wait, _HOLD_MAX_WAIT)
            if not await self._ask_place(origin, local):
                return

    async def claim_probe(self, permit: Permit) -> float | None:
        """``permit`` is a local half-open probe: claim the fleet's one probe. None if it may
        go (granted, or the store unavailable); else the seconds until the fleet's circuit
        admits a probe (0.0 while another worker's probe is out)."""
        policy = self._circuit_policy
        assert policy is not None
        local = self._local(permit.origin)
        if self._clock() < local.probe_elsewhere_until:
            return 0.0
        token = secrets.token_hex(8)
        store, name = self.store, str(permit.origin)
        issued = self._stamp
        answer = await self._call(lambda: store.circuit(self.scope, name, "probe", policy,
                                                        token=token))  # fmt: skip
        if answer is None:
            return None
        view, granted = answer
        if granted:
            local.token = token if view.state is not CircuitState.CLOSED else ""
            return None
        if view.state is CircuitState.OPEN:
            self._apply(permit.origin, view, issued)
        else:
            local.probe_elsewhere_until = self._clock() + self.store.sync_interval
        return view.retry_in

    def ignored(self, permit: Permit) -> None:
        """The request admitted with ``permit`` ended saying nothing about the upstream
        (cancelled, a local error): give the fleet's probe back if it held it (in the
        background: this runs while a cancellation unwinds)."""
        local = self._origins.get(permit.origin)
        if local is None or not self.sharing:
            return
        if local.token and permit.generation:
            token, local.token = local.token, ""
        else:
            token = local.take_reservation()
        if not token:
            return
        policy, store, name = self._circuit_policy, self.store, str(permit.origin)
        assert policy is not None
        self._spawn(self._call_quietly(
            lambda: store.circuit(self.scope, name, "release", policy, token=token)
        ))  # fmt: skip

    async def outcome(self, permit: Permit, failed: bool) -> None:
        """Share the outcome of a request the local breaker admitted with ``permit``. Waits
        for the store only on failures and probes."""
        local = self._local(permit.origin)
        if local.token and permit.generation:
            token, local.token = local.token, ""
            policy, store, name = self._circuit_policy, self.store, str(permit.origin)
            assert policy is not None
            issued = self._stamp
            answer = await self._call(
                lambda: store.circuit(
                    self.scope, name, "result", policy, failures=int(failed), token=token
                )
            )
            if answer is not None:
                self._apply(permit.origin, answer[0], issued)
        elif not failed:
            reservation = local.take_reservation()
            if reservation:
                # Give the place back and break the fleet's run of failures now (in the
                # background), so that requests held at the limit go.
                local.success_at = None
                self._spawn(self._report(permit.origin, local, successes=1,
                                         success_at=self._clock(), token=reservation))  # fmt: skip
            else:
                local.successes += 1
                local.success_at = self._clock()
        else:
            success_at, local.success_at = local.success_at, None
            token = local.take_reservation()
            if token:  # at most the fleet's in-flight limit of these: each its own call
                await self._report(permit.origin, local, failures=1, success_at=success_at,
                                   token=token)  # fmt: skip
            else:
                await self._report_failure(permit.origin, local, success_at)

    async def _report_failure(
        self, origin: Origin, local: _Origin, success_at: float | None
    ) -> None:
        """Report a failure without a reservation (its request went while the origin looked
        healthy: any number of them may fail at once). While a report for the origin is in
        flight the failures gather in one batch, sent as one call when it is done; each
        waits for its batch's answer (applied here) at most the store's ``timeout``."""
        if not self.sharing:
            return
        batches = local.batches
        # Count mode: a success since the failures gathered breaks their run; one call can
        # say "a success, then these failures", not "failures, a success, failures": those
        # after it go in a batch of their own.
        if batches and not (self._counting and success_at is not None):
            batch = batches[-1]
        else:
            batch = _Batch()
            batches.append(batch)
        batch.count += 1
        if success_at is not None and (batch.success_at is None or success_at > batch.success_at):
            batch.success_at = success_at
        if not local.sending:
            local.sending = True
            if self._spawn(self._send_failures(origin, local)) is None:
                local.sending = False  # closed: local state only
                batches.clear()
                return
        with anyio.move_on_after(self.store.timeout):
            await batch.done.wait()

    async def _send_failures(self, origin: Origin, local: _Origin) -> None:
        """Send the origin's batches of failures, one call at a time, until none is left."""
        batches, batch = local.batches, None
        try:
            while batches:
                batch = batches.popleft()
                await self._report(origin, local, failures=batch.count,
                                   success_at=batch.success_at)  # fmt: skip
                batch.done.set()
        finally:
            local.sending = False
            if batch is not None:
                batch.done.set()
            while batches:  # cancelled (the fleet closed): nobody waits for them
                batches.popleft().done.set()

    async def _report(
        self, origin: Origin, local: _Origin, *, failures: int = 0, successes: int = 0,
        success_at: float | None = None, token: str = "",
    ) -> None:  # fmt: skip
        policy, store, name = self._circuit_policy, self.store, str(origin)
        assert policy is not None
        age = None if success_at is None else max(0.0, self._clock() - success_at)
        issued = self._stamp
        answer = await self._call(
            lambda: store.circuit(self.scope, name, "report", policy, failures=failures,
                                  successes=successes, success_age=age, token=token)
        )  # fmt: skip
        if answer is not None:
            self._apply(origin, answer[0], issued)

    async def reserve_retry(self, within: float | None = None) -> None:
        """Before a retry is spent: make sure a retry token from the fleet's budget is at
        hand (a call to the store when none is). The transport asks only once a failed
        attempt's decision says retry (`ResilientTransport._charge`), so a request that stops
        for another reason takes no token from the rest of the fleet. The requests that ask
        while a budget call is in flight are asked for together in the next call (a burst's
        retries take a few calls, not one each); each waits for its batch's answer at most the
        store's ``timeout`` (then it has no token: no retry, the strict side; a token granted
        after that stays at hand for the next retry, and counts as spent meanwhile). The
        tokens granted to a batch go to its requests still waiting, one each, before any other
        request can take them. ``within``: seconds after which a token would come too late for
        the caller (its retry's wait would pass its deadline): it waits no longer than that."""
        if self._budget_policy is None or self.retry_tokens > 0 or not self.sharing:
            return
        batch = self._retry_batch
        if batch is None:
            batch = self._retry_batch = _Batch()
        batch.count += 1
        if not self._asking_budget:
            self._asking_budget = True
            if self._spawn(self._ask_budget()) is None:
                self._asking_budget, self._retry_batch = False, None  # closed: local state
                return
        limit = self.store.timeout if within is None else min(self.store.timeout, within)
        try:
            with anyio.move_on_after(limit):
                await batch.done.wait()
        finally:
            if not batch.done.is_set():
                batch.gone += 1  # its retry, if granted, stays at hand for the next one
            elif batch.granted > 0:
                # Claimed at once, and spent by the caller before anything else runs: a
                # request that finds a token at hand meanwhile cannot take the one granted
                # for this request (which would then go without its retry).
                batch.granted -= 1
                self.retry_tokens += 1

    async def _ask_budget(self) -> None:
        """Ask the fleet's budget for the retries wanted, one call at a time, until no
        request waits."""
        batch = None
        try:
            while self._retry_batch is not None:
                batch, self._retry_batch = self._retry_batch, None
                # Not for the requests that stopped waiting already (cancelled): they stop.
                wanted = batch.count - batch.gone
                granted = await self._spend_budget(wanted) if wanted > 0 else 0
                # For the requests still waiting; the rest are at hand for later retries.
                batch.granted = min(granted, batch.count - batch.gone)
                self.retry_tokens += granted - batch.granted
                batch.done.set()
        finally:
            self._asking_budget = False
            for left in (batch, self._retry_batch):
                if left is not None:
                    left.done.set()  # cancelled (the fleet closed): nobody waits for it

    async def _spend_budget(self, wanted: int) -> int:
        """One budget call: flush the counts, spend up to ``wanted`` retries; how many the
        fleet granted."""
        budget = self._budget_policy
        assert budget is not None
        requests, self._requests = self._requests, 0
        retries, self._unreported_retries = self._unreported_retries, 0
        store = self.store
        ticket = self._budget_ticket()
        answer = await self._call(
            lambda: store.budget(self.scope, requests, wanted, budget, retries=retries)
        )
        if answer is None:
            self._unreported_retries += retries  # and the requests are not (see `_read`)
            return 0
        self._note_budget(answer, ticket)
        return answer.granted

    def _budget_ticket(self) -> int:
        """Number a call that carries the budget, as it is issued (see `_note_budget`)."""
        self._budget_issued += 1
        return self._budget_issued

    def _note_budget(self, answer: BudgetView, ticket: int) -> None:
        """The store answered with the fleet's budget (a budget call, or a background read):
        keep what it has left, for `stats()`, and this worker's share of it, for when the
        store stops answering. Unless the answer is stale: its call (``ticket``) was issued
        before the call whose answer is kept (the store may have served it first: a later
        answer would carry an older number), or before the store last failed (the retries
        spent here since, on the fallback, are not in it: a new share and a reset of what
        was spent since would let this worker spend them again)."""
        if ticket <= self._budget_kept:
            return
        self._budget_kept = ticket
        now = self._clock()
        self.budget_left, self.budget_seen_at = answer.left, now
        share = 1.0
        if self.local_budget is not None and answer.requests > 0:
            mine = self.local_budget.requests_in_window(now)
            share = min(1.0, mine / answer.requests)
        self._budget_share = share * max(0.0, answer.left)
        self._since_requests = self._since_spent = 0

    def fallback_allowance(self, ratio: float) -> float | None:
        """While the store is unavailable: the retries this worker may spend, its share of
        what the fleet had left at the last answer plus ``ratio`` of its requests since, less
        what it spent since; None if the store never answered."""
        if self._budget_share is None:
            return None
        return self._budget_share + ratio * self._since_requests - self._since_spent

    def spent_locally(self) -> None:
        """A retry was spent while the store was unavailable: count it against the share, and
        in the fleet's budget once the store answers again."""
        self._since_spent += 1
        self._unreported_retries += 1

    def share_cool_down(self, origin: Origin, seconds: float) -> None:
        """A 429/503 with ``Retry-After`` started or extended ``origin``'s cool-down: tell the
        fleet, in the background."""
        if seconds <= 0 or not self.sharing:
            return
        # One call at a time per origin: the answers of a burst of requests in flight each
        # extend the window a little; the latest is shared when the call out is done.
        local = self._local(origin)
        local.cool_down_pending = max(local.cool_down_pending, self._clock() + seconds)
        if not local.sharing_cool_down:
            local.sharing_cool_down = True
            if self._spawn(self._send_cool_down(origin, local)) is None:
                local.sharing_cool_down = False

    async def _send_cool_down(self, origin: Origin, local: _Origin) -> None:
        store, name = self.store, str(origin)
        try:
            while local.cool_down_pending > 0:
                until, local.cool_down_pending = local.cool_down_pending, 0.0
                seconds = until - self._clock()
                if seconds > 0:
                    await self._call(partial(store.note_cool_down, self.scope, name, seconds))
        finally:
            local.sharing_cool_down = False

    async def _call_quietly(self, call: Callable[[], Awaitable[Any]]) -> None:
        await self._call(call)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run ``coroutine`` in the background, unless the fleet was closed: a request still
        in flight when its transport closes must not leave a task nobody cancels."""
        if self._closed:
            coroutine.close()
            return None
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Cancel the background calls still running (the store stays open: it may be
        shared; close it with its own ``aclose``). Later outcomes stay local."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _current_library() -> str:
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return "none"
