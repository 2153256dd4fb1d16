"""Cool-down: how many 429s a rate-limited upstream sends to 50 concurrent callers, with and
without the per-origin cool-down, in one run.

The upstream (Hypercorn in a child process on 127.0.0.1) throttles each key for ``--period``
seconds from its first request: every request meanwhile gets 429 with ``retry-after-ms``
(``--ms``, or what is left) and a whole-seconds ``Retry-After``; afterwards 200. Each caller
sends one GET that retries on 429 (``max_retries=50``, no budget). Two starts per mode:

* ``burst``: the 50 callers start together, so all 50 are in flight before the first 429
  comes back (none can be recalled);
* ``warm``: one request gets the first 429 alone, then the 50 callers start.

    python benchmarks/cooldown.py [--period 3] [--ms 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import uuid
from typing import Any

import httpx
from _server import child_server

from httpx_resilience import CoolDown, Origin, ResilientTransport, RetryConfig

_THROTTLED: dict[str, int] = {}
_ENDS: dict[str, float] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    query = dict(
        part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
    )
    if path.startswith("/stats/"):
        body = json.dumps({"throttled": _THROTTLED.get(path[7:], 0)}).encode()
        status, headers = 200, [(b"content-type", b"application/json")]
    else:
        key = path.rsplit("/", 1)[-1]
        now = time.monotonic()
        left = _ENDS.setdefault(key, now + float(query.get("period", "3"))) - now
        if left > 0:
            _THROTTLED[key] = _THROTTLED.get(key, 0) + 1
            wait_ms = min(float(query.get("ms", "500")), left * 1000)
            status, body = 429, b"slow down"
            headers = [
                (b"retry-after", str(math.ceil(wait_ms / 1000)).encode()),
                (b"retry-after-ms", f"{wait_ms:.0f}".encode()),
            ]
        else:
            status, body, headers = 200, b"ok", []
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def run(base: str, mode: str, start: str, period: float, ms: int) -> dict[str, Any]:
    key = uuid.uuid4().hex
    url = f"{base}throttle/{key}?period={period}&ms={ms}"
    windows: list[float] = []

    def started(origin: Origin, seconds: float) -> None:
        windows.append(seconds)

    cool = CoolDown(on_cool_down=started) if mode == "cool-down" else None
    retry = RetryConfig(max_retries=50, budget_ratio=None)
    transport = ResilientTransport(retry=retry, cool_down=cool)
    began = time.perf_counter()
    async with httpx.AsyncClient(transport=transport, timeout=30.0) as client:
        if start == "warm":
            await client.get(url, extensions={"retry": None})
        responses = await asyncio.gather(*(client.get(url) for _ in range(50)))
        elapsed = time.perf_counter() - began
        stats = (await client.get(f"{base}stats/{key}", extensions={"retry": None})).json()
    assert all(r.status_code == 200 for r in responses)
    return {
        "mode": mode,
        "start": start,
        "429s": stats["throttled"],
        "windows": len(windows) if cool is not None else None,
        "seconds": elapsed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--period", type=float, default=3.0)
    parser.add_argument("--ms", type=int, default=500)
    args = parser.parse_args()
    print(f"50 callers; upstream throttles {args.period}s, retry-after-ms {args.ms}")
    print(f"{'mode':<14}{'start':<8}{'429s sent':>10}{'windows':>9}{'all 200 after':>15}")
    with child_server(app) as base:
        for start in ("burst", "warm"):
            for mode in ("no cool-down", "cool-down"):
                row = await run(base, mode, start, args.period, args.ms)
                windows = "-" if row["windows"] is None else str(row["windows"])
                print(
                    f"{row['mode']:<14}{row['start']:<8}{row['429s']:>10}{windows:>9}"
                    f"{row['seconds']:>14.2f}s"
                )


if __name__ == "__main__":
    asyncio.run(main())
