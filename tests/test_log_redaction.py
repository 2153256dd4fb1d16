"""What httpx, httpcore, h2 and hpack log, with and without `install_log_redaction`.

Real requests at DEBUG over HTTP/1.1 and HTTP/2 (TLS, ALPN) against the repo's Hypercorn test
server, carrying every kind of secret the issue names: a password in the URL, a ``?token=``
query, an API key, a bearer token, a request cookie and a ``Set-Cookie`` answer. Without the
filter they leak (the control, which shows these tests can see a leak); with it, none does.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from typing import Any

import hpack
import httpx
import pytest
import trustme

from httpx_resilience import (
    SECRET_NAME_MARKERS,
    SECRET_NAMES,
    APIKeyAuth,
    AsyncAPIClient,
    LogRedactionFilter,
    RetryConfig,
    add_secret_names,
    install_log_redaction,
    redact_url,
    uninstall_log_redaction,
)
from httpx_resilience._demo.asgi import Receive, Scope, Send
from httpx_resilience._redact import redact_text
from tests.support.server import FaultApp, ServerThread

pytestmark = pytest.mark.anyio

PASSWORD = "pa55w0rd-in-url-31c9"
TOKEN = "query-t0ken-8d2e"
API_KEY = "api-k3y-value-77f0"
BEARER = "bearer-t0ken-5a61"
COOKIE_SENT = "c00kie-sent-19ab"
COOKIE_SET = "c00kie-set-by-server-4c02"
SECRETS = (PASSWORD, TOKEN, API_KEY, BEARER, COOKIE_SENT, COOKIE_SET)
REDACTED_LOGGERS = ("httpx", "httpcore", "h2", "hpack", "h11", "httpx_resilience")


class CookieApp(FaultApp):
    """The FaultApp, with a ``Set-Cookie`` on every answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_cookie(message: Any) -> None:
            if message["type"] == "http.response.start":
                cookie = (b"set-cookie", f"session={COOKIE_SET}; Path=/".encode())
                message = {**message, "headers": [*message["headers"], cookie]}
            await send(message)

        await super().__call__(scope, receive, send_with_cookie)


@pytest.fixture(scope="module")
def cookie_servers(ca: trustme.CA) -> Iterator[dict[str, ServerThread]]:
    servers = {"HTTP/1.1": ServerThread(CookieApp()), "HTTP/2": ServerThread(CookieApp(), ca=ca)}
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture
def redaction() -> Iterator[LogRedactionFilter]:
    log_filter = install_log_redaction()
    try:
        yield log_filter
    finally:
        uninstall_log_redaction()


async def _leaky_requests(
    server: ServerThread, http_version: str, context: ssl.SSLContext, key: str
) -> None:
    """Requests that make every library underneath log: a retried 503, then a 200."""
    base = server.url.replace("://", f"://user:{PASSWORD}@")
    options: dict[str, Any] = {"http2": http_version == "HTTP/2", "verify": context}
    async with AsyncAPIClient(
        base,
        auth=APIKeyAuth(API_KEY),
        auth_token=BEARER,
        headers={"Cookie": f"sid={COOKIE_SENT}"},
        retry_config=RetryConfig(base_delay=0.0, max_delay=0.0),
        **options,
    ) as api:
        result = await api.get(f"/flaky/{key}", params={"fail": 1, "token": TOKEN})
        assert result.response.http_version == http_version
        assert [attempt.status for attempt in _history(result.response)] == [503, 200]


def _history(response: httpx.Response) -> tuple[Any, ...]:
    from httpx_resilience import get_retry_history

    return get_retry_history(response)


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records] + [caplog.text]


