"""Requests lost when a server closes connections in the ordinary way (issue 6).

The same load -- GETs and POSTs alternating, at concurrency 100 -- goes through stock
``httpx.AsyncHTTPTransport`` and through ``ResilientTransport`` in one run, against servers on
127.0.0.1 that close each connection after ``--limit`` requests and idle connections after 1 s:

* HTTP/1.1, Hypercorn directly (``keep_alive_max_requests``: ``Connection: close`` on the last
  response; ``keep_alive_timeout``: idle connections closed, which races with reuse).
* HTTP/2 over TLS, nginx (``keepalive_requests``, ``keepalive_timeout``) in front of a Hypercorn
  HTTP/1.1 upstream: the graceful kind of server -- GOAWAY with ``last_stream_id``, the streams
  it accepted finished, the others ignored -- like the load balancers and cloud APIs issue 6 is
  about. Skipped, with a message, when nginx is not installed.
* HTTP/2 over TLS, Hypercorn directly (``keep_alive_max_requests``): *not* graceful. It sends
  GOAWAY, then never sends the responses of streams it had already accepted and may have
  processed; no client can safely resend those POSTs. Shown for what no client can fix.

For each client it prints the failed requests by type, the POSTs that failed and how many of
those the server had processed (the app's own count: its answer was lost, so it was rightly not
sent again), the POSTs the server processed more than once (duplicates), and the requests
``ResilientTransport`` resent because the server provably had not processed them (RFC 9113
§6.8, §8.7) or retried under the ordinary rules. Waits are skipped (``set_testing``) and the
retry budget is off (``budget_ratio=None``), so only failures that retrying cannot fix remain.
Each request has 10 s in all (retries included); each row stops after 45 s.

    python -W ignore benchmarks/goaway.py [--requests 2000] [--limit 50]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from httpx_resilience import (
    Attempt,
    ResilientTransport,
    RetryConfig,
    get_retry_history,
    set_testing,
)
from tests.support.nginx import UPSTREAM_KEEP_ALIVE_TIMEOUT, NginxProxy, find_nginx
from tests.support.server import FaultApp, ServerThread

CONCURRENCY = 100
REQUEST_TIMEOUT = 10.0  # seconds per request, retries included
ROW_TIME_LIMIT = 45.0  # seconds per client and server: bounds the whole run
IDLE_TIMEOUT = 1  # seconds: the servers close idle connections after this
NOT_PROCESSED = "not processed by the server"  # how a resent attempt's reason begins
SHOWN_KINDS = 10  # failure kinds listed per row, most frequent first
CLIENTS = ("stock httpx", "ResilientTransport")
HEADER = ("client", "failed", "POSTs failed", "processed", "dup POSTs", "resent (sends)",
          "retried", "seconds")  # fmt: skip


@dataclass
class Outcome:
    """What one client's load came to."""

    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    failed_posts: list[str] = field(default_factory=list)
    post_keys: list[str] = field(default_factory=list)
    resent: int = 0  # requests resent at least once as not processed
    resends: int = 0  # not-processed attempts in all
    retried: int = 0  # requests retried under the ordinary rules
    seconds: float = 0.0


def describe(exc: BaseException) -> str:
    """A failure's type (with its package when not httpx) and message, stream numbers masked
    so that failures of one kind count together."""
    kind = type(exc)
    package = kind.__module__.split(".")[0]
    name = kind.__name__ if package in ("httpx", "builtins") else f"{package}.{kind.__name__}"
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"{name}: no answer within {REQUEST_TIMEOUT:g} s"
    message = str(exc).splitlines()[0] if str(exc) else ""
    message = re.sub(r"(last_stream_id\W*|stream )\d+", r"\1N", message)
    return f"{name}: {message[:100]}" if message else name


def tally(outcome: Outcome, history: tuple[Attempt, ...]) -> None:
    resends = sum(1 for attempt in history if attempt.reason.startswith(NOT_PROCESSED))
    outcome.resends += resends
    outcome.resent += resends > 0
    outcome.retried += any(
        attempt.retried and not attempt.reason.startswith(NOT_PROCESSED) for attempt in history
    )


async def load(
    transport: httpx.AsyncBaseTransport, url: str, prefix: str, requests: int
) -> Outcome:
    outcome = Outcome()
    indexes: Iterator[int] = iter(range(requests))
    finished: set[int] = set()
    started = time.perf_counter()
    async with httpx.AsyncClient(transport=transport, timeout=REQUEST_TIMEOUT) as client:

        async def one(index: int) -> None:
            method = "GET" if index % 2 == 0 else "POST"
            key = f"{prefix}{index}"
            failure = None
            try:
                with anyio.fail_after(REQUEST_TIMEOUT):
                    response = await client.request(
                        method, f"{url}/ok/{key}", content=b"x" if method == "POST" else None
                    )
                tally(outcome, get_retry_history(response))
                if response.status_code != 200:
                    failure = f"status {response.status_code}"
            except Exception as exc:  # stock httpx leaks h2's own exceptions, too
                tally(outcome, get_retry_history(exc))
                failure = describe(exc)
            if failure is not None:
                outcome.failures[failure] += 1
                if method == "POST":
                    outcome.failed_posts.append(key)
            finished.add(index)

        async def worker() -> None:
            for index in indexes:
                await one(index)

        with anyio.move_on_after(ROW_TIME_LIMIT):
            async with anyio.create_task_group() as group:
                for _ in range(CONCURRENCY):
                    group.start_soon(worker)
    outcome.seconds = time.perf_counter() - started
    outcome.post_keys = [f"{prefix}{index}" for index in range(1, requests, 2)]
    unfinished = set(range(requests)) - finished
    if unfinished:
        outcome.failures[f"unfinished after the row's {ROW_TIME_LIMIT:g} s"] += len(unfinished)
        outcome.failed_posts += [f"{prefix}{index}" for index in unfinished if index % 2]
    return outcome


