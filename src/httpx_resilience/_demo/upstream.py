"""The demo's upstream: an ASGI app that injects faults by scenario, decided by a seeded RNG.

Every request goes to ``/{scenario}/{client}/{rid}``: ``rid`` numbers the caller's request
(0, 1, 2, ...) and ``client`` the client under test, so that each client's run has state of its
own. What the upstream does with the *n*-th arrival of request ``rid`` depends only on the seed,
the scenario, ``rid`` and *n* (`FaultPlan`), never on timing or on the order in which requests
arrive: every client meets the same faults, and a seed gives the same faults on every run.

The app counts what reached it on its own side: every request is recorded once its body has
been read, before any fault is applied. Those counts are the "upstream received" figures.
"""

from __future__ import annotations

import enum
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email.utils import formatdate

from .asgi import (
    Receive,
    Scope,
    Send,
    drop_connection,
    request_body,
    respond,
    respond_json,
    sleep_unless_disconnected,
)

__all__ = ["Arrival", "Fault", "FaultPlan", "Upstream"]

#: flaky: the share of arrivals that fail, half with a 503, half by a dropped connection.
FLAKY_FAILURE_RATE = 0.2
#: rate-limit: the share of requests whose first arrival is answered 429.
RATE_LIMITED_SHARE = 0.2
#: rate-limit: seconds asked for by ``Retry-After`` (delta-seconds; the HTTP-date form asks
#: for the first whole second at least this far ahead).
RETRY_AFTER_SECONDS = 1
#: outage: the upstream is down for requests from this share of the run to the next.
OUTAGE_FROM, OUTAGE_TO = 0.3, 0.7
#: post: the share of arrivals that fail; of those, this share are processed and then lose
#: their answer to a dropped connection, the rest are refused with a 503 before processing.
POST_FAILURE_RATE = 0.2
POST_DROPPED_SHARE = 0.6
#: deadline: the share of arrivals the upstream stalls on, and for how long.
STALL_RATE = 0.15
STALL_SECONDS = 1.2


