"""`RedisStore.from_url("rediss://...")` checks the server's certificate *and its name*, whatever
the redis-py version: redis-py before 6 checks no hostname unless told (``ssl_check_hostname``
defaulted to False), so a certificate any trusted CA issued for any name was accepted.

Against a real redis-server speaking TLS on 127.0.0.1 with a certificate from the tests' CA.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from httpx_resilience import RedisStore
from tests.support.redis import LOOPBACK, redis_server_or_skip

pytestmark = pytest.mark.anyio

_START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def tls_redis(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[int, Path]]:
    """A redis-server on 127.0.0.1 speaking only TLS, with a certificate for ``localhost`` (not
    for 127.0.0.1). Yields its port and the CA file."""
    executable = redis_server_or_skip()
    cert = ca.issue_cert("localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port = _free_port()
    process = subprocess.Popen(
        [
            executable, "--bind", LOOPBACK, "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
            "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                socket.create_connection((LOOPBACK, port), 0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("redis-server with TLS did not start")
                time.sleep(0.02)
        yield port, ca_file
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client


async def test_a_rediss_url_refuses_a_certificate_for_another_name(
    tls_redis: tuple[int, Path],
) -> None:
    port, ca_file = tls_redis
    store = RedisStore.from_url(f"rediss://{LOOPBACK}:{port}/0?ssl_ca_certs={ca_file}", timeout=2.0)
    try:
        with pytest.raises(Exception, match="certificate") as caught:
            await store.note_cool_down("tls", "https://api.test:443", 1.0)
    finally:
        await store.aclose()
    assert "ConnectionError" in type(caught.value).__name__


async def test_a_rediss_url_reaches_a_server_whose_certificate_names_it(
    tls_redis: tuple[int, Path],
) -> None:
    # The control: the same server by the name its certificate holds.
    port, ca_file = tls_redis
    store = RedisStore.from_url(f"rediss://localhost:{port}/0?ssl_ca_certs={ca_file}", timeout=2.0)
    try:
        await store.note_cool_down("tls", "https://api.test:443", 1.0)
    finally:
        await store.aclose()


async def test_a_rediss_url_that_turns_certificate_checks_off_is_left_as_asked(
    tls_redis: tuple[int, Path],
) -> None:
    # ssl_cert_reqs=none is the caller's own decision (not this library's); adding a hostname
    # check to it would make redis-py 5 refuse to connect at all.
    port, _ = tls_redis
    store = RedisStore.from_url(f"rediss://{LOOPBACK}:{port}/0?ssl_cert_reqs=none", timeout=2.0)
    try:
        await store.note_cool_down("tls", "https://api.test:443", 1.0)
    finally:
        await store.aclose()
