"""The examples in examples/ run against their local servers and say what the docs say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_example() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        "  GET  /flaky/plain-httpx     -> 503 over HTTP/2; server saw it 1x; attempts: 503" in lines
    )
    [flaky] = [line for line in lines if "/flaky/resilient" in line]
    assert flaky.startswith("  GET  /flaky/resilient       -> 200 over HTTP/2; server saw it 3x")
    [limited] = [line for line in lines if "/limited/resilient" in line]
    assert limited.endswith("server saw it 2x; attempts: 429 (wait 1.00s), 200")
    [order] = [line for line in lines if "/order/resilient" in line]
    assert order.endswith("-> 503 over HTTP/2; server saw it 1x; attempts: 503")
