"""No credential in an error, a repr, a history entry or a log line, whatever the failure.

Invalid header values are refused at the API boundary with a message naming the header and
never the value. A value that slips past (a custom ``httpx.Auth`` of the user's) and makes h11
refuse the request is cleared from every message. The Hypothesis test at the end sends random
credentials through every way of setting one, makes the request fail in several ways, over
HTTP/1.1 and HTTP/2, and looks for the credential in everything it can read.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import traceback
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from httpx_resilience import (
    APIClientError,
    APIConnectionError,
    APIKeyAuth,
    AsyncAPIClient,
    AuthHeaders,
    BearerAuth,
    RateLimitError,
    ResilientTransport,
    RetryConfig,
    api_key_auth,
    bearer_token_auth,
    get_retry_history,
    install_log_redaction,
    oauth_token_auth,
    uninstall_log_redaction,
)
from tests.support.server import ServerInfo, ServerThread

SECRET = "SECRET-TOKEN-42"
BAD_VALUES = [
    pytest.param(f"{SECRET}\nX: y", "contains a line break", id="newline"),
    pytest.param(f"{SECRET}\r\n", "contains a line break", id="crlf"),
    pytest.param(f"{SECRET}\x00", "contains a NUL character", id="nul"),
    pytest.param(f"{SECRET} ", "has leading or trailing whitespace", id="trailing-space"),
    pytest.param(f"\t{SECRET}", "has leading or trailing whitespace", id="leading-tab"),
    pytest.param(f"{SECRET}\x7f", "contains a control character", id="del"),
    pytest.param(f"{SECRET}é", "contains non-ASCII characters", id="non-ascii"),
]

# Every way of setting a credential, as a function of the credential.
WAYS: dict[str, Callable[[str], dict[str, Any]]] = {
    "auth_token": lambda v: {"auth_token": v},
    "auth_headers": lambda v: {"auth_headers": {"X-API-Key": v}},
    "auth_headers-any-name": lambda v: {"auth_headers": {"X-Tenant-Id": v}},
    "auth-dict": lambda v: {"auth": {"X-API-Key": v}},
    "headers": lambda v: {"headers": {"X-API-Key": v}},
    "api_key_auth": lambda v: {"auth": api_key_auth(v)},
    "api_key_auth-any-name": lambda v: {"auth": api_key_auth(v, header_name="Api-Id")},
    "bearer_token_auth": lambda v: {"auth": bearer_token_auth(v)},
    "oauth_token_auth": lambda v: {"auth": oauth_token_auth(v)},
    "APIKeyAuth": lambda v: {"auth": APIKeyAuth(v, header_name="X-Customer")},
    "BearerAuth": lambda v: {"auth": BearerAuth(v)},
}


@pytest.mark.parametrize(("value", "problem"), BAD_VALUES)
@pytest.mark.parametrize("way", sorted(WAYS))
def test_invalid_values_are_refused_at_construction_without_echo(
    way: str, value: str, problem: str
) -> None:
    with pytest.raises(ValueError, match="value not shown") as caught:
        AsyncAPIClient("https://api.example.com", **WAYS[way](value))
    message = str(caught.value)
    assert problem in message
    assert "value not shown" in message
    assert SECRET not in message
    assert SECRET not in repr(caught.value)
    assert "".join(traceback.format_exception(caught.value)).count(SECRET) == 0


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: AsyncAPIClient(auth_token=f"{SECRET}\n"),
         ("AsyncAPIClient.auth_token", "Authorization")),
        (lambda: AsyncAPIClient(auth_headers={"X-Key": f"{SECRET}\n"}),
         ("auth_headers", "'X-Key'")),
        (lambda: AsyncAPIClient(headers={"X-Trace": f"{SECRET}\n"}), ("headers", "'X-Trace'")),
        (lambda: bearer_token_auth(f"{SECRET}\n"), ("token",)),
        (lambda: APIKeyAuth(f"{SECRET}\x00"), ("APIKeyAuth.api_key",)),
        (lambda: BearerAuth(f"{SECRET} "), ("BearerAuth.token",)),
        (lambda: AuthHeaders({"X-Key": f"{SECRET}\n"}), ("AuthHeaders", "'X-Key'")),
    ],
)  # fmt: skip
def test_the_message_names_the_header(make: Callable[[], object], names: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="value not shown") as caught:
        make()
    assert all(name in str(caught.value) for name in names), str(caught.value)
    assert SECRET not in str(caught.value)


def test_wrong_types_are_refused_without_echo() -> None:
    with pytest.raises(TypeError, match="auth must be") as wrong_type:
        AsyncAPIClient(auth=SECRET)  # type: ignore[arg-type]
    assert SECRET not in str(wrong_type.value)
    with pytest.raises(TypeError, match="'X-Key' must be a str, got int"):
        AsyncAPIClient(auth_headers={"X-Key": 42})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="contains a line break") as bad_bytes:
        AsyncAPIClient(auth_headers={"X-Key": SECRET.encode() + b"\n"})  # type: ignore[dict-item]
    assert SECRET not in str(bad_bytes.value)


@pytest.mark.anyio
async def test_per_request_headers_are_checked_too(h1_server: ServerThread, key: str) -> None:
    async with AsyncAPIClient(h1_server.url) as api:
        with pytest.raises(ValueError, match=r"request\(headers=...\).*'X-API-Key'") as caught:
            await api.get(f"/ok/{key}", headers={"X-API-Key": f"{SECRET}\n"})
    assert SECRET not in str(caught.value)
    assert h1_server.app.hits(key) == 0  # type: ignore[attr-defined]


class RawAuth(httpx.Auth):
    """A user's own auth that sets a value h11 refuses: past our boundary by design."""

    def __init__(self, value: str) -> None:
        self.value = value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self.value
        yield request


@contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record of every logger at DEBUG, with the redaction filter installed."""
    records: list[logging.LogRecord] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            self.format(record)  # caches exc_text, as a real handler would
            records.append(record)

    handler = ListHandler(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    install_log_redaction()
    try:
        yield records
    finally:
        uninstall_log_redaction()
        root.removeHandler(handler)
        root.setLevel(old_level)


def _forms(secret: str) -> set[str]:
    """The credential as it could appear in text: raw, and as str and bytes reprs show it."""
    forms = {secret, repr(secret)[1:-1], repr(secret.encode("utf-8", "replace"))[2:-1]}
    stripped = secret.strip()
    if stripped:
        forms.add(stripped)
    return {form for form in forms if len(form) >= 6}


def _everything_readable(error: BaseException | None, records: list[logging.LogRecord]) -> str:
    parts = [f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in records]
    if error is not None:
        parts += [str(error), repr(error)]
        chain: BaseException | None = error
        while chain is not None:
            # The text of each exception as a traceback shows it (notes included), without
            # the frames' source lines (of the standard library's too), which hold no
            # credential but may hold any word.
            parts.append("".join(traceback.format_exception_only(chain)))
            parts.append(repr(get_retry_history(chain)))
            parts.append(repr(getattr(chain, "args", ())))
            chain = chain.__cause__ or chain.__context__
    return "\n".join(parts)


@pytest.mark.anyio
async def test_a_refused_header_value_leaks_nowhere(server: ServerInfo, key: str) -> None:
    value = f"Bearer {SECRET}\nX: y"
    with captured_logs() as records:
        async with AsyncAPIClient(
            server.url, auth=RawAuth(value), retry_delay=0.0, **server.client_kwargs
        ) as api:
            with pytest.raises(APIConnectionError) as caught:
                await api.get(f"/ok/{key}")
    history = get_retry_history(caught.value.__cause__)  # type: ignore[arg-type]
    assert history  # the transport recorded the failed attempts
    readable = _everything_readable(caught.value, records)
    assert SECRET not in readable
    assert any("GET" in r.getMessage() for r in records)
    if server.http_version == "HTTP/1.1":
        assert "Illegal header value" in str(caught.value)  # h11's reason, value scrubbed


@pytest.mark.anyio
async def test_a_server_echoing_the_credential_does_not_put_it_in_the_message() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"invalid key {request.headers['x-api-key']}")

    async with AsyncAPIClient(
        "http://api.test", auth=APIKeyAuth(SECRET), transport=httpx.MockTransport(echo)
    ) as api:
        with pytest.raises(APIClientError) as caught:
            await api.get("/x")
    assert "invalid key [redacted]" in str(caught.value)
    assert SECRET not in repr(caught.value)


# --- Hypothesis: random credentials, failing requests ---------------------------------------

_VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
_VALID = st.text(_VISIBLE, min_size=8, max_size=40)
# Hypothesis draws strings from the constants of the code under test too ("connecti", from
# "connection", and "AuthHead" were drawn): such a "credential" shows up in type names, log
# lines and messages that never held it. Credentials that are pieces of this source are left out.
_SOURCE_TEXT = "\n".join(
    path.read_text(encoding="utf-8")
    for root in (Path(__file__).parents[1] / "src" / "httpx_resilience", Path(__file__).parent)
    for path in sorted(root.rglob("*.py"))
)
_INVALID = st.tuples(
    _VALID, st.sampled_from(["\n", "\r", "\x00", " ", "\t", "\x1b", "é", "\x7f"]), st.booleans()
).map(lambda t: f"{t[0]}{t[1]}" if t[2] else f"{t[0][:4]}{t[1]}{t[0][4:]}")
FAILURES = [
    "status-500", "status-401", "retry-after-huge", "drop", "refused", "raw-auth", "timeout",
]  # fmt: skip


def _refused_port() -> tuple[socket.socket, int]:
    """A port bound on 127.0.0.1 but not listening: connecting fails at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