@contextlib.asynccontextmanager
async def serving(server: str, app: FaultApp, ca: trustme.CA, limit: int) -> AsyncIterator[str]:
    """Start ``server`` (one of `SERVERS`) around ``app``; yield its base URL."""
    if server == "h1":
        hypercorn = ServerThread(
            app, keep_alive_max_requests=limit, keep_alive_timeout=IDLE_TIMEOUT
        )
        with hypercorn:
            yield hypercorn.url
    elif server == "h2-hypercorn":
        hypercorn = ServerThread(
            app, ca=ca, keep_alive_max_requests=limit, keep_alive_timeout=IDLE_TIMEOUT
        )
        with hypercorn:
            yield hypercorn.url
    else:
        # The upstream keeps its connections to nginx (and outlasts nginx's idle upstream
        # connections), so that only nginx closes connections, and only towards the client.
        upstream = ServerThread(
            app, keep_alive_max_requests=10**6, keep_alive_timeout=UPSTREAM_KEEP_ALIVE_TIMEOUT
        )
        with upstream:
            proxy = NginxProxy(
                f"127.0.0.1:{upstream.port}",
                ca=ca,
                keepalive_requests=limit,
                keepalive_timeout=f"{IDLE_TIMEOUT}s",
            )
            with proxy:
                yield proxy.url


SERVERS = {
    "h1": "HTTP/1.1, Hypercorn (keep_alive_max_requests={limit}, keep_alive_timeout={idle}):\n"
    "  graceful (Connection: close on the last response)",
    "h2-nginx": "HTTP/2 + TLS, nginx (keepalive_requests {limit}; keepalive_timeout {idle}s):\n"
    "  graceful (GOAWAY; the streams it accepted are finished)",
    "h2-hypercorn": "HTTP/2 + TLS, Hypercorn (keep_alive_max_requests={limit}):\n"
    "  NOT graceful (GOAWAY; the streams it accepted are never answered)",
}


COLUMNS = "  {:18} {:>6} {:>12} {:>9} {:>9} {:>14} {:>7} {:>7}"


def report(label: str, app: FaultApp, outcome: Outcome) -> None:
    hits = {key: app.hits(key) for key in outcome.post_keys}
    duplicates = sum(1 for count in hits.values() if count > 1)
    processed = sum(1 for key in outcome.failed_posts if hits[key] == 1)
    ours = label != CLIENTS[0]
    print(
        COLUMNS.format(
            label,
            sum(outcome.failures.values()),
            len(outcome.failed_posts),
            processed,
            duplicates,
            f"{outcome.resent} ({outcome.resends})" if ours else "-",
            outcome.retried if ours else "-",
            f"{outcome.seconds:.1f}",
        )
    )
    shown = outcome.failures.most_common(SHOWN_KINDS)
    for kind, count in shown:
        print(f"      {count:5d}x {kind}")
    rest = sum(outcome.failures.values()) - sum(count for _, count in shown)
    if rest:
        print(f"      {rest:5d}x (other kinds)")


async def main(requests: int, limit: int) -> None:
    set_testing(True)  # waits last 0 s; retries are decided and recorded as usual
    retry = RetryConfig(budget_ratio=None)
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    print(f"{requests} requests per row (GET and POST alternating), concurrency {CONCURRENCY}, "
          f"{REQUEST_TIMEOUT:g} s per request.")  # fmt: skip
    print(f"The server closes each connection after {limit} requests, idle ones after "
          f"{IDLE_TIMEOUT} s.")  # fmt: skip
    print(f"ResilientTransport: RetryConfig(budget_ratio=None): {retry.max_retries} retries, "
          f"max_unprocessed_retries {retry.max_unprocessed_retries},")  # fmt: skip
    print("  retry budget off; waits skipped (set_testing).")
    print("processed: failed POSTs the server had processed (its answer lost).")
    print("dup POSTs: POSTs the server processed twice or more.")
    print("resent (sends): requests resent as not processed by the server (RFC 9113 6.8, 8.7),")
    print("  and their resends. retried: requests retried under the ordinary rules.")
    for server, title in SERVERS.items():
        print()
        print(title.format(limit=limit, idle=IDLE_TIMEOUT))
        if server == "h2-nginx" and find_nginx() is None:
            print("  skipped: nginx is not installed (apt-get install nginx-light)")
            continue
        app = FaultApp()
        async with serving(server, app, ca, limit) as url:
            print(COLUMNS.format(*HEADER))
            for number, label in enumerate(CLIENTS):
                transport: httpx.AsyncBaseTransport
                if label == CLIENTS[0]:
                    transport = httpx.AsyncHTTPTransport(http2=server != "h1", verify=context)
                else:
                    transport = ResilientTransport(
                        retry=retry, http2=server != "h1", verify=context
                    )
                outcome = await load(transport, url, f"c{number}-", requests)
                await anyio.sleep(0.5)  # let the server finish what it was still processing
                report(label, app, outcome)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    anyio.run(main, args.requests, args.limit)
