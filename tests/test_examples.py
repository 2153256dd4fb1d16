"""The examples in examples/ run against local servers and say what the docs say.

quickstart.py starts its own server; the others take the test servers' URLs on the command line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trustme

from tests.support.server import ServerThread

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


def run_example(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-W", "error", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_mounts_example(
    h1_server: ServerThread, h2_server: ServerThread, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    lines = run_example(str(EXAMPLES / "mounts.py"), h1_server.url, h2_server.url, str(ca_file))
    assert lines == [
        "internal -> 200 over HTTP/1.1; attempts: 503, 503, 503, 200",
        "partner  -> 503 over HTTP/2; attempts: 503, 503",
    ]


def test_typed_client_example(h1_server: ServerThread) -> None:
    lines = run_example(str(EXAMPLES / "typed_client.py"), h1_server.url)
    assert lines == [
        "User(id=7, name='Ada Lovelace')",
        "None",
        "User(id=1, name='Grace Hopper')",
    ]


def test_lifespan_example(h1_server: ServerThread) -> None:
    lines = run_example(str(EXAMPLES / "lifespan.py"), h1_server.url)
    assert lines == [
        "GET /users/7 -> 200 {'id': 7, 'name': 'Ada Lovelace'}",
        "GET /users/0 -> 404 {'detail': 'no such user'}",
    ]
