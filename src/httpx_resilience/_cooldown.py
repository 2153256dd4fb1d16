"""`CoolDown`: after a server says "come back later", hold every request to that origin.

A ``Retry-After`` (or ``retry-after-ms``, which takes precedence) on a 429 or 503 starts a
cool-down window for the response's origin (scheme, host, port). Until it ends, requests to that
origin are not sent: the transport holds them, or fails them at once with `CoolDownError` when
the remaining wait is longer than ``max_wait`` or would pass the request's ``total_timeout``.
When the window ends, *one* held request goes first (the probe); the others keep waiting until
its answer is in. Another 429/503 with ``Retry-After`` starts the next window; any other answer
ends the cool-down and releases them all. So while an origin cools down a process sends at most
one request per window to it, and collects at most one 429 per window (requests already in
flight when the first 429 arrives cannot be recalled; their answers only extend the window).

Sans-IO: the table never awaits, sleeps or locks; every method runs to completion without a
suspension point, and the clock is injectable. The waiting is done by the transport
(`_transport.py`). Memory is bounded by ``max_origins``; an origin carries state only while it
cools down.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from ._logging import logger
from ._origin import Origin
from ._retry_after import parse_retry_after, parse_retry_after_ms
from ._validate import check_number, check_statuses

__all__ = [
    "CoolDown",
    "CoolDownEnd",
    "CoolDownStart",
    "Gate",
    "GateKind",
    "Waited",
    "server_wait",
]

CoolDownListener = Callable[[Origin, float], None]


@dataclass(frozen=True, slots=True)
class CoolDownStart:
    """An origin's cool-down window started: requests to it are held until it ends.

    Attributes:
        origin: The origin cooling down.
        seconds: How long the window is.
        status: The status (429, 503) whose ``Retry-After`` started it, or None when the
            window came from another worker through a shared state store.
        cool_down: The `CoolDown`'s ``name``, if it has one.
    """

    origin: Origin
    seconds: float
    status: int | None
    cool_down: str | None


@dataclass(frozen=True, slots=True)
class CoolDownEnd:
    """An origin's cool-down ended: its probe got an answer that asked for no more waiting,
    and every held request goes.

    Attributes:
        origin: The origin.
        cool_down: The `CoolDown`'s ``name``, if it has one.
    """

    origin: Origin
    cool_down: str | None


def _no_report(cool_down: CoolDown, event: str, make: Callable[[], object]) -> None:
    return None


#: Where a `CoolDown` reports its windows' starts and ends, as ``(cool_down, event, make)``
#: (``make()`` builds the record). The instrumentation shell (`_instrument/_hooks.py`) plugs
#: its hook dispatch in here when it is imported, so that this pure module imports no hooks.
report: Callable[[CoolDown, str, Callable[[], object]], None] = _no_report


class GateKind(enum.Enum):
    """What the cool-down says about sending a request to an origin now."""

    SEND = "send"  # no cool-down: send
    PROBE = "probe"  # the window has passed: send this one, as the probe; report its outcome
    WAIT = "wait"  # the window is still running: wait ``wait`` seconds and ask again
    WAIT_PROBE = "wait for probe"  # a probe is out: wait for its answer and ask again


class Gate(NamedTuple):
    kind: GateKind
    wait: float = 0.0


class Waited(NamedTuple):
    """What a retry has waited for in the retry loop: the cool-down ``window`` its own answer
    started or extended, and the time (on the table's clock) its wait ends."""

    window: int
    until: float


_SEND = Gate(GateKind.SEND)
_PROBE = Gate(GateKind.PROBE)
_WAIT_PROBE = Gate(GateKind.WAIT_PROBE)


class _Entry:
    __slots__ = ("probing", "signal", "until", "window")

    def __init__(self, until: float) -> None:
        self.until = until
        self.probing = False
        self.window = 0  # which window runs: an id unique within the CoolDown
        self.signal: Any = None  # the shell's event, set when the probe's answer is in


_check = partial(check_number, "CoolDown")


def server_wait(
    retry_after: str | bytes | None, retry_after_ms: str | bytes | None, wall_now: float
) -> float | None:
    """The seconds a response asks to wait: ``retry-after-ms`` if usable, else ``Retry-After``
    (seconds or HTTP-date; ``wall_now`` is Unix time); None if neither is usable."""
    if retry_after_ms is not None:
        wait = parse_retry_after_ms(retry_after_ms)
        if wait is not None:
            return wait
    if retry_after is not None:
        return parse_retry_after(retry_after, wall_now)
    return None


class CoolDown:
    """Per-origin cool-downs after ``429``/``503`` with ``Retry-After``, shared by every
    transport it is given to. `ResilientTransport` makes one of its own unless given one or
    ``cool_down=None``.

    Args:
        max_wait: The longest a request is held, in seconds. A request that would have to wait
            longer (or past its ``total_timeout``) fails at once with `CoolDownError`.
            Default 60 (the same as ``RetryConfig.retry_after_cap``).
        max_cool_down: The longest window one response can start, in seconds; longer
            ``Retry-After`` values are cut to it, so an absurd value cannot silence an origin
            for hours (its probe then finds out). Default 300 (Envoy's cap).
        statuses: Statuses whose ``Retry-After`` starts a window. Default 429 and 503.
        name: A label for logs and reprs, and the key prefix in a shared store.
        on_cool_down: Called as ``(origin, seconds)`` when a window starts.
        max_origins: Origins tracked at most; the oldest entry is dropped first. Default 10,000.
        clock: Monotonic seconds. For tests.

    Attributes:
        idle: True while no origin has a window (running, or passed and waiting for its
            probe's answer): every request may be sent without asking `gate`. Read-only.
    """

    def __init__(
        self,
        *,
        max_wait: float = 60.0,
        max_cool_down: float = 300.0,
        statuses: Iterable[int] = (429, 503),
        name: str | None = None,
        on_cool_down: CoolDownListener | None = None,
        max_origins: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check("max_wait", max_wait, maximum=86400.0)
        _check("max_cool_down", max_cool_down, minimum=0.001, maximum=86400.0)
        _check("max_origins", max_origins, minimum=1, integer=True)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"CoolDown.name must be a str, got {name!r}")
        self.max_wait = float(max_wait)
        self.max_cool_down = float(max_cool_down)
        self.statuses = check_statuses("CoolDown", "statuses", statuses)
        self.name = name
        self.on_cool_down = on_cool_down
        self.max_origins = max_origins
        self._clock = clock
        # Origins enter only through `_add` and leave only in `probe_done`, which keep
        # ``idle`` in step with it.
        self._entries: OrderedDict[Origin, _Entry] = OrderedDict()
        # A plain attribute, not a property: the transport reads it for every attempt (as
        # cheap as testing the table itself; a property or method call costs 2-4 times that).
        self.idle = True
        self._windows = 0

    def __repr__(self) -> str:
        return (
            f"CoolDown(name={self.name!r}, max_wait={self.max_wait}, "
            f"max_cool_down={self.max_cool_down})"
        )

    # --- reading ----------------------------------------------------------------------------

    def retry_in(self, origin: Origin) -> float:
        """Seconds until ``origin``'s cool-down window ends (0.0 if it has none or it ended)."""
        entry = self._entries.get(origin)
        if entry is None:
            return 0.0
        return max(0.0, entry.until - self._clock())

    def cooling(self) -> dict[Origin, float]:
        """Every origin under a cool-down, with the seconds left in its window."""
        now = self._clock()
        return {origin: max(0.0, e.until - now) for origin, e in self._entries.items()}

    # --- the protocol a transport follows -----------------------------------------------------

    def gate(self, origin: Origin, *, waited: Waited | None = None) -> Gate:
        """Whether a request to ``origin`` may be sent now. A `GateKind.PROBE` answer must be
        followed by exactly one `probe_done`.

        ``waited``: what the request has already waited for (see `waited`), when its own last
        answer started or extended the running window. The retry loop's sleep is trusted
        rather than the clock (an injected sleeper need not move it): if the window has not
        been extended past what it waited for, the request goes as its probe unless another
        probe is out; if it has (answers of requests in flight, or the request waited less
        than its answer asked), it waits the difference."""
        entry = self._entries.get(origin)
        if entry is None:
            return _SEND
        if waited is not None and waited.window == entry.window and not entry.probing:
            extra = entry.until - waited.until
            if extra <= 0:
                entry.probing = True
                return _PROBE
            return Gate(GateKind.WAIT, extra)
        wait = entry.until - self._clock()
        if wait > 0:
            return Gate(GateKind.WAIT, wait)
        if entry.probing:
            return _WAIT_PROBE
        entry.probing = True
        return _PROBE

    def waited(self, origin: Origin, seconds: float) -> Waited | None:
        """What a retry waiting ``seconds`` from now will have waited for: `gate`'s
        ``waited`` (None if ``origin`` has no window)."""
        entry = self._entries.get(origin)
        if entry is None:
            return None
        return Waited(entry.window, self._clock() + seconds)

    def window(self, origin: Origin) -> int:
        """The id of ``origin``'s current window (0 if it has none)."""
        entry = self._entries.get(origin)
        return 0 if entry is None else entry.window

    def probe_signal(self, origin: Origin, factory: Callable[[], Any]) -> Any:
        """The object a request waiting for ``origin``'s probe waits on (made by ``factory``
        on first use; the shell's event): `note` and `probe_done` hand it back, to be set,
        once the probe's answer is in. None if no probe is out."""
        entry = self._entries.get(origin)
        if entry is None or not entry.probing:
            return None
        if entry.signal is None:
            entry.signal = factory()
        return entry.signal

    def note(self, origin: Origin, seconds: float, status: int) -> Any:
        """A ``status`` response from ``origin`` asked to wait ``seconds``: start a window, or
        extend the running one. Returns the probe's signal to set, if this was the probe's
        answer and a request waits on it."""
        seconds = min(max(0.0, seconds), self.max_cool_down)
        now = self._clock()
        until = now + seconds
        entry = self._entries.get(origin)
        signal = None
        if entry is not None and (entry.until > now or entry.probing):
            # A window is running (answers of requests in flight extend it), or this is the
            # probe's answer: a new window either way only if the probe asked again.
            started = entry.probing or entry.until <= now
            entry.until = max(entry.until, until)
            entry.probing = False
            signal, entry.signal = entry.signal, None
        else:
            if entry is None:
                entry = self._add(origin, until)
            else:
                entry.until = until
            started = True
        self._entries.move_to_end(origin)
        if started:
            self._windows += 1
            entry.window = self._windows
            self._started(origin, seconds, status)
        return signal

    def probe_done(self, origin: Origin, *, answered: bool) -> Any:
        """The probe's outcome, unless its answer was another cool-down (then `note` was
        called instead): ``answered`` (any other response) ends the cool-down and releases
        every waiting request; otherwise (an error, cancelled) the next waiting request
        becomes the probe. Returns the probe's signal to set, if a request waits on it."""
        entry = self._entries.get(origin)
        if entry is None or not entry.probing:
            return None
        if answered:
            del self._entries[origin]
            self.idle = not self._entries
            # Logged by the default LoggingHook, like every other report.
            report(self, "on_cool_down_end", lambda: CoolDownEnd(origin, self.name))
        else:
            entry.probing = False
        signal, entry.signal = entry.signal, None
        return signal

    def hold(self, origin: Origin, seconds: float) -> None:
        """Start or extend ``origin``'s window to end ``seconds`` from now without a response of
        our own: what a shared store reports from the rest of the fleet."""
        now = self._clock()
        entry = self._entries.get(origin)
        if entry is None:
            entry = self._add(origin, now + seconds)
            self._windows += 1
            entry.window = self._windows
            report(
                self, "on_cool_down_start", lambda: CoolDownStart(origin, seconds, None, self.name)
            )
        elif now + seconds > entry.until:
            entry.until = now + seconds

    # --- internals --------------------------------------------------------------------------

    def _add(self, origin: Origin, until: float) -> _Entry:
        """A new entry for ``origin`` (dropping the oldest one if the table is full)."""
        entries = self._entries
        if len(entries) >= self.max_origins:
            entries.popitem(last=False)
        entry = entries[origin] = _Entry(until)
        self.idle = False
        return entry

    def _started(self, origin: Origin, seconds: float, status: int) -> None:
        # Logged by the default LoggingHook, like every other report.
        report(
            self, "on_cool_down_start", lambda: CoolDownStart(origin, seconds, status, self.name)
        )
        if self.on_cool_down is not None:
            try:
                self.on_cool_down(origin, seconds)
            except Exception:  # a broken hook must not break requests
                logger.exception("CoolDown on_cool_down hook raised")