async def _fail(
    base_url: str, options: dict[str, Any], way: str, credential: str, failure: str, key: str
) -> BaseException | None:
    """Make one request fail as ``failure``; return what was raised."""
    retry = RetryConfig(max_retries=1, base_delay=0.0, max_delay=0.0, budget_ratio=None)
    try:
        if failure == "raw-auth":
            kwargs: dict[str, Any] = {"auth": RawAuth(f"Bearer {credential}\nX: y")}
        else:
            kwargs = WAYS[way](credential)
        if failure == "timeout":
            kwargs["timeout"] = 0.05  # against a server that answers after 5 s
        api = AsyncAPIClient(base_url, retry_config=retry, **options, **kwargs)
    except (TypeError, ValueError) as error:
        return error
    path = {
        "status-500": f"/status/{key}?code=500",
        "status-401": f"/status/{key}?code=401",
        "retry-after-huge": f"/status/{key}?code=429&retry_after={'9' * 400}",
        "drop": f"/drop/{key}?fail=5",
        "refused": f"/ok/{key}",
        "raw-auth": f"/ok/{key}",
        "timeout": f"/slow/{key}?delay=5",
    }[failure]
    async with api:
        try:
            await api.get(path)
        except APIClientError as error:
            return error
    return None


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    credential=st.one_of(_VALID, _INVALID),
    way=st.sampled_from(sorted(WAYS)),
    failure=st.sampled_from(FAILURES),
    http2=st.booleans(),
)
def test_random_credentials_never_appear_in_errors_or_logs(
    h1_server: ServerThread,
    h2_server: ServerThread,
    client_ssl_context: ssl.SSLContext,
    credential: str,
    way: str,
    failure: str,
    http2: bool,
) -> None:
    assume(len(set(credential)) >= 4)  # "aaaaaaaa" could occur in any text by chance
    assume(not any(form in _SOURCE_TEXT for form in _forms(credential)))
    server = h2_server if http2 else h1_server
    options: dict[str, Any] = {"http2": True, "verify": client_ssl_context} if http2 else {}
    sock, port = _refused_port()
    base_url = f"http://127.0.0.1:{port}" if failure == "refused" else server.url
    if failure == "refused":
        options = {}
    key = f"hyp-{abs(hash((credential, way, failure, http2)))}"
    try:
        with captured_logs() as records:
            error = anyio.run(_fail, base_url, options, way, credential, failure, key)
    finally:
        sock.close()
    assert error is not None, "every scripted failure raises"
    readable = _everything_readable(error, records)
    for form in _forms(credential):
        assert form not in readable, (form, way, failure)
    if failure == "retry-after-huge" and isinstance(error, RateLimitError):
        assert error.retry_after == math.inf


# --- Retry-After too large to represent ------------------------------------------------------


@pytest.mark.anyio
async def test_a_huge_retry_after_is_above_the_cap_on_the_transport(
    server: ServerInfo, key: str
) -> None:
    transport = ResilientTransport(retry=RetryConfig(retry_after_cap=60.0), **server.client_kwargs)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(
            f"{server.url}/flaky/{key}", params={"status": 429, "retry_after": "9" * 400}
        )
    assert response.status_code == 429  # handed back at once, not retried after 0.25 s
    assert server.app.hits(key) == 1
    (attempt,) = get_retry_history(response)
    assert attempt.reason == "Retry-After above retry_after_cap"


@pytest.mark.anyio
async def test_a_huge_retry_after_is_infinite_in_the_facade(server: ServerInfo, key: str) -> None:
    async with AsyncAPIClient(server.url, **server.client_kwargs) as api:
        with pytest.raises(RateLimitError) as caught:
            await api.get(f"/flaky/{key}", params={"status": 429, "retry_after": "9" * 400})
    assert caught.value.retry_after == math.inf
    assert server.app.hits(key) == 1


# --- scrubbing, as a unit ---------------------------------------------------------------------


def test_scrub_exception_walks_causes_and_contexts_once() -> None:
    from httpx_resilience._redact import credential_values, scrub_exception

    secrets = credential_values(httpx.Headers({"X-API-Key": SECRET}))
    inner = ValueError(f"Illegal header value b'{SECRET}\\n'", SECRET.encode(), 7)
    outer = httpx.LocalProtocolError(str(inner))
    outer.__cause__ = inner
    inner.__context__ = outer  # a cycle must not loop
    scrub_exception(outer, secrets)
    assert SECRET not in repr(outer)
    assert inner.args == ("Illegal header value b'[redacted]\\n'", b"[redacted]", 7)


def test_credential_values_cover_the_token_and_its_escaped_forms() -> None:
    from httpx_resilience._redact import credential_values

    values = credential_values(
        httpx.Headers({"Authorization": "Bearer a'b\\c", "X-Trace": "not-secret"})
    )
    assert {"Bearer a'b\\c", "a'b\\c", "a'b\\\\c"} <= set(values)  # raw, and as reprs show it
    assert "not-secret" not in values
    assert values == sorted(values, key=len, reverse=True)  # longest first
