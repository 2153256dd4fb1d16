"""Header blocks and header lists for the HPACK codec's tests and benchmark
(`tests/test_hpack.py`, `benchmarks/hpack_codec.py`)."""

from __future__ import annotations

__all__ = ["HTTPX_REQUEST", "NGINX_BLOCK", "NGINX_FIRST", "NGINX_HEADERS"]

#: A real nginx 1.22 response (GET of a static file over HTTP/2), captured from the tests'
#: NginxFiles: the first block of a connection starts with a table size update to 0.
NGINX_FIRST = bytes.fromhex(
    "20887689aa6355e580ae212e1f6196d07abe94640a693f75040138a04371b72e34f298b46f5f8b1d75d0620d"
    "263d4c7441ea5c0231306c96d07abe94640a693f75040138a04371b72e34f298b46f00832a47378afe5c8c"
    "1238d3c0587fcf008919085ad2b583aa62a3848fd24a8f"
)
NGINX_HEADERS = [
    (b":status", b"200"),
    (b"server", b"nginx/1.22.1"),
    (b"date", b"Mon, 30 Nov 2026 11:56:48 GMT"),
    (b"content-type", b"application/json"),
    (b"content-length", b"10"),
    (b"last-modified", b"Mon, 30 Nov 2026 11:56:48 GMT"),
    (b"etag", b'"6b0d6480-a"'),
    (b"accept-ranges", b"bytes"),
]
#: The same response later on the connection: without the table size update.
NGINX_BLOCK = NGINX_FIRST[1:]
#: What our HTTP/2 connection sends for a GET from ``httpx.AsyncClient``.
HTTPX_REQUEST = [
    (b":method", b"GET"),
    (b":authority", b"127.0.0.1:8443"),
    (b":scheme", b"https"),
    (b":path", b"/data.json"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"python-httpx/0.28.1"),
]