class Fault(enum.Enum):
    """What the upstream does with one arrival."""

    OK = "ok"
    UNAVAILABLE = "503"  # refused before processing
    DROP = "drop"  # processed, then the connection is cut before any answer
    RATE_LIMIT_SECONDS = "429 delta-seconds"
    RATE_LIMIT_DATE = "429 HTTP-date"
    DOWN = "down"  # 503: the upstream is in its outage
    STALL = "stall"  # answers after STALL_SECONDS (unless the client gives up first)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The faults of every scenario, drawn from ``seed``; ``requests`` per client run."""

    seed: int
    requests: int

    def fault(self, scenario: str, rid: int, arrival: int) -> Fault:
        """What the upstream does with arrival number ``arrival`` (1-based) of request ``rid``."""
        draw = random.Random(f"{self.seed}:{scenario}:{rid}:{arrival}").random()
        if scenario == "flaky":
            if draw < FLAKY_FAILURE_RATE / 2:
                return Fault.UNAVAILABLE
            return Fault.DROP if draw < FLAKY_FAILURE_RATE else Fault.OK
        if scenario == "rate-limit":
            if arrival > 1 or draw >= RATE_LIMITED_SHARE:
                return Fault.OK
            return (
                Fault.RATE_LIMIT_SECONDS if draw < RATE_LIMITED_SHARE / 2 else Fault.RATE_LIMIT_DATE
            )
        if scenario == "outage":
            return Fault.DOWN if rid in self.outage else Fault.OK
        if scenario == "post":
            if draw >= POST_FAILURE_RATE:
                return Fault.OK
            return (
                Fault.DROP if draw < POST_FAILURE_RATE * POST_DROPPED_SHARE else Fault.UNAVAILABLE
            )
        if scenario == "deadline":
            return Fault.STALL if draw < STALL_RATE else Fault.OK
        raise ValueError(f"no such scenario: {scenario!r}")

    @property
    def outage(self) -> range:
        """The requests (by ``rid``) that meet the upstream down in the outage scenario."""
        return range(round(self.requests * OUTAGE_FROM), round(self.requests * OUTAGE_TO))


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request as the upstream saw it."""

    scenario: str
    client: int
    rid: int
    number: int  # 1 for the first arrival of this request
    method: str
    fault: Fault
    processed: bool  # a POST the upstream acted on (created an order)
    replayed: bool  # a POST answered from the record of its Idempotency-Key instead


class Upstream:
    """The fault-injecting ASGI app; one instance may serve several servers (thread-safe).

    Besides the faults of `FaultPlan` it keeps two rules of its own: a request retried before
    the time its ``Retry-After`` named is answered 429 again (and counted in `too_early`),
    and a POST carrying an ``Idempotency-Key`` it has already processed is answered from
    its record instead of being processed again.
    """

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._lock = threading.Lock()
        self._arrivals: list[Arrival] = []
        self._seen: Counter[tuple[str, int, int]] = Counter()
        self._not_before: dict[tuple[str, int, int], float] = {}
        self._too_early: Counter[tuple[str, int]] = Counter()
        self._keys: set[tuple[str, int, str]] = set()

    # --- what the upstream counted -------------------------------------------------------

    def arrivals(self, scenario: str, client: int) -> list[Arrival]:
        """Every request of one client's run, in the order they arrived."""
        with self._lock:
            return [a for a in self._arrivals if a.scenario == scenario and a.client == client]

    def received(self, scenario: str, client: int) -> int:
        """How many requests of one client's run reached the upstream."""
        return len(self.arrivals(scenario, client))

    def duplicate_posts(self, scenario: str, client: int) -> int:
        """How many POSTs the upstream processed more than once (orders created twice)."""
        processed = Counter(a.rid for a in self.arrivals(scenario, client) if a.processed)
        return sum(1 for count in processed.values() if count > 1)

    def too_early(self, scenario: str, client: int) -> int:
        """How many retries came before the time their ``Retry-After`` named."""
        with self._lock:
            return self._too_early[scenario, client]

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await request_body(scope, receive, send) is None:
            return
        parts = scope["path"].strip("/").split("/")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            await respond(send, 404, b"not found\n")
            return
        scenario, client, rid = parts[0], int(parts[1]), int(parts[2])
        headers = {bytes(k).decode("latin-1").lower(): bytes(v) for k, v in scope["headers"]}
        key = headers.get("idempotency-key", b"").decode("latin-1") or None
        with self._lock:
            number = self._seen[scenario, client, rid] = self._seen[scenario, client, rid] + 1
            fault = self.plan.fault(scenario, rid, number)
            retry_after = self._rate_limit(scenario, client, rid, fault)
            # A POST is processed unless refused (503) or already processed under its key.
            acted = scope["method"] == "POST" and fault in (Fault.OK, Fault.DROP)
            replayed = acted and key is not None and (scenario, client, key) in self._keys
            if acted and key is not None:
                self._keys.add((scenario, client, key))
            method, processed = scope["method"], acted and not replayed
            arrival = Arrival(scenario, client, rid, number, method, fault, processed, replayed)
            self._arrivals.append(arrival)
        if retry_after is not None:
            await respond(send, 429, b"slow down\n", headers=[(b"retry-after", retry_after)])
        elif fault is Fault.UNAVAILABLE or fault is Fault.DOWN:
            await respond(send, 503, f"{fault.value}\n".encode())
        elif fault is Fault.DROP:
            await drop_connection(scope, receive)
        elif fault is Fault.STALL and await sleep_unless_disconnected(receive, STALL_SECONDS):
            return  # the client gave up: nobody to answer
        else:
            status = 201 if scope["method"] == "POST" else 200
            await respond_json(send, status, {"rid": rid, "arrival": number})

    def _rate_limit(self, scenario: str, client: int, rid: int, fault: Fault) -> bytes | None:
        """The ``Retry-After`` value to answer 429 with, if any. Called under the lock."""
        now = time.time()
        not_before = self._not_before.get((scenario, client, rid))
        if not_before is not None and now < not_before:
            self._too_early[scenario, client] += 1
            return f"{math.ceil(not_before - now)}".encode()
        if fault is Fault.RATE_LIMIT_SECONDS:
            self._not_before[scenario, client, rid] = now + RETRY_AFTER_SECONDS
            return f"{RETRY_AFTER_SECONDS}".encode()
        if fault is Fault.RATE_LIMIT_DATE:
            # HTTP-dates have whole seconds: name the first one at least the delay away.
            when = math.ceil(now + RETRY_AFTER_SECONDS)
            self._not_before[scenario, client, rid] = when
            return formatdate(when, usegmt=True).encode()
        return None
