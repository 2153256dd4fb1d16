"""The `StateStore` protocol: the few atomic operations a fleet's shared state needs.

Every operation is one atomic step on the store's side, timed by the store's own clock (for
Redis, the server's ``TIME``; never a client's clock), and every key it writes expires. Callers
(`_fleet.py`) never call a store on a request's happy path: they aggregate locally and flush
from a background task, and only failure paths (a failed request, a half-open probe, a retry,
a 429) wait for an answer, within a short timeout.

Circuits, per ``scope`` (the breaker's name) and origin:

* ``report``: outcomes of requests admitted while the circuit was closed: ``failures``
  and ``successes`` since the last report, and ``success_age``, the seconds since the latest
  success among them if there was one (count mode: a success breaks the run of failures, but
  only a run that began before it: failures that other workers reported after it still
  count). Opens the circuit for ``recovery_time`` when the count reaches
  ``failure_threshold`` (or, in rate mode, the failure ratio over ``window`` its threshold
  with at least ``minimum_calls`` calls). Ignored while the circuit is open. With a
  ``token``, also gives back that request's in-flight reservation (``admit``).
* ``admit`` (count mode): a request asks to go. Refused unless the circuit is closed. While
  the run of failures is empty, granted without more ado; while it is not, granted with an
  in-flight reservation under ``token`` (a lease of ``probe_lease`` seconds) as long as the
  failures counted plus the reservations out stay within ``CircuitPolicy.in_flight_limit``,
  else refused (the caller holds its request a moment and asks again). So once the fleet has
  seen a failure, the requests that reach the upstream before its circuit opens are at most
  that limit, however many workers send at once. In rate mode the same as ``read``.
* ``probe``: claim the one probe of a half-open circuit; granted to exactly one claimant
  until its result comes in or its lease (``probe_lease`` seconds) runs out. Granted at once
  when the circuit is closed.
* ``result``: the probe's outcome, with the token of its claim: success closes the circuit,
  failure opens it for another ``recovery_time``.
* ``release``: give the probe's claim, or the in-flight reservation, ``token`` back unused
  (the request was cancelled).
* ``read``: the state only.

The retry budget, per ``scope``: ``budget`` adds ``requests`` and ``retries`` (spent while
the caller could not reach the store: reconciled now) and spends up to ``want`` retries, as
many as keep ``spent <= floor + ratio * requests`` over the last ``window`` seconds (a caller
asks for the retries of several requests at once). It answers with the
fleet's requests in the window and the retries left, from which a caller works out its share
for when the store becomes unreachable, and which it reports (`TransportStats.budget_left`).
``read`` counts requests and retries in the same way (``want`` 0) and may answer with the
budget's view too (`StoreRead`): then every background read keeps the caller's view of the
fleet's budget current, not only its retries.

Cool-downs, per ``scope`` and origin: ``note_cool_down`` extends the window to at least
``seconds`` from now; ``read`` reports what is left of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from .._circuit import CircuitState
from .._validate import check_number

__all__ = [
    "BudgetPolicy",
    "BudgetView",
    "CircuitOp",
    "CircuitPolicy",
    "CircuitView",
    "StateStore",
    "StoreRead",
    "StoreSettings",
    "check_settings",
]

#: Called as ``(available, error)`` when a store becomes unavailable (with the error) or
#: available again (with None).
AvailabilityListener = Callable[[bool, "BaseException | None"], None]


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """How callers use a store: timeouts, staleness, back-off (shared by the stores)."""

    timeout: float = 0.1
    sync_interval: float = 0.25
    retry_interval: float = 1.0
    probe_lease: float = 10.0


def check_settings(owner: str, settings: StoreSettings) -> None:
    """Raise naming ``owner`` and the field unless every setting is in range."""
    check = partial(check_number, owner)
    check("timeout", settings.timeout, minimum=0.001, maximum=60.0)
    check("sync_interval", settings.sync_interval, minimum=0.001, maximum=3600.0)
    check("retry_interval", settings.retry_interval, minimum=0.0, maximum=3600.0)
    check("probe_lease", settings.probe_lease, minimum=0.001, maximum=86400.0)


CircuitOp = Literal["report", "admit", "probe", "result", "release", "read"]


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    """A breaker's settings, as the store applies them."""

    failure_threshold: int
    recovery_time: float
    failure_rate_threshold: float | None
    minimum_calls: int
    window: float
    probe_lease: float

    @property
    def in_flight_limit(self) -> int:
        """Count mode: failures in the run plus reserved requests in flight (``admit``) that
        the fleet allows at most while the run is not empty: ``failure_threshold`` and a
        quarter of it again (at least one more). A quarter, not more: the requests that were
        already in flight when the first failure came add to it, and together they should
        stay near 1.5 x ``failure_threshold``. Not less: requests are held whenever that many
        are out, which a flaky but working origin should rarely see."""
        return self.failure_threshold + max(1, self.failure_threshold // 4)

    @property
    def ttl(self) -> float:
        """Seconds every circuit key lives after its last write."""
        return 2 * max(self.recovery_time, self.window, self.probe_lease) + 60.0


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """A retry budget's settings, as the store applies them."""

    ratio: float
    floor: float  # retries always allowed per window: min_per_second * window
    window: float


class BudgetView(NamedTuple):
    """The fleet's retry budget as the store sees it after a `StateStore.budget` call."""

    granted: int  # how many of the retries asked for were spent (0 to ``want``)
    requests: int  # the fleet's requests in the window
    left: float  # retries the window allows still: floor + ratio * requests - spent


class CircuitView(NamedTuple):
    """One origin's circuit as the store sees it."""

    state: CircuitState
    retry_in: float  # seconds until an open circuit admits a probe
    failures: int  # count mode: failures in the current run


CLOSED_VIEW = CircuitView(CircuitState.CLOSED, 0.0, 0)


class StoreRead(dict[str, tuple[CircuitView, float]]):
    """`StateStore.read`'s answer as the bundled stores give it: the dict of each origin's
    circuit view and cool-down left, and ``budget``, the retry budget's view after the
    read counted its requests and retries (`BudgetView` with ``granted`` 0), or None when
    no budget was given. A store may answer with a plain dict instead: then the caller
    learns the budget's state from ``budget`` calls only (its retries)."""

    __slots__ = ("budget",)

    def __init__(
        self,
        views: dict[str, tuple[CircuitView, float]] | None = None,
        budget: BudgetView | None = None,
    ) -> None:
        super().__init__(views or {})
        self.budget = budget


@runtime_checkable
class StateStore(Protocol):
    """Shared state for circuits, the retry budget and cool-downs (see the module docstring).

    Implementations raise on failure (any exception); the caller falls back to local state.
    """

    #: Event loops the store works on: ``"asyncio"``, ``"trio"``.
    async_libraries: frozenset[str]
    #: Seconds any one call may take before the caller gives up and uses local state.
    timeout: float
    #: Seconds between background flushes and reads: the staleness bound of the happy path.
    sync_interval: float
    #: Seconds the caller keeps to local state after a failed call before trying again.
    retry_interval: float
    #: Seconds a half-open probe's claim lasts if its result never comes.
    probe_lease: float

    async def circuit(
        self,
        scope: str,
        origin: str,
        op: CircuitOp,
        policy: CircuitPolicy,
        *,
        failures: int = 0,
        successes: int = 0,
        success_age: float | None = None,
        token: str = "",
    ) -> tuple[CircuitView, bool]:
        """Apply ``op``; return the circuit's view after it and whether a probe was granted."""
        ...

    async def budget(
        self, scope: str, requests: int, want: int, policy: BudgetPolicy, *, retries: int = 0
    ) -> BudgetView:
        """Count ``requests`` and ``retries``; spend up to ``want`` retries (0: none, count
        only), as many as the budget allows (``granted``)."""
        ...

    async def note_cool_down(self, scope: str, origin: str, seconds: float) -> None:
        """Extend ``origin``'s cool-down to end at least ``seconds`` from now."""
        ...

    async def read(
        self,
        scope: str,
        origins: list[str],
        policy: CircuitPolicy | None,
        *,
        requests: int = 0,
        retries: int = 0,
        budget: BudgetPolicy | None = None,
        reports: Mapping[str, tuple[int, float | None]] | None = None,
    ) -> dict[str, tuple[CircuitView, float]]:
        """Each origin's circuit view (closed if ``policy`` is None) and cool-down left; and,
        in the same step (one call), count ``requests`` and ``retries`` in the
        ``budget`` if one is given, and ``report`` each origin's successes in ``reports``
        (``(successes, success_age)``) before its view is taken. With a ``budget``, a
        `StoreRead` (a dict) whose ``budget`` is the budget's view after the count, so the
        caller's view of the fleet's budget stays current; a plain dict is accepted too."""
        ...

    async def aclose(self) -> None:
        """Release the store's connections."""
        ...