def _leaks(lines: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for secret in SECRETS:
        hits = [line for line in lines if secret in line]
        if hits:
            found[secret] = hits
    return found


def _decoded_header_blocks(caplog: pytest.LogCaptureFixture) -> list[bytes]:
    """The header values in hpack's "Encoded header block" records that decode on their own
    (the first block of each encoder does)."""
    values = []
    for record in caplog.records:
        if record.name.startswith("hpack") and "Encoded header block" in str(record.msg):
            args = record.args
            block = args[0] if isinstance(args, tuple) and args else None
            if not isinstance(block, bytes):
                continue
            try:
                values += [bytes(value) for _, value in hpack.Decoder().decode(block, raw=True)]
            except Exception:  # a later block refers to a dynamic table we do not have
                continue
    return values


@pytest.mark.parametrize("http_version", ["HTTP/1.1", "HTTP/2"])
async def test_without_the_filter_the_libraries_underneath_leak(
    cookie_servers: dict[str, ServerThread],
    client_ssl_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    http_version: str,
    key: str,
) -> None:
    uninstall_log_redaction()  # in case anything before left it installed
    caplog.set_level(logging.DEBUG)
    await _leaky_requests(cookie_servers[http_version], http_version, client_ssl_context, key)
    leaks = _leaks(_logged(caplog))
    # httpx's INFO line has the password and the token.
    assert {PASSWORD, TOKEN} <= set(leaks)
    if http_version == "HTTP/2":
        # hpack under the test server's h2 logs the Set-Cookie answer, the API key, the cookie
        # and the ?token= path. Our client's HPACK codec (_connection/hpack.py) logs nothing:
        # no "Encoded header block" record decodes back to the bearer token any more.
        assert {COOKIE_SET, API_KEY, COOKIE_SENT} <= set(leaks)
        assert not any(BEARER.encode() in value for value in _decoded_header_blocks(caplog))
    # This library's own line is redacted even without the filter.
    ours = [r.getMessage() for r in caplog.records if r.name == "httpx_resilience"]
    assert any("Retrying GET" in line for line in ours)
    assert not _leaks(ours)


@pytest.mark.parametrize("http_version", ["HTTP/1.1", "HTTP/2"])
async def test_with_the_filter_nothing_leaks_at_debug(
    cookie_servers: dict[str, ServerThread],
    client_ssl_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    redaction: LogRedactionFilter,
    http_version: str,
    key: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    await _leaky_requests(cookie_servers[http_version], http_version, client_ssl_context, key)
    lines = _logged(caplog)
    assert _leaks(lines) == {}
    names = {record.name for record in caplog.records}
    # The records are still there, just redacted: the filter never drops one.
    assert {"httpx", "httpx_resilience"} <= names
    assert any("HTTP Request: GET http" in line for line in lines)
    assert any("[redacted]" in line for line in lines)
    if http_version == "HTTP/2":
        assert "hpack.hpack" in names
        blocks = [r for r in caplog.records if "Encoded header block" in r.getMessage()]
        assert blocks
        assert all("bytes [redacted]" in r.getMessage() for r in blocks)
        assert _decoded_header_blocks(caplog) == []  # no bytes left to decode
    # Both protocols go through this package's own connection layer, which logs no headers
    # at all: nothing of httpcore's is left to redact.
    assert not [name for name in names if name.startswith("httpcore")]


def test_install_is_one_idempotent_call_and_not_done_on_import() -> None:
    def filters() -> list[logging.Filter]:
        return [
            f
            for name in [*REDACTED_LOGGERS, "httpcore.http11", "httpcore.http2", "hpack.hpack"]
            for f in logging.getLogger(name).filters
            if isinstance(f, LogRedactionFilter)
        ]

    assert filters() == []  # importing httpx_resilience installs nothing
    first = install_log_redaction()
    try:
        assert install_log_redaction() is first
        assert len(filters()) == 3 + len(REDACTED_LOGGERS)
        assert all(f is first for f in filters())
    finally:
        uninstall_log_redaction()
    assert filters() == []


def test_the_filter_redacts_exception_text_and_survives_broken_records() -> None:
    log_filter = LogRedactionFilter()
    try:
        raise ValueError(f"Illegal header value b'Bearer {BEARER}'")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "httpcore.http11", logging.DEBUG, __file__, 1, "failed %s", ("x",), sys.exc_info()
        )
    assert log_filter.filter(record)
    assert BEARER not in (record.exc_text or "")
    assert "Illegal header value" in (record.exc_text or "")
    broken = logging.LogRecord("httpx", logging.INFO, __file__, 1, "%s %s", ("one",), None)
    assert log_filter.filter(broken)
    assert broken.getMessage() == "[log record redacted: it could not be formatted]"


# --- the redactor ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "passphrase",
        "client_assertion",
        "otp",
        "pin",
        "ticket",
        "access_token",
        "api_key",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "client_secret",
        "code",
        "password",
        "PHPSESSID",
        "SAMLResponse",
        "csrf_token",
    ],
)
def test_redact_url_covers_the_documented_names(name: str) -> None:
    shown = redact_url(f"https://h.test/cb?q=ok&{name}=S3CRET-VALUE&page=2")
    assert "S3CRET-VALUE" not in shown
    assert shown == f"https://h.test/cb?q=ok&{name}=[redacted]&page=2"


@pytest.mark.parametrize("name", ["shipping", "spin", "footprint", "q", "page", "stop"])
def test_redact_url_leaves_ordinary_names_alone(name: str) -> None:
    url = f"https://h.test/x?{name}=visible"
    assert redact_url(url) == url


def test_redact_url_path_parameters_userinfo_and_fragment() -> None:
    url = "https://u:pw@h.test/app;jsessionid=J5ESS1ON/list;page=2?x=1#access_token=T0K"
    assert redact_url(url) == "https://h.test/app;jsessionid=[redacted]/list;page=2?x=1"
    assert redact_url("http://h.test/a;sid=1;v=2") == "http://h.test/a;sid=[redacted];v=2"
    assert redact_url("not a url ::") == "[unparseable URL]" or "::" in redact_url("not a url ::")


def test_the_documented_lists_are_exported() -> None:
    assert {"passphrase", "ticket", "assertion"} <= set(SECRET_NAME_MARKERS)
    assert {"otp", "pin", "client_assertion"} <= SECRET_NAMES


