"""A fleet: 8 worker processes against one upstream on 127.0.0.1, sharing a real redis-server,
against the same 8 workers on local state, in one run.

The upstream is Hypercorn in a child process; it counts, per key, the requests that reach it and
when (its monotonic clock, which is the machine's: the same in every process). redis-server is
started on a free loopback port (tests/support/redis.py). Each phase runs once with
``state_store=None`` ("local") and once with a `RedisStore` per worker ("redis"):

1. Outage: each worker first sends 3 requests that succeed (a fleet in its steady state:
   connections made, the origin's circuit read), then every request fails (500); breaker
   ``failure_threshold`` T, long recovery. Each worker sends one request at a time until 20 in
   a row fail fast. Reported: the requests that reached the upstream before the fleet stopped
   sending (local: about 8 x T; redis: at most 1.5 x T), and for redis how many of them
   arrived after Redis opened the fleet's circuit, split into those the workers had started
   before it opened (in flight) and after.
2. Half-open: the same warm-up; then the upstream stays down; recovery ``--recovery`` seconds;
   4 callers per worker keep asking for ``--seconds`` (every 20 ms while failed fast).
   Reported: the opening burst (the requests until the first pause), the probes after it, and
   the most probes within any 0.9 x ``recovery`` (a failed probe opens the fleet's circuit for
   a whole ``recovery``, so that is the most one half-open period saw; with local state each
   worker has periods of its own).
3. Retry budget: no breaker; every request gets 503; ``max_retries=3``, budget 20 % of requests
   plus 1 retry/s over a 10 s window. Reported: retries against the budget's allowance, on
   local state, with Redis, and with Redis stalled (SIGSTOP) for 1 s of the run.
4. Happy path: every request succeeds; breaker (``--mode``: rate, whose successes are flushed
   to the store, or count), budget and cool-down on; 10 callers per worker. Reported: each
   worker's CPU time (process time) per request with no store, with a `MemoryStore` and with
   the `RedisStore`, alternated over ``--rounds`` rounds (median).

5. The link's own cost: one process, an instant in-memory upstream (``httpx.MockTransport``),
   through ``httpx.AsyncClient``; CPU per request with no store, a `MemoryStore` and the
   `RedisStore`, count and rate mode, median of 5 rounds of 3,000 requests.

    python benchmarks/fleet.py [--workers 8] [--threshold 20] [--recovery 0.5] [--seconds 3]
        [--requests 1000] [--rounds 3] [--timeout 0.1] [--phases 12345] [--mode rate]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import multiprocessing
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _server import child_server

from httpx_resilience import (
    CircuitBreaker,
    CircuitOpenError,
    MemoryStore,
    RedisStore,
    ResilientTransport,
    RetryConfig,
    StateStore,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.redis import RedisServer

_HITS: dict[str, list[float]] = {}
_WALL: dict[str, list[float]] = {}  # the same hits in Unix time, to compare with Redis's TIME


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    _, route, key = scope["path"].split("/", 2)
    if route in ("stats", "wall"):
        body = json.dumps((_HITS if route == "stats" else _WALL).get(key, [])).encode()
        status = 200
    else:
        _HITS.setdefault(key, []).append(time.monotonic())
        _WALL.setdefault(key, []).append(time.time())
        status = {"fail": 500, "busy": 503}.get(route, 200)
        body = b"x"
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_UNAVAILABLE = [0]


def _count_unavailable(available: bool, error: BaseException | None) -> None:
    if not available:
        _UNAVAILABLE[0] += 1


def _store(kind: str, redis_url: str, timeout: float) -> StateStore | None:
    if kind == "redis":
        return RedisStore.from_url(
            redis_url, prefix="bench", timeout=timeout, on_availability=_count_unavailable
        )
    if kind == "memory":
        return MemoryStore()
    return None


async def _outage(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    fast = 0
    sent = []  # when each request that reached the upstream was started (Unix time)
    for _ in range(1000):
        started = time.time()
        try:
            await client.get(f"/fail/{key}")
            sent.append(started)
            fast = 0
        except CircuitOpenError:
            fast += 1
            if fast >= 20:
                break
            await asyncio.sleep(0.005)
    return {"sent": sent}


async def _half_open(client: httpx.AsyncClient, key: str, seconds: float) -> dict[str, Any]:
    end = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < end:
            try:
                await client.get(f"/fail/{key}")
            except CircuitOpenError:
                await asyncio.sleep(0.02)

    await asyncio.gather(*(caller() for _ in range(4)))
    return {}


async def _budget(client: httpx.AsyncClient, key: str, requests: int) -> dict[str, Any]:
    for _ in range(requests):
        await client.get(f"/busy/{key}")
    return {}


async def _happy(client: httpx.AsyncClient, key: str, requests: int) -> dict[str, Any]:
    async def caller(count: int) -> None:
        for _ in range(count):
            response = await client.get(f"/ok/{key}")
            assert response.status_code == 200

    await client.get(f"/ok/{key}")  # connect outside the measurement
    started = time.process_time()
    await asyncio.gather(*(caller(requests // 10) for _ in range(10)))
    return {"cpu": time.process_time() - started, "requests": requests // 10 * 10}


async def _work(spec: dict[str, Any]) -> dict[str, Any]:
    phase, key = spec["phase"], spec["key"]
    store = _store(spec["store"], spec["redis_url"], spec["timeout"])
    breaker = None
    if phase in ("outage", "half-open", "happy"):
        recovery = 600.0 if phase in ("outage", "happy") else spec["recovery"]
        rate = 0.5 if phase == "happy" and spec["mode"] == "rate" else None
        breaker = CircuitBreaker(
            spec["threshold"], recovery, name=f"bench-{key}", failure_rate_threshold=rate
        )
    retry = RetryConfig(max_retries=0, budget_ratio=None)
    if phase == "budget":
        retry = RetryConfig(
            max_retries=3, base_delay=0.0, max_delay=0.0, budget_ratio=0.2,
            budget_min_per_second=1.0, budget_window=10.0,
        )  # fmt: skip
    elif phase == "happy":
        retry = RetryConfig()
    transport = ResilientTransport(retry=retry, circuit_breaker=breaker, state_store=store)
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(
        transport=transport, base_url=spec["url"], timeout=10.0, limits=limits
    ) as client:
        if phase in ("outage", "half-open"):
            # A fleet in its steady state when the upstream starts failing: connections to
            # it and to Redis made, its circuit read (and its background calls done).
            for _ in range(3):
                await client.get(f"/ok/{key}-warm-up")
            await asyncio.sleep(0.2)
        spec["barrier"].wait()
        if phase == "outage":
            result = await _outage(client, key)
        elif phase == "half-open":
            result = await _half_open(client, key, spec["seconds"])
        elif phase == "budget":
            result = await _budget(client, key, spec["requests"])
        else:
            result = await _happy(client, key, spec["requests"])
    if store is not None:
        await store.aclose()
    return {**result, "unavailable": _UNAVAILABLE[0]}


def _worker(spec: dict[str, Any], results: Any) -> None:
    logging.getLogger("httpx_resilience").setLevel(logging.ERROR)
    results.put(asyncio.run(_work(spec)))


def run_phase(
    base: dict[str, Any],
    phase: str,
    store: str,
    during: Callable[[], None] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Run ``phase`` in every worker at once; ``during()`` runs here once they start."""
    context = multiprocessing.get_context("fork")
    key = uuid.uuid4().hex
    barrier = context.Barrier(base["workers"] + 1)
    results = context.Queue()
    spec = {**base, **extra, "phase": phase, "store": store, "key": key, "barrier": barrier}
    processes = [
        context.Process(target=_worker, args=(spec, results)) for _ in range(base["workers"])
    ]
    for process in processes:
        process.start()
    barrier.wait()
    if during is not None:
        during()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(30)
    hits = json.loads(httpx.get(f"{base['url']}stats/{key}").content)
    wall = json.loads(httpx.get(f"{base['url']}wall/{key}").content)
    unavailable = sum(outcome["unavailable"] for outcome in outcomes)
    if unavailable:
        print(f"   ({store}: the store failed to answer in time {unavailable} times)")
    return {"hits": hits, "wall": wall, "key": key, "workers": outcomes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threshold", type=int, default=20)
    parser.add_argument("--recovery", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=0.1, help="the store's timeout")
    parser.add_argument("--phases", default="12345", help="which phases to run")
    parser.add_argument(
        "--mode", choices=("rate", "count"), default="rate",
        help="the breaker's mode in the happy path (rate: successes are flushed to the store)",
    )  # fmt: skip
    args = parser.parse_args()
    t, n = args.threshold, args.workers
    with RedisServer() as redis_server, child_server(app) as url:
        base = {
            "url": url, "redis_url": redis_server.url, "workers": n, "threshold": t,
            "recovery": args.recovery, "seconds": args.seconds, "timeout": args.timeout,
            "mode": args.mode,
        }  # fmt: skip
        print(
            f"{n} workers, failure_threshold={t}, store timeout {args.timeout}s, "
            f"redis-server {redis_server.url}"
        )

        if "1" in args.phases:
            outage(base, t)
        if "2" in args.phases:
            half_open(base, args.recovery, args.seconds)
        if "3" in args.phases:
            budget(base, n, redis_server)
        if "4" in args.phases:
            happy(base, args.requests, args.rounds)
        if "5" in args.phases:
            asyncio.run(link_cost(redis_server.url))


def outage(base: dict[str, Any], t: int) -> None:
    print("\n1. outage: upstream requests before the fleet stopped sending")
    for store in ("local", "redis"):
        outcome = run_phase(base, "outage", store)
        hits = len(outcome["hits"])
        line = f"   {store:<6} {hits:>5}  ({hits / t:.2f} x failure_threshold)"
        if store == "redis":
            opened = _opened_at(base, f"bench-{outcome['key']}")
            if opened is not None:
                sent = [s for w in outcome["workers"] for s in w["sent"]]
                late = sum(1 for stamp in sent if stamp >= opened)
                early = sum(1 for stamp in outcome["wall"] if stamp < opened)
                line += (
                    f"\n          {early} arrived before the fleet's circuit opened, "
                    f"{hits - early} after: {hits - early - late} of those were in flight "
                    f"(started before), {late} started after"
                )
        print(line)


def _opened_at(base: dict[str, Any], scope: str) -> float | None:
    """When the fleet's circuit opened, in Unix time by Redis's clock (one machine: the
    upstream's clock too)."""
    import redis

    client = redis.Redis.from_url(base["redis_url"])
    try:
        origin = base["url"].rstrip("/")
        host = httpx.URL(origin)
        name = f"bench:{scope}:cb:http://{host.host}:{host.port}"
        open_until = client.hget(name, "open_until")
    finally:
        client.close()
    if open_until is None:
        return None
    return (int(open_until) - 600_000) / 1000.0


def half_open(base: dict[str, Any], recovery: float, seconds: float) -> None:
    print(f"\n2. half-open: {seconds}s down, recovery_time={recovery}s, 4 callers per worker")
    for store in ("local", "redis"):
        stamps = run_phase(base, "half-open", store)["hits"]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        # The opening burst: every hit until the first pause of half a recovery_time.
        opening = next((i + 1 for i, gap in enumerate(gaps) if gap >= recovery / 2),
                       len(stamps))  # fmt: skip
        probes = stamps[opening:]
        # A failed probe opens the fleet's circuit for a whole recovery_time, so probes of
        # different half-open periods are at least that far apart: the most probes within
        # any 0.9 x recovery_time is the most one half-open period saw.
        span = 0.9 * recovery
        most = max(
            (sum(1 for t in probes[i:] if t - start < span) for i, start in enumerate(probes)),
            default=0,
        )
        print(
            f"   {store:<6} opening burst {opening:>3}, then {len(probes):>3} probes; the most "
            f"within {span:.2f}s (one half-open period): {most}"
        )


def budget(base: dict[str, Any], n: int, redis_server: RedisServer) -> None:
    print("\n3. retry budget: every request 503, max_retries=3, 20 % + 1/s over 10 s")
    requests = 100

    def stall() -> None:  # Redis answers nothing for 0.3-1.3 s: every call times out
        time.sleep(0.3)
        redis_server.pause()
        try:
            time.sleep(1.0)
        finally:
            redis_server.resume()

    for store, during in (("local", None), ("redis", None), ("redis, stalled 1 s", stall)):
        kind = store.split(",")[0]
        hits = len(run_phase(base, "budget", kind, during, requests=requests)["hits"])
        total = n * requests
        print(
            f"   {store:<18} {total} requests, {hits - total} retries (fleet-wide budget: "
            f"{10 + 0.2 * total:.0f}; per-worker budgets add up to "
            f"{n * (10 + 0.2 * requests):.0f})"
        )


def happy(base: dict[str, Any], requests: int, rounds: int) -> None:
    print(
        f"\n4. happy path: CPU per request, {requests} requests per worker, 10 callers each, "
        f"breaker in {base['mode']} mode"
    )
    cpu: dict[str, list[float]] = {"local": [], "memory": [], "redis": []}
    for _ in range(rounds):
        for store in cpu:
            outcome = run_phase(base, "happy", store, requests=requests)
            per_request = [w["cpu"] / w["requests"] * 1e6 for w in outcome["workers"]]
            cpu[store].append(statistics.median(per_request))
    medians = {store: statistics.median(values) for store, values in cpu.items()}
    for store, values in cpu.items():
        listed = ", ".join(f"{v:.0f}" for v in values)
        print(f"   {store:<6} {medians[store]:>6.0f} us/request (rounds: {listed})")
    print(f"   redis vs memory store: {medians['redis'] / medians['memory'] - 1:+.1%}")


async def link_cost(redis_url: str, requests: int = 3000, rounds: int = 5) -> None:
    print("\n5. the link's own cost: CPU per request over an instant in-memory upstream")
    logging.getLogger("httpx_resilience").setLevel(logging.ERROR)
    for mode in ("count", "rate"):
        cpu: dict[str, list[float]] = {"local": [], "memory": [], "redis": []}
        for round_ in range(rounds):
            for kind in cpu:
                store = _store(kind, redis_url, 0.1)
                breaker = CircuitBreaker(
                    name=f"link-{mode}-{kind}-{round_}",
                    failure_rate_threshold=0.5 if mode == "rate" else None,
                )
                upstream = httpx.MockTransport(lambda request: httpx.Response(200))
                transport = ResilientTransport(
                    upstream, retry=RetryConfig(), circuit_breaker=breaker, state_store=store
                )
                async with httpx.AsyncClient(transport=transport) as client:
                    for _ in range(200):  # warm up
                        await client.get("http://a.example/")
                    started = time.process_time()
                    for _ in range(requests):
                        await client.get("http://a.example/")
                    cpu[kind].append((time.process_time() - started) / requests * 1e6)
                if store is not None:
                    await store.aclose()
        medians = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in cpu.items())
        print(f"   {mode} mode: {medians} us/request")


if __name__ == "__main__":
    main()
