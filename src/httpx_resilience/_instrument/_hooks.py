"""The instrumentation hook protocol: what a `ResilientTransport` reports, and to whom.

Every report is a frozen record handed to the hooks that have the matching method::

    AttemptStart   -> Hook.on_attempt        before each attempt goes on the wire; may return a
                                             callable, called with the attempt's AttemptEnd
    AttemptEnd     -> Hook.on_retry          an attempt failed and a retry follows after a wait
                   -> Hook.on_resend         the server did not process it: resent at once
    GiveUp         -> Hook.on_give_up        the request failed and no other attempt follows
    CircuitChange  -> Hook.on_circuit_change a circuit breaker changed an origin's state
    FailFast       -> Hook.on_fail_fast      an open circuit refused an attempt (nothing sent)
    BudgetRefusal  -> Hook.on_budget_refusal the retry budget refused a retry
    CoolDownStart  -> Hook.on_cool_down_start   an origin's cool-down window started
    CoolDownEnd    -> Hook.on_cool_down_end     ... and ended (its probe got another answer)
    CoolDownRefusal -> Hook.on_cool_down_refusal a cool-down failed a request at once
    StoreAvailability -> Hook.on_store_availability  a shared state store stopped or resumed
                                             answering (the transport keeps to local state)

Hooks are registered globally (`set_hooks`, `add_hook`; the default is one `LoggingHook`) and
per transport (``ResilientTransport(hooks=...)``). Two rules keep them harmless:

* No hook work on the happy path unless some hook asked for it: a `HookSet` holds, per event,
  the hooks that implement it, and the transport checks that tuple before building a record.
  The default `LoggingHook` implements no per-attempt method, so it costs nothing until a
  request fails.
* A hook that raises never breaks a request: the error is logged once per hook and event, with
  its traceback, and then ignored.
"""

from __future__ import annotations

import enum
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import _circuit, _cooldown
from .._cooldown import CoolDownEnd, CoolDownStart

if TYPE_CHECKING:
    import httpx

    from .._budget import BudgetSource
    from .._circuit import CircuitState, CircuitTable, Origin

__all__ = [
    "EVENTS",
    "AttemptEnd",
    "AttemptOutcome",
    "AttemptStart",
    "BudgetRefusal",
    "CircuitChange",
    "CoolDownEnd",
    "CoolDownRefusal",
    "CoolDownStart",
    "FailFast",
    "GiveUp",
    "Hook",
    "HookSet",
    "StoreAvailability",
    "add_hook",
    "attach_hooks",
    "current_hooks",
    "emit",
    "emit_circuit_change",
    "get_hooks",
    "set_hooks",
]

logger = logging.getLogger("httpx_resilience")


class AttemptOutcome(str, enum.Enum):
    """What followed an attempt."""

    #: Its response goes to the caller as it is (a status the policy does not retry).
    FINAL = "final"
    #: It failed and is retried after `AttemptEnd.wait` seconds.
    RETRY = "retry"
    #: The server provably did not process it: resent at once, without spending a retry.
    RESEND = "resend"
    #: It failed and no other attempt follows (`AttemptEnd.reason` says why).
    GIVE_UP = "give up"
    #: It was cancelled (a deadline of the caller's, a task group): nothing was decided.
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class AttemptStart:
    """An attempt about to be sent.

    Attributes:
        method: The request method.
        url: The request URL with credentials redacted (userinfo and fragment dropped,
            secret-looking query values replaced).
        origin: Where the attempt goes.
        attempt: 1 for the first attempt, 2 for the next (a retry or a free resend), ...
        headers: The attempt's request headers. A hook may add trace context here (the
            OpenTelemetry adapter sets ``traceparent``); it must change nothing else. Left out
            of the record's repr and comparisons.
    """

    method: str
    url: str
    origin: Origin
    attempt: int
    headers: httpx.Headers = field(repr=False, compare=False)

    @property
    def resend_count(self) -> int:
        """How many times the request was sent before (``http.request.resend_count``)."""
        return self.attempt - 1


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """An attempt and what followed it.

    Attributes:
        method: The request method.
        url: The request URL, redacted as in `AttemptStart`.
        origin: Where the attempt went.
        attempt: 1 for the first attempt, 2 for the next, ...
        outcome: What followed.
        status: The response status, or None if the attempt raised.
        error: The exception the attempt raised, or None. Left out of the repr.
        elapsed: Seconds from sending to the response headers (or the error).
        wait: Seconds until the next attempt, or None if none follows.
        reason: Why a retry follows (``"status 503"``) or why none does (``"retries
            exhausted"``, ``"final response"``, ...).
        http_version: ``"HTTP/1.1"``, ``"HTTP/2"``, ... as the response reported it; None
            without a response.
        max_retries: The retries the request's policy allows (free resends not counted).
    """

    method: str
    url: str
    origin: Origin
    attempt: int
    outcome: AttemptOutcome
    status: int | None
    error: BaseException | None = field(repr=False)
    elapsed: float
    wait: float | None
    reason: str
    http_version: str | None
    max_retries: int

    @property
    def resend_count(self) -> int:
        """How many times the request was sent before this attempt."""
        return self.attempt - 1


