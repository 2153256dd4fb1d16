"""`RedisStore`: the `StateStore` operations as Lua scripts on a Redis server.

Each operation is one script, so it is atomic on the server (no read-modify-write race between
workers), and reads the time from the server's ``TIME``, so workers' clocks never meet. Every
key gets a TTL on every write. Keys, for a ``prefix`` and a ``scope`` (the breaker's name):

* ``{prefix}:{scope}:cb:{origin}`` -- a hash: one origin's circuit (count and when its run
  began, or 10 buckets of calls and failures in rate mode; the open-until time; the probe's
  lease; in count mode, the in-flight reservations, at most ``in_flight_limit``);
* ``{prefix}:{scope}:cd:{origin}`` -- a string whose TTL is what is left of the cool-down;
* ``{prefix}:{scope}:budget`` -- a hash: 10 buckets of requests and retries.

So an origin has at most two keys, and a scope one more. The client is redis-py's asyncio
client (``pip install 'httpx-resilience[redis]'``), which works on asyncio only; `from_url`
gives it a blocking pool of at most ``max_connections`` connections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .._circuit import CircuitState
from .._validate import check_number
from ._protocol import (
    AvailabilityListener,
    BudgetPolicy,
    BudgetView,
    CircuitOp,
    CircuitPolicy,
    CircuitView,
    StoreRead,
    StoreSettings,
    check_settings,
)

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisStore"]

#: `RedisStore.from_url`'s bound on its connections, and the largest allowed.
DEFAULT_MAX_CONNECTIONS = 10
MAX_CONNECTIONS_LIMIT = 10_000

_STATES = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN)

# KEYS[1]: the circuit hash. ARGV: op, mode (count|rate), threshold, recovery ms, rate,
# minimum calls, window ms, failures, successes, success age ms (-1: none), lease ms, token, ttl ms,
# in-flight limit. Returns {state (0 closed, 1 open, 2 half-open), ms until a probe, failures,
# granted}. Count mode keeps each in-flight reservation (made while the run of failures is
# not empty) as a field 'i:<token>' holding the end of its lease: at most the limit of them.
_CIRCUIT = """
local key = KEYS[1]
local op, mode = ARGV[1], ARGV[2]
local threshold, recovery = tonumber(ARGV[3]), tonumber(ARGV[4])
local rate, min_calls, window = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local failures, successes = tonumber(ARGV[8]), tonumber(ARGV[9])
local age, lease, token, ttl = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12], tonumber(ARGV[13])
local limit = tonumber(ARGV[14])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local open_until = tonumber(redis.call('HGET', key, 'open_until') or '0')

local function view(granted)
  if open_until == 0 then
    return {0, 0, tonumber(redis.call('HGET', key, 'fails') or '0'), granted}
  end
  if open_until > now then return {1, open_until - now, 0, granted} end
  return {2, 0, 0, granted}
end
local function open()
  open_until = now + recovery
  redis.call('DEL', key)
  redis.call('HSET', key, 'open_until', open_until)
end

local function live_in_flight()
  local fields, live = redis.call('HGETALL', key), 0
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'i:' then
      if tonumber(fields[i + 1]) > now then live = live + 1
      else redis.call('HDEL', key, fields[i]) end
    end
  end
  return live
end

if op == 'read' or (op == 'admit' and mode ~= 'count') then return view(0) end
if op == 'admit' then
  if open_until ~= 0 then return view(0) end
  local fails = tonumber(redis.call('HGET', key, 'fails') or '0')
  if fails == 0 then return view(1) end
  if fails + live_in_flight() + 1 > limit then return view(0) end
  redis.call('HSET', key, 'i:' .. token, now + lease)
  redis.call('PEXPIRE', key, ttl)
  return view(1)
end
if op == 'probe' then
  if open_until == 0 then return view(1) end
  if open_until > now then return view(0) end
  if tonumber(redis.call('HGET', key, 'probe_until') or '0') > now then return view(0) end
  redis.call('HSET', key, 'probe', token, 'probe_until', now + lease)
  redis.call('PEXPIRE', key, ttl)
  return view(1)
end
if op == 'release' then
  if token ~= '' then
    if redis.call('HGET', key, 'probe') == token then
      redis.call('HDEL', key, 'probe', 'probe_until')
    end
    redis.call('HDEL', key, 'i:' .. token)
  end
  return view(0)
