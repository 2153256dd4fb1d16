"""The transport's link to a store (`_fleet.py`) with a `MemoryStore` and a fake clock: the
fallback to local state when the store fails, and what the happy path asks of the store.
Real servers and a real redis-server: test_fleet_real.py."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx
import pytest

from httpx_resilience import (
    CircuitBreaker,
    CircuitOpenError,
    MemoryStore,
    ResilientTransport,
    RetryConfig,
)

pytestmark = pytest.mark.anyio

NO_RETRY = RetryConfig(max_retries=0, budget_ratio=None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakyStore(MemoryStore):
    """A MemoryStore that fails every call while ``down``, and counts the calls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.down = False
        self.calls: list[str] = []

    async def circuit(self, scope: str, origin: str, op: Any, policy: Any, **kw: Any) -> Any:
        self.calls.append(op)
        if self.down:
            raise ConnectionError("store down")
        return await super().circuit(scope, origin, op, policy, **kw)

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("read")
        if self.down:
            raise ConnectionError("store down")
        return await super().read(*args, **kwargs)


def upstream(status: int) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status))


async def test_the_happy_path_never_waits_on_the_store() -> None:
    clock = Clock()
    store = FlakyStore(clock=clock)
    transport = ResilientTransport(
        upstream(200), retry=NO_RETRY, circuit_breaker=CircuitBreaker(), state_store=store,
        clock=clock,
    )  # fmt: skip
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(100):
            for host in ("a", "b"):
                assert (await client.get(f"http://{host}.example/")).status_code == 200
    # The first request to each origin asks the fleet's circuit before it goes (it knows
    # nothing of it yet); then only background reads (at most one per sync_interval: the
    # clock never moved).
    assert store.calls.count("read") <= 1
    assert [c for c in store.calls if c != "read"] == ["admit", "admit"]


async def test_a_failing_store_falls_back_to_local_state_and_says_so(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="httpx_resilience")
    clock = Clock()
    events: list[tuple[bool, str]] = []
    store = FlakyStore(
        clock=clock, retry_interval=5.0,
        on_availability=lambda ok, error: events.append((ok, type(error).__name__)),
    )  # fmt: skip
    store.down = True
    breaker = CircuitBreaker(failure_threshold=3, recovery_time=60.0, clock=clock)
    transport = ResilientTransport(
        upstream(500), retry=NO_RETRY, circuit_breaker=breaker, state_store=store, clock=clock
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            assert (await client.get("http://a.example/")).status_code == 500
        with pytest.raises(CircuitOpenError):  # the local breaker still works
            await client.get("http://a.example/")
        assert events == [(False, "ConnectionError")]
        calls = len(store.calls)
        assert calls == 1  # one failed call, then local state for retry_interval
        assert "using local state, trying again in 5.0s" in caplog.text

        clock.now += 5.0
        store.down = False
        with pytest.raises(CircuitOpenError):
            await client.get("http://a.example/")  # starts a background sync
        for _ in range(100):  # let it run
            if events[-1][0]:
                break
            await anyio.sleep(0.01)
    assert events[-1] == (True, "NoneType")
    assert "sharing state with the fleet resumed" in caplog.text


async def test_a_store_is_checked_on_construction() -> None:
    with pytest.raises(TypeError, match=r"ResilientTransport\.state_store must be a StateStore"):
        ResilientTransport(state_store=object())  # type: ignore[arg-type]