@dataclass(frozen=True, slots=True)
class GiveUp:
    """A request that failed for good: its last response or error goes to the caller.

    Attributes:
        method: The request method.
        url: The request URL, redacted.
        origin: Where it went.
        attempts: How many attempts were sent.
        status: The last response's status, or None if the last attempt raised.
        error: The last attempt's exception, or None. Left out of the repr.
        reason: Why no other attempt follows (``"retries exhausted"``, ``"circuit open"``...).
    """

    method: str
    url: str
    origin: Origin
    attempts: int
    status: int | None
    error: BaseException | None = field(repr=False)
    reason: str


@dataclass(frozen=True, slots=True)
class CircuitChange:
    """A circuit breaker moved an origin's circuit from ``old`` to ``new``.

    Attributes:
        origin: The origin whose circuit changed.
        old: The state it left.
        new: The state it entered.
        breaker: The breaker's ``name``, if it has one.
        retry_in: For ``new`` open: seconds until a probe is let through; else 0.
    """

    origin: Origin
    old: CircuitState
    new: CircuitState
    breaker: str | None
    retry_in: float


@dataclass(frozen=True, slots=True)
class FailFast:
    """An open circuit refused an attempt: nothing was sent, `CircuitOpenError` follows.

    Attributes:
        method: The request method.
        url: The request URL, redacted.
        origin: The origin whose circuit is open.
        attempt: The number the refused attempt would have had (1: the request's first).
        retry_in: Seconds until the circuit lets a probe through.
        breaker: The breaker's ``name``, if it has one.
    """

    method: str
    url: str
    origin: Origin
    attempt: int
    retry_in: float
    breaker: str | None


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    """The retry budget refused a retry the policy would otherwise have made.

    Attributes:
        method: The request method.
        url: The request URL, redacted.
        origin: Where the request went.
        attempt: The attempt that failed and was not retried.
        available: Retries the budget that refused had left, as
            `TransportStats.budget_left` reads it (``source`` says which): ``"local"``,
            the transport's own budget (below one); ``"fleet"``, what the fleet's budget
            had left at the store's latest answer, the one that refused this retry (below
            one), unless the store did not answer in time (then its previous answer, 0.0
            if none); ``"fallback"``, this worker's allowance while the store is
            unavailable (below one).
        source: ``"local"``, ``"fleet"`` or ``"fallback"`` (see `TransportStats`).
    """

    method: str
    url: str
    origin: Origin
    attempt: int
    available: float
    source: BudgetSource = "local"


@dataclass(frozen=True, slots=True)
class CoolDownRefusal:
    """A cool-down failed a request at once: nothing was sent, `CoolDownError` follows.

    Attributes:
        method: The request method.
        url: The request URL, redacted.
        origin: The origin cooling down.
        attempt: The number the refused attempt would have had (1: the request's first).
        retry_in: Seconds left in the origin's window.
        reason: ``"max_wait"`` (the wait is longer than ``CoolDown.max_wait``) or
            ``"total_timeout"`` (it would pass the request's deadline).
    """

    method: str
    url: str
    origin: Origin
    attempt: int
    retry_in: float
    reason: str


@dataclass(frozen=True, slots=True)
class StoreAvailability:
    """A shared state store (`RedisStore`, ...) stopped answering, or answers again.

    While it does not answer, the transport decides on local state alone (its own breaker,
    budget share and cool-downs); no request fails because of it.

    Attributes:
        store: The store's repr, such as ``RedisStore(prefix='httpx-resilience')``.
        available: False when it stopped answering, True when it answers again.
        error: What the failed call raised (`TimeoutError` when it took longer than the
            store's ``timeout``); None when available. Left out of the repr.
        retry_in: Seconds until the transport tries the store again (0 when available).
    """

    store: str
    available: bool
    error: BaseException | None = field(repr=False)
    retry_in: float


AttemptEndHook = Callable[[AttemptEnd], None]


