"""nginx on 127.0.0.1: in front of an upstream test server (`NginxProxy`), the HTTP/2 server
that closes connections *gracefully*; or serving files (`NginxFiles`), for the benchmarks.

Hypercorn's HTTP/2 ``keep_alive_max_requests`` sends GOAWAY and then drops the responses of the
streams it already accepted (h2's state machine closes on sending GOAWAY), so no client can
complete them; nginx's ``keepalive_requests`` is the graceful kind the issue is about: GOAWAY
with ``last_stream_id``, the accepted streams finished, the rest ignored. nginx serves TLS with
a certificate from the tests' trustme CA (ALPN h2 and http/1.1) and proxies to the upstream
over HTTP/1.1, so the upstream app's own counters say what was processed. `NginxFiles` serves a
directory of files over plain HTTP/1.1 and over TLS (HTTP/2 and HTTP/1.1 by ALPN) with a
certificate from the same kind of CA: nginx answers from C, so a client's own cost is what a
benchmark against it measures.

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
from typing import TYPE_CHECKING

import pytest
import trustme

from tests.support.server import LOOPBACK

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["UPSTREAM_KEEP_ALIVE_TIMEOUT", "NginxFiles", "NginxProxy", "find_nginx", "nginx_or_skip"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_PORT_TRIES = 5

#: What every configuration here starts with: one worker in the foreground, everything it
#: writes inside its own directory.
_PREAMBLE = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""

_PROXY_CONFIG = (
    _PREAMBLE
    + """\
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
)

# nginx 1.22 (Debian 12) spells HTTP/2 as a ``listen`` parameter; ``http2 on;`` is 1.25.1 and
# later. The TLS server's request limit is per connection: high, so that a benchmark measures
# requests, not HTTP/2 GOAWAY handling (stock httpx fails requests at a GOAWAY).
_FILES_CONFIG = (
    _PREAMBLE
    + """\
    default_type application/json;
    server {{
        listen {host}:{port} backlog=16384;
        keepalive_requests {keepalive_requests};
        location / {{ root {dir}/www; }}
    }}
    server {{
        listen {host}:{tls_port} ssl http2 backlog=16384;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        keepalive_requests {tls_keepalive_requests};
        http2_max_concurrent_streams {max_streams};
        location / {{ root {dir}/www; }}
    }}
}}
"""
)


#: Seconds an upstream ServerThread behind `NginxProxy` must keep idle connections open: longer
#: than nginx's upstream ``keepalive_timeout`` (30 s), so that only nginx closes them.
UPSTREAM_KEEP_ALIVE_TIMEOUT = 75.0


def find_nginx() -> str | None:
    """The nginx executable, or None when it is not installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_or_skip() -> str:
    """The nginx executable, or skip the test (fail under ``HTTPX_RESILIENCE_REQUIRE_NGINX``)."""
    found = find_nginx()
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


class _Nginx:
    """One nginx process in its own temporary directory, on free loopback ports. Subclasses
    write the configuration (`_config`). Usable as a context manager; `stop` is idempotent."""

    _ports = 1  # how many ports the configuration listens on

    def __init__(self, executable: str, ca: trustme.CA | None) -> None:
        self._executable = executable
        self._dir = Path(tempfile.mkdtemp(prefix="test-nginx-"))
        if ca is not None:
            leaf = ca.issue_cert(LOOPBACK, "localhost")
            leaf.private_key_pem.write_to_path(str(self._dir / "key.pem"))
            chain = b"".join(pem.bytes() for pem in leaf.cert_chain_pems)
            (self._dir / "cert.pem").write_bytes(chain)
        self._process: subprocess.Popen[bytes] | None = None
        self.ports: list[int] = []

    def _config(self, ports: list[int]) -> str:
        raise NotImplementedError

    def start(self) -> Self:
        for _ in range(_PORT_TRIES):  # another process may take a port between probe and bind
            self.ports = [_free_port() for _ in range(self._ports)]
            config = self._dir / "nginx.conf"
            config.write_text(self._config(self.ports))
            self._process = subprocess.Popen(
                [self._executable, "-p", str(self._dir), "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + _START_TIMEOUT
            while self._process.poll() is None and time.monotonic() < deadline:
                if all(_accepts(port) for port in self.ports):
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class NginxProxy(_Nginx):
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
        super().__init__(nginx_or_skip(), ca)
        self._settings = {
            "upstream": upstream,
            "keepalive_requests": keepalive_requests,
            "keepalive_timeout": keepalive_timeout,
            "max_streams": max_concurrent_streams,
        }

    @property
    def port(self) -> int:
        return self.ports[0] if self.ports else 0

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def _config(self, ports: list[int]) -> str:
        return _PROXY_CONFIG.format(
            dir=self._dir, host=LOOPBACK, port=ports[0], worker_connections=4096, **self._settings
        )


class NginxFiles(_Nginx):
    """nginx serving ``files`` (name to content, ``application/json``) on 127.0.0.1: over plain
    HTTP/1.1 at `http_url` and over TLS at `https_url` (HTTP/2 and HTTP/1.1 by ALPN, a
    certificate from ``ca``). One worker, as `NginxProxy`.

    ``keepalive_requests`` is the plain server's per-connection request limit (nginx's default,
    1000); ``tls_keepalive_requests`` the TLS server's, high by default so that HTTP/2 clients
    are not measured on GOAWAY handling. ``executable`` defaults to `nginx_or_skip`'s.
    """

    _ports = 2

    def __init__(
        self,
        files: dict[str, bytes],
        *,
        ca: trustme.CA,
        keepalive_requests: int = 1000,
        tls_keepalive_requests: int = 1_000_000,
        max_concurrent_streams: int = 128,
        worker_connections: int = 16384,
        executable: str | None = None,
    ) -> None:
        super().__init__(executable or nginx_or_skip(), ca)
        (self._dir / "www").mkdir()
        for name, content in files.items():
            (self._dir / "www" / name).write_bytes(content)
        self._settings = {
            "keepalive_requests": keepalive_requests,
            "tls_keepalive_requests": tls_keepalive_requests,
            "max_streams": max_concurrent_streams,
            "worker_connections": worker_connections,
        }

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports[0]}"

    @property
    def https_url(self) -> str:
        return f"https://{LOOPBACK}:{self.ports[1]}"

    def _config(self, ports: list[int]) -> str:
        return _FILES_CONFIG.format(
            dir=self._dir, host=LOOPBACK, port=ports[0], tls_port=ports[1], **self._settings
        )
