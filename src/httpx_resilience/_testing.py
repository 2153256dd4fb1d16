"""A switch for users' own test suites: keep every retry, skip every wait.

With testing on, `ResilientTransport` decides and records retries exactly as in production, but
its waits (backoff and ``Retry-After``) last zero seconds, so a suite that exercises failure
paths stays fast without changing the configuration under test.
"""

from __future__ import annotations

__all__ = ["is_testing", "set_testing"]

_state = {"testing": False}


def set_testing(enabled: bool) -> None:
    """Turn the testing switch on or off for the whole process.

    In pytest, a fixture that calls ``set_testing(True)`` and, after ``yield``,
    ``set_testing(False)`` scopes it to the tests that use the fixture.
    """
    _state["testing"] = bool(enabled)


def is_testing() -> bool:
    """Whether the testing switch is on."""
    return _state["testing"]