class Hook:
    """The instrumentation hook protocol, as a base class whose methods all do nothing.

    Subclass it and override what you need, or pass any object that has some of these
    methods: a transport calls only the methods a hook defines (and, for a `Hook`
    subclass, overrides). Methods run synchronously on the request's task, so keep them
    quick and never block. Whatever a hook raises is logged once and ignored.
    """

    def on_attempt(self, start: AttemptStart) -> AttemptEndHook | None:
        """Called before each attempt is sent. Return a callable to have it called with
        the attempt's `AttemptEnd` (per-attempt state such as a span lives in it), or None."""
        return None

    def on_retry(self, end: AttemptEnd) -> None:
        """An attempt failed; a retry follows after ``end.wait`` seconds."""

    def on_resend(self, end: AttemptEnd) -> None:
        """The server did not process the attempt; it is resent at once, for free."""

    def on_give_up(self, give_up: GiveUp) -> None:
        """The request failed and no other attempt follows."""

    def on_circuit_change(self, change: CircuitChange) -> None:
        """A circuit breaker changed an origin's state."""

    def on_fail_fast(self, refusal: FailFast) -> None:
        """An open circuit refused an attempt."""

    def on_budget_refusal(self, refusal: BudgetRefusal) -> None:
        """The retry budget refused a retry."""

    def on_cool_down_start(self, start: CoolDownStart) -> None:
        """An origin's cool-down window started."""

    def on_cool_down_end(self, end: CoolDownEnd) -> None:
        """An origin's cool-down ended."""

    def on_cool_down_refusal(self, refusal: CoolDownRefusal) -> None:
        """A cool-down failed a request at once."""

    def on_store_availability(self, change: StoreAvailability) -> None:
        """A shared state store stopped answering, or answers again."""


#: The hook methods, one per event.
EVENTS = (
    "on_attempt",
    "on_retry",
    "on_resend",
    "on_give_up",
    "on_circuit_change",
    "on_fail_fast",
    "on_budget_refusal",
    "on_cool_down_start",
    "on_cool_down_end",
    "on_cool_down_refusal",
    "on_store_availability",
)


def _implements(hook: object, event: str) -> bool:
    method = getattr(type(hook), event, None)
    return callable(method) and method is not getattr(Hook, event)


def check_hooks(owner: str, hooks: Iterable[object]) -> tuple[object, ...]:
    """``hooks`` as a tuple, each checked to implement at least one hook method."""
    if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
        raise TypeError(f"{owner} must be an iterable of hooks, got {hooks!r}")
    checked = tuple(hooks)
    for hook in checked:
        if not any(_implements(hook, event) for event in EVENTS):
            raise TypeError(
                f"{owner} must hold hooks: objects with at least one of the methods "
                f"{', '.join(EVENTS)}; got {hook!r}"
            )
    return checked


# Hooks whose failure was logged, by (id, event). The hook itself is kept, so that its id is
# not reused by another hook while listed here (only failing hooks are kept).
_reported: dict[tuple[int, str], object] = {}
_reported_lock = threading.Lock()


def _hook_failed(hook: object, event: str) -> None:
    """Log a hook's exception (being handled) once per hook and event."""
    key = (id(hook), event)
    with _reported_lock:
        if key in _reported:
            return
        _reported[key] = hook
    logger.exception(
        "Instrumentation hook %r raised in %s; ignored (logged once per hook and event)",
        hook,
        event,
    )


class HookSet:
    """Hooks grouped by event. An event's tuple is empty when no hook implements it, which is
    all a caller checks before doing any work for that event."""

    __slots__ = ("after", "hooks", *EVENTS)

    def __init__(self, hooks: Iterable[object] = ()) -> None:
        unique: dict[int, object] = {}
        for hook in hooks:
            unique.setdefault(id(hook), hook)
        self.hooks: tuple[object, ...] = tuple(unique.values())
        for event in EVENTS:
            setattr(self, event, tuple(h for h in self.hooks if _implements(h, event)))
        #: Whether any hook wants to hear what follows a failed attempt.
        self.after = bool(
            self.on_retry
            or self.on_resend
            or self.on_give_up
            or self.on_fail_fast
            or self.on_budget_refusal
        )

    if TYPE_CHECKING:
        on_attempt: tuple[Any, ...]
        on_retry: tuple[Any, ...]
        on_resend: tuple[Any, ...]
        on_give_up: tuple[Any, ...]
        on_circuit_change: tuple[Any, ...]
        on_fail_fast: tuple[Any, ...]
        on_budget_refusal: tuple[Any, ...]
        on_cool_down_start: tuple[Any, ...]
        on_cool_down_end: tuple[Any, ...]
        on_cool_down_refusal: tuple[Any, ...]
        on_store_availability: tuple[Any, ...]

    def start(self, start: AttemptStart) -> list[tuple[object, AttemptEndHook]]:
        """Call every ``on_attempt``; return the end callbacks they gave, with their hooks."""
        ends = []
        for hook in self.on_attempt:
            try:
                end = hook.on_attempt(start)
            except Exception:
                _hook_failed(hook, "on_attempt")
                continue
            if end is not None:
                ends.append((hook, end))
        return ends

    @staticmethod
    def end(ends: list[tuple[object, AttemptEndHook]], record: AttemptEnd) -> None:
        """Call the end callbacks, last started first (spans and contexts nest)."""
        for hook, end in reversed(ends):
            try:
                end(record)
            except Exception:
                _hook_failed(hook, "on_attempt's end callback")

    def emit(self, event: str, record: object) -> None:
        """Call ``event`` (one of `EVENTS` but ``on_attempt``) on every hook implementing it."""
        for hook in getattr(self, event):
            try:
                getattr(hook, event)(record)
            except Exception:
                _hook_failed(hook, event)