end
if op == 'result' then
  if token == '' or redis.call('HGET', key, 'probe') ~= token then return view(0) end
  if failures > 0 then
    open()
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('DEL', key)
    open_until = 0
  end
  return view(0)
end
-- report: outcomes of requests admitted while closed; stragglers have no say while open
if token ~= '' then redis.call('HDEL', key, 'i:' .. token) end
if open_until ~= 0 then return view(0) end
if mode == 'count' then
  local fails = tonumber(redis.call('HGET', key, 'fails') or '0')
  -- a success breaks the run only if it came after the run began
  if age >= 0 and now - age >= tonumber(redis.call('HGET', key, 'run') or '0') then fails = 0 end
  if fails == 0 and failures > 0 then redis.call('HSET', key, 'run', now) end
  fails = fails + failures
  if fails >= threshold then
    open()
  elseif fails == 0 then
    redis.call('HDEL', key, 'fails', 'run')  -- the reservations out stay (an empty hash goes)
    if redis.call('EXISTS', key) == 0 then return view(0) end
  else
    redis.call('HSET', key, 'fails', fails)
  end
else
  local width = window / 10
  local bucket = math.floor(now / width)
  local slot = bucket % 10
  if tonumber(redis.call('HGET', key, 'e' .. slot) or '-1') ~= bucket then
    redis.call('HSET', key, 'e' .. slot, bucket, 'c' .. slot, 0, 'f' .. slot, 0)
  end
  redis.call('HINCRBY', key, 'c' .. slot, failures + successes)
  redis.call('HINCRBY', key, 'f' .. slot, failures)
  local calls, fails = 0, 0
  for i = 0, 9 do
    if tonumber(redis.call('HGET', key, 'e' .. i) or '-1') > bucket - 10 then
      calls = calls + tonumber(redis.call('HGET', key, 'c' .. i) or '0')
      fails = fails + tonumber(redis.call('HGET', key, 'f' .. i) or '0')
    end
  end
  if failures > 0 and calls >= min_calls and fails >= rate * calls then open() end
end
redis.call('PEXPIRE', key, ttl)
return view(0)
"""

# KEYS[1]: the budget hash. ARGV: requests, retries wanted (0: none), ratio, floor, window ms,
# retries spent elsewhere (reconciled). Returns {retries granted (up to those wanted),
# requests in the window, retries left (a string: it may have a fraction)}.
_BUDGET = """
local key = KEYS[1]
local requests, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local ratio, floor, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local retries = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local width = window / 10
local bucket = math.floor(now / width)
local slot = bucket % 10
if tonumber(redis.call('HGET', key, 'e' .. slot) or '-1') ~= bucket then
  redis.call('HSET', key, 'e' .. slot, bucket, 'r' .. slot, 0, 't' .. slot, 0)
end
if requests > 0 then redis.call('HINCRBY', key, 'r' .. slot, requests) end
if retries > 0 then redis.call('HINCRBY', key, 't' .. slot, retries) end
local seen, spent = 0, 0
for i = 0, 9 do
  if tonumber(redis.call('HGET', key, 'e' .. i) or '-1') > bucket - 10 then
    seen = seen + tonumber(redis.call('HGET', key, 'r' .. i) or '0')
    spent = spent + tonumber(redis.call('HGET', key, 't' .. i) or '0')
  end
end
local granted = 0
if want > 0 then  -- as many as fit: spent + granted <= floor + ratio * seen
  granted = math.max(0, math.min(want, math.floor(floor + ratio * seen - spent)))
  if granted > 0 then
    redis.call('HINCRBY', key, 't' .. slot, granted)
    spent = spent + granted
  end
end
redis.call('PEXPIRE', key, 2 * window)
return {granted, seen, tostring(floor + ratio * seen - spent)}
"""

# KEYS[1]: the cool-down key. ARGV: ms. The key's TTL is the cool-down left; only extended.
_COOL_DOWN = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
"""


