"""`LoggingHook`: the package's log lines, as one adapter of the hook protocol.

Registered globally by default. It logs to the ``httpx_resilience`` logger: each retry and free
resend at INFO, a circuit opening at WARNING and closing at INFO, half-opening, give-ups,
fail-fasts and budget refusals at DEBUG; a cool-down starting at WARNING, ending at INFO, and
the requests it fails at DEBUG; a shared state store failing and answering again at WARNING.
URLs arrive redacted in the records. It implements no per-attempt method, so a request that
succeeds first time costs it nothing.
"""

from __future__ import annotations

import logging

from .._circuit import CircuitState
from ._hooks import (
    AttemptEnd,
    BudgetRefusal,
    CircuitChange,
    CoolDownEnd,
    CoolDownRefusal,
    CoolDownStart,
    FailFast,
    GiveUp,
    Hook,
    StoreAvailability,
)

__all__ = ["LoggingHook"]


class LoggingHook(Hook):
    """Logs retries, resends and circuit changes to a `logging.Logger`.

    Args:
        logger: Where to log; the ``httpx_resilience`` logger by default.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger if logger is not None else logging.getLogger("httpx_resilience")

    def __repr__(self) -> str:
        return f"LoggingHook(logger={self.logger.name!r})"

    def on_retry(self, end: AttemptEnd) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(
                "Retrying %s %s after attempt %d of %d: %s; waiting %.3fs",
                end.method, end.url, end.attempt, end.max_retries + 1, end.reason, end.wait,
            )  # fmt: skip

    def on_resend(self, end: AttemptEnd) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info("Resending %s %s: %s", end.method, end.url, end.error)

    def on_give_up(self, give_up: GiveUp) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                "Giving up on %s %s after %d attempt(s): %s",
                give_up.method, give_up.url, give_up.attempts, give_up.reason,
            )  # fmt: skip

    def on_circuit_change(self, change: CircuitChange) -> None:
        name = f"{change.breaker!r} " if change.breaker else ""
        if change.new is CircuitState.OPEN:
            self.logger.warning(
                "Circuit %sopened for %s (was %s); failing fast for %.1fs",
                name, change.origin, change.old.value, change.retry_in,
            )  # fmt: skip
        elif change.new is CircuitState.CLOSED:
            self.logger.info("Circuit %sclosed for %s", name, change.origin)
        elif self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("Circuit %shalf-open for %s", name, change.origin)

    def on_fail_fast(self, refusal: FailFast) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                "Circuit open for %s: %s %s refused; a probe in %.1fs",
                refusal.origin, refusal.method, refusal.url, refusal.retry_in,
            )  # fmt: skip

    def on_budget_refusal(self, refusal: BudgetRefusal) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                "Retry budget exhausted: %s %s not retried after attempt %d (%s budget: %.2f left)",
                refusal.method, refusal.url, refusal.attempt, refusal.source, refusal.available,
            )  # fmt: skip

    def on_cool_down_start(self, start: CoolDownStart) -> None:
        name = f"{start.cool_down!r} " if start.cool_down else ""
        if start.status is None:
            self.logger.warning(
                "Cool-down %sfor %s: another worker got Retry-After (shared); "
                "holding its requests for %.3fs",
                name, start.origin, start.seconds,
            )  # fmt: skip
        else:
            self.logger.warning(
                "Cool-down %sfor %s: %d with Retry-After; holding its requests for %.3fs",
                name, start.origin, start.status, start.seconds,
            )  # fmt: skip

    def on_cool_down_end(self, end: CoolDownEnd) -> None:
        name = f"{end.cool_down!r} " if end.cool_down else ""
        self.logger.info("Cool-down %sended for %s", name, end.origin)

    def on_cool_down_refusal(self, refusal: CoolDownRefusal) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                "Cool-down for %s: %s %s failed at once (%s; %.1fs left)",
                refusal.origin, refusal.method, refusal.url, refusal.reason, refusal.retry_in,
            )  # fmt: skip

    def on_store_availability(self, change: StoreAvailability) -> None:
        if change.available:
            self.logger.warning("%s answers again: sharing state with the fleet resumed",
                                change.store)  # fmt: skip
        else:
            error = change.error
            self.logger.warning(
                "%s failed (%s: %s): using local state, trying again in %.1fs",
                change.store, type(error).__name__, error or "timed out", change.retry_in,
            )  # fmt: skip