def test_users_can_add_their_own_names() -> None:
    url = "https://h.test/x?x-tenant-blob-test=T3NANT"
    assert redact_url(url) == url
    add_secret_names("X-Tenant-Blob-Test")
    assert redact_url(url) == "https://h.test/x?x-tenant-blob-test=[redacted]"
    assert "T3NANT" not in redact_text("Adding b'x-tenant-blob-test'=b'T3NANT' to the table")
    with pytest.raises(TypeError, match="add_secret_names"):
        add_secret_names("")


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ('HTTP Request: GET http://user:PW1@h/a?token=TK1 "HTTP/1.1 200 OK"', "PW1"),
        ('HTTP Request: GET http://user:PW1@h/a?token=TK1 "HTTP/1.1 200 OK"', "TK1"),
        ("return_value=(b'HTTP/1.1', 200, b'OK', [(b'set-cookie', b'sid=SC1; Path=/')])", "SC1"),
        ("Adding b'x-api-key'=b'AK1' to the header table, sensitive:False", "AK1"),
        ("Adding b':path'=b'/a?token=TK2&q=1' to the header table", "TK2"),
        ("Decoded (b'authorization', b'Bearer BT1'), consumed 4", "BT1"),
        ("exception=LocalProtocolError(\"Illegal header value b'Bearer BT2\\\\nX: y'\")", "BT2"),
        ("Evicting b'cookie': b'a=CK1' from the header table", "CK1"),
        # Found by Hypothesis: a value with a double quote makes the message's repr escape
        # the single quotes, one level down.
        (
            "send_request_headers.failed exception=LocalProtocolError(LocalProtocolError("
            "'Illegal header value b\\'Bearer 0000012\"\\\\nX: y\\''))",
            "0000012",
        ),
        ("outer('[(b\\'x-api-key\\', b\\'K3Y\"\\')]')", "K3Y"),
        ("Authorization: Bearer BT3, X-Api-Key=AK2", "BT3"),
        ("Authorization: Bearer BT3, X-Api-Key=AK2", "AK2"),
        ("Received frame: HeadersFrame(stream_id=1): data=<hex:8388abcdef>", "8388abcdef"),
    ],
)
def test_redact_text(line: str, secret: str) -> None:
    assert secret not in redact_text(line)


def test_redact_text_keeps_what_is_not_secret() -> None:
    line = "Adding b':authority'=b'127.0.0.1:8443' to the header table; host='127.0.0.1' port=80"
    assert redact_text(line) == line


def test_other_loggers_can_be_covered_by_name() -> None:
    logging.getLogger("myapp.http.client")  # a child that exists before the call
    log_filter = install_log_redaction(["myapp.http"])
    try:
        for name in ("myapp.http", "myapp.http.client"):
            assert log_filter in logging.getLogger(name).filters
        assert log_filter not in logging.getLogger("httpx").filters
    finally:
        uninstall_log_redaction()
    assert log_filter not in logging.getLogger("myapp.http.client").filters


class _H2Logger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """h2 wants ``debug`` and ``trace``; it logs only through a logger it is given."""

    def trace(self, msg: str, *args: Any) -> None:
        self.debug(msg, *args)


_H2_LOGGER = logging.getLogger("h2.test_log_redaction")  # exists before any install


def _h2_exchange() -> None:
    """One request's HEADERS frame, encoded by a client h2 and read by a server h2, sans-IO."""
    import h2.config
    import h2.connection

    def config(client_side: bool) -> h2.config.H2Configuration:
        logger = _H2Logger(_H2_LOGGER, {})
        return h2.config.H2Configuration(client_side=client_side, logger=logger)  # type: ignore[arg-type]

    client = h2.connection.H2Connection(config(True))
    server = h2.connection.H2Connection(config(False))
    client.initiate_connection()
    server.initiate_connection()
    headers = [
        (":method", "GET"), (":path", f"/a?token={TOKEN}"), (":authority", "h.test"),
        (":scheme", "https"), ("x-api-key", API_KEY), ("authorization", f"Bearer {BEARER}"),
    ]  # fmt: skip
    client.send_headers(1, headers, end_stream=True)
    server.receive_data(client.data_to_send())


@pytest.mark.parametrize("installed", [False, True])
def test_h2_with_a_logger(caplog: pytest.LogCaptureFixture, installed: bool) -> None:
    uninstall_log_redaction()
    if installed:
        install_log_redaction()
    try:
        caplog.set_level(logging.DEBUG)
        _h2_exchange()
    finally:
        uninstall_log_redaction()
    h2_lines = [r.getMessage() for r in caplog.records if r.name.startswith("h2")]
    assert any("Received frame" in line for line in h2_lines)
    leaks = _leaks(_logged(caplog))
    if installed:
        assert leaks == {}
    else:  # the control: h2 logs the headers it sends in clear
        assert {TOKEN, API_KEY} <= set(leaks)
