"""nginx on 127.0.0.1 in front of an upstream test server: the HTTP/2 server that closes
connections *gracefully*.

Hypercorn's HTTP/2 ``keep_alive_max_requests`` sends GOAWAY and then drops the responses of the
streams it already accepted (h2's state machine closes on sending GOAWAY), so no client can
complete them; nginx's ``keepalive_requests`` is the graceful kind the issue is about: GOAWAY
with ``last_stream_id``, the accepted streams finished, the rest ignored. nginx serves TLS with
a certificate from the tests' trustme CA (ALPN h2 and http/1.1) and proxies to the upstream
over HTTP/1.1, so the upstream app's own counters say what was processed.

nginx comes from the system (``apt-get install nginx-light``; ``.ci/run`` installs it). Without
it the tests that need it skip, unless ``HTTPX_RESILIENCE_REQUIRE_NGINX=1`` (set by ``.ci/run``)
turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest
import trustme

from tests.support.server import LOOPBACK

__all__ = ["UPSTREAM_KEEP_ALIVE_TIMEOUT", "NginxProxy", "nginx_or_skip"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_PORT_TRIES = 5

_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests {keepalive_requests};
    keepalive_timeout {keepalive_timeout};
    http2_max_concurrent_streams {max_streams};
    upstream app {{
        server {upstream};
        keepalive 64;
        # nginx must give up an idle upstream connection before the upstream does: a request
        # written into one the upstream is closing fails, and a POST then gets a 502
        # (proxy_next_upstream is off). Upstreams keep idle connections longer (see
        # UPSTREAM_KEEP_ALIVE_TIMEOUT).
        keepalive_timeout 30s;
    }}
    server {{
        listen {host}:{port} ssl http2;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream off;
        }}
    }}
}}
"""


#: Seconds an upstream ServerThread behind `NginxProxy` must keep idle connections open: longer
#: than nginx's upstream ``keepalive_timeout`` (30 s), so that only nginx closes them.
UPSTREAM_KEEP_ALIVE_TIMEOUT = 75.0


def nginx_or_skip() -> str:
    """The nginx executable, or skip the test (fail under ``HTTPX_RESILIENCE_REQUIRE_NGINX``)."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        message = "nginx is not installed (apt-get install nginx-light)"
        if os.environ.get("HTTPX_RESILIENCE_REQUIRE_NGINX") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
        return True
    return False


class NginxProxy:
    """nginx terminating TLS (HTTP/2 and HTTP/1.1) on 127.0.0.1 and proxying to ``upstream``
    (``host:port`` of a plain HTTP/1.1 server on loopback).

    ``keepalive_requests`` and ``keepalive_timeout`` are nginx's own directives: the
    per-connection request limit (GOAWAY on HTTP/2, ``Connection: close`` on HTTP/1.1) and the
    idle timeout. Usable as a context manager; `stop` is idempotent.
    """

    def __init__(
        self,
        upstream: str,
        *,
        ca: trustme.CA,
        keepalive_requests: int = 1000,
        keepalive_timeout: str = "75s",
        max_concurrent_streams: int = 128,
    ) -> None:
        host = upstream.split(":")[0]
        if host != LOOPBACK:
            raise ValueError(f"upstream must be on {LOOPBACK}, got {upstream!r}")
        self._executable = nginx_or_skip()
        self._dir = Path(tempfile.mkdtemp(prefix="test-nginx-"))
        leaf = ca.issue_cert(LOOPBACK, "localhost")
        leaf.private_key_pem.write_to_path(str(self._dir / "key.pem"))
        (self._dir / "cert.pem").write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        self._settings = {
            "upstream": upstream,
            "keepalive_requests": keepalive_requests,
            "keepalive_timeout": keepalive_timeout,
            "max_streams": max_concurrent_streams,
        }
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def start(self) -> NginxProxy:
        for _ in range(_PORT_TRIES):  # another process may take the port between probe and bind
            self.port = _free_port()
            config = self._dir / "nginx.conf"
            config.write_text(
                _CONFIG.format(dir=self._dir, host=LOOPBACK, port=self.port, **self._settings)
            )
            self._process = subprocess.Popen(
                [self._executable, "-p", str(self._dir), "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + _START_TIMEOUT
            while self._process.poll() is None and time.monotonic() < deadline:
                if _accepts(self.port):
                    return self
                time.sleep(0.02)
            self._terminate()
        log = (self._dir / "error.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"nginx did not start; error log:\n{log}")

    def error_log(self) -> str:
        return (self._dir / "error.log").read_text(errors="replace")

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_STOP_TIMEOUT)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NginxProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