# --- the global registry ----------------------------------------------------------------------


class _Registry:
    """The global hooks. ``version`` changes on every change, so transports can cache the
    merge of these with their own hooks and notice when it is stale."""

    def __init__(self) -> None:
        self.hooks: tuple[object, ...] | None = None  # None: the default, made on first use
        self.version = 0
        self.set: HookSet | None = None

    def get(self) -> tuple[object, ...]:
        if self.hooks is None:
            from ._log import LoggingHook

            self.hooks = (LoggingHook(),)
        return self.hooks

    def hook_set(self) -> HookSet:
        if self.set is None:
            self.set = HookSet(self.get())
        return self.set

    def replace(self, hooks: tuple[object, ...] | None) -> None:
        self.hooks = hooks
        self.set = None
        self.version += 1


_registry = _Registry()


def get_hooks() -> tuple[object, ...]:
    """The hooks every `ResilientTransport` reports to (besides its own). By default one
    `LoggingHook`."""
    return _registry.get()


def set_hooks(hooks: Iterable[object] | None) -> None:
    """Replace the global hooks; ``None`` restores the default (one `LoggingHook`), ``[]``
    removes every hook, the logging one included."""
    _registry.replace(None if hooks is None else check_hooks("set_hooks(hooks)", hooks))


def add_hook(hook: object) -> None:
    """Add ``hook`` to the global hooks (after the current ones); adding one twice is
    harmless."""
    current = get_hooks()
    if any(h is hook for h in current):
        return
    set_hooks((*current, *check_hooks("add_hook(hook)", (hook,))))


def current_hooks(own: tuple[object, ...], cache: list[Any]) -> HookSet:
    """The `HookSet` of the global hooks plus ``own`` (a transport's). ``cache`` is the
    transport's ``[version, HookSet]``, refreshed when the global hooks changed."""
    if cache[0] != _registry.version:
        base = _registry.hook_set()
        cache[1] = HookSet((*base.hooks, *own)) if own else base
        cache[0] = _registry.version
    hook_set: HookSet = cache[1]
    return hook_set


# --- events of shared objects: breakers, cool-downs, fleet links ----------------------------

# Hooks of the transports that use each object; a breaker or cool-down shared by several
# transports reports an event to all of their hooks (and the global ones), once per hook.
_owner_hooks: weakref.WeakKeyDictionary[object, tuple[object, ...]] = weakref.WeakKeyDictionary()


def attach_hooks(owner: object, hooks: tuple[object, ...]) -> None:
    """Have ``owner`` (a breaker, cool-down or fleet link) report its events to ``hooks`` too
    (a transport's own)."""
    if not hooks:
        return
    current = _owner_hooks.get(owner, ())
    _owner_hooks[owner] = (*current, *(h for h in hooks if all(h is not c for c in current)))


def emit(owner: object, event: str, make: Callable[[], object]) -> None:
    """Report ``event`` of ``owner`` to the global hooks and its transports' hooks; the record
    is made (``make()``) only if some hook implements the event."""
    own = _owner_hooks.get(owner)
    hook_set = _registry.hook_set() if not own else HookSet((*_registry.get(), *own))
    if getattr(hook_set, event):
        hook_set.emit(event, make())


def emit_circuit_change(
    breaker: CircuitTable, origin: Origin, old: CircuitState, new: CircuitState, retry_in: float
) -> None:
    """Report a transition of ``breaker`` to the global hooks and its transports' hooks."""
    emit(
        breaker,
        "on_circuit_change",
        lambda: CircuitChange(origin, old, new, breaker.name, retry_in),
    )


# The cool-down table and the circuit table are pure and import no hooks: they report through
# this dispatch.
_cooldown.report = emit
_circuit.report = emit_circuit_change