class RedisStore:
    """Circuits, retry budget and cool-downs shared through a Redis server (see `StateStore`).

    Args:
        client: A ``redis.asyncio.Redis`` client (anything else, a ``RedisCluster`` or a
            synchronous ``redis.Redis`` too, raises `TypeError`). Give it short
            ``socket_timeout`` and ``socket_connect_timeout`` values and a bounded pool that
            waits for a free connection (``redis.asyncio.BlockingConnectionPool(
            max_connections=..., timeout=...)``); `RedisStore.from_url` does. Closed by
            `aclose` only if the store made it.
        prefix: The first part of every key. Default ``"httpx-resilience"``.
        timeout: Seconds one call may take before the transport gives up on it and uses local
            state. Default 0.1.
        sync_interval: Seconds between the transport's background flushes and reads: how
            stale its view of the fleet may be on the happy path. Default 0.25.
        retry_interval: Seconds the transport keeps to local state after a failed call
            before it tries the store again. Default 1.0.
        probe_lease: Seconds a half-open probe's claim lasts if its result never comes (its
            worker died). Default 10.
        on_availability: Called as ``(available, error)`` when the store stops answering
            (with the error) and when it answers again (with None).

    Attributes:
        max_connections: The most connections the client's pool opens (None if its pool
            does not say).

    Works on asyncio only (redis-py's asyncio client). On trio the transport logs it once
    and keeps to local state.
    """

    async_libraries = frozenset({"asyncio"})

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "httpx-resilience",
        timeout: float = 0.1,
        sync_interval: float = 0.25,
        retry_interval: float = 1.0,
        probe_lease: float = 10.0,
        on_availability: AvailabilityListener | None = None,
    ) -> None:
        _check_client(client)
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in " \r\n"):
            raise ValueError(f"RedisStore.prefix must be a non-empty word, got {prefix!r}")
        settings = StoreSettings(timeout, sync_interval, retry_interval, probe_lease)
        check_settings("RedisStore", settings)
        self.timeout = float(timeout)
        self.sync_interval = float(sync_interval)
        self.retry_interval = float(retry_interval)
        self.probe_lease = float(probe_lease)
        self.on_availability = on_availability
        self.prefix = prefix
        self._client = client
        self._owns_client = False
        self.max_connections: int | None = getattr(client.connection_pool, "max_connections", None)
        self._circuit_script: Any = client.register_script(_CIRCUIT)
        self._budget_script: Any = client.register_script(_BUDGET)
        self._cool_down_script: Any = client.register_script(_COOL_DOWN)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 0.1,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        **kwargs: Any,
    ) -> RedisStore:
        """A store with a client of its own for ``url``.

        Args:
            url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS).
            timeout: Seconds one call may take (the constructor's ``timeout``): its sockets
                time out after it, connecting too, and so does a wait for a free connection.
                Default 0.1.
            max_connections: The most connections the client opens (1 to 10,000; default
                10). A call that finds them all busy waits for one, at most ``timeout``
                seconds, then fails like any other call: the transport keeps to local state
                for ``retry_interval``. A fleet of N workers opens at most N times this many
                connections to Redis.
            **kwargs: As for the constructor (``prefix``, ``sync_interval``, ...).
        """
        check_number("RedisStore", "max_connections", max_connections, minimum=1,
                     maximum=MAX_CONNECTIONS_LIMIT, integer=True)  # fmt: skip
        check_number("RedisStore", "timeout", timeout, minimum=0.001, maximum=60.0)
        aioredis = _redis_asyncio()
        # Over TLS the server's name is checked too: redis-py before 6 checks none unless told
        # (``ssl_check_hostname`` defaulted to False). The URL's own ``ssl_check_hostname=``
        # still wins, and ``ssl_cert_reqs=none`` (no check at all, the caller's choice) is
        # left alone: redis-py 5 would refuse it beside a hostname check.
        tls: dict[str, Any] = {}
        if isinstance(url, str) and url[:9].lower() == "rediss://":
            query = parse_qs(urlsplit(url).query)
            if [value.lower() for value in query.get("ssl_cert_reqs", [])] != ["none"]:
                tls["ssl_check_hostname"] = True
        # A blocking pool: past the bound a call waits for a connection (within the store's
        # timeout) instead of opening one more (redis-py's default pool opens one per
        # concurrent call: without limit in redis-py 5, up to 100 in 8.1, and then fails at
        # once).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
            **tls,
        )
        client = aioredis.Redis.from_pool(pool)
        store = cls(client, timeout=timeout, **kwargs)
        store._owns_client = True
        return store

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"

    def _key(self, scope: str, kind: str, origin: str = "") -> str:
        return (
            f"{self.prefix}:{scope}:{kind}:{origin}" if origin else f"{self.prefix}:{scope}:{kind}"
        )

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
        result = await self._circuit_script(
            keys=[self._key(scope, "cb", origin)],
            args=_circuit_args(op, policy, failures, successes, success_age, token),
        )
        return _circuit_view(result)

    async def budget(
        self, scope: str, requests: int, want: int, policy: BudgetPolicy, *, retries: int = 0
    ) -> BudgetView:
        result = await self._budget_script(
            keys=[self._key(scope, "budget")],
            args=_budget_args(requests, want, policy, retries),
        )
        return _budget_view(result)

    async def note_cool_down(self, scope: str, origin: str, seconds: float) -> None:
        ms = max(1, int(seconds * 1000))
        await self._cool_down_script(keys=[self._key(scope, "cd", origin)], args=[ms])

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
        if not origins and budget is None:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            if budget is not None:
                # Counts the requests and retries, and reads what the fleet's budget has
                # left in the same pipeline (for `TransportStats.budget_left`).
                await self._budget_script(
                    keys=[self._key(scope, "budget")],
                    args=_budget_args(requests, 0, budget, retries),
                    client=pipe,
                )
            for origin in origins:
                if policy is not None:
                    successes, age = (reports or {}).get(origin, (0, None))
                    op = "report" if successes else "read"
                    await self._circuit_script(
                        keys=[self._key(scope, "cb", origin)],
                        args=_circuit_args(op, policy, 0, successes, age, ""),
                        client=pipe,
                    )
                pipe.pttl(self._key(scope, "cd", origin))
            results = await pipe.execute()
        budget_view = None
        if budget is not None:
            budget_view = _budget_view(results[0])
            results = results[1:]
        views = StoreRead(budget=budget_view)
        step = 2 if policy is not None else 1
        for index, origin in enumerate(origins):
            row = results[index * step : index * step + step]
            view = _circuit_view(row[0])[0] if policy is not None else _CLOSED
            ttl = int(row[-1])
            views[origin] = (view, max(0.0, ttl / 1000.0) if ttl > 0 else 0.0)
        return views

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


_CLOSED = CircuitView(CircuitState.CLOSED, 0.0, 0)


def _redis_asyncio() -> Any:
    """``redis.asyncio``, or an ImportError that says how to install it."""
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "RedisStore needs redis-py: pip install 'httpx-resilience[redis]'"
        ) from exc
    return aioredis


def _check_client(client: object) -> None:
    """TypeError unless ``client`` is a ``redis.asyncio.Redis`` (a subclass too: a Sentinel's
    ``master_for``, fakeredis). The store runs on one server through the client's connection
    pool: a ``RedisCluster`` has no such pool (and one call's keys may lie in different
    slots), and a synchronous ``redis.Redis`` would block the event loop. The message names
    the class only: a client's repr may show where it connects."""
    aioredis = _redis_asyncio()
    if not isinstance(client, aioredis.Redis):
        kind = type(client)
        raise TypeError(
            "RedisStore.client must be a redis.asyncio.Redis client (redis.asyncio.RedisCluster "
            "and the synchronous redis.Redis are not supported), got "
            f"{kind.__module__}.{kind.__qualname__}"
        )


def _circuit_args(
    op: str,
    policy: CircuitPolicy,
    failures: int,
    successes: int,
    success_age: float | None,
    token: str,
) -> list[object]:
    rate = policy.failure_rate_threshold
    return [
        op,
        "count" if rate is None else "rate",
        policy.failure_threshold,
        int(policy.recovery_time * 1000),
        repr(rate or 0.0),
        policy.minimum_calls,
        max(10, int(policy.window * 1000)),
        failures,
        successes,
        -1 if success_age is None else max(0, int(success_age * 1000)),
        max(1, int(policy.probe_lease * 1000)),
        token,
        max(1000, int(policy.ttl * 1000)),
        policy.in_flight_limit,
    ]


def _budget_args(requests: int, want: int, policy: BudgetPolicy, retries: int) -> list[object]:
    return [
        requests, max(0, int(want)), repr(policy.ratio), repr(policy.floor),
        int(policy.window * 1000), retries,
    ]  # fmt: skip


def _budget_view(result: Any) -> BudgetView:
    granted, seen, left = result
    return BudgetView(int(granted), int(seen), float(left))


def _circuit_view(result: Any) -> tuple[CircuitView, bool]:
    state, ms, fails, granted = (int(x) for x in result)
    return CircuitView(_STATES[state], ms / 1000.0, fails), bool(granted)
