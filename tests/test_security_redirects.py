"""Credentials stay with their origin: a redirect to another origin carries none of them.

Two real servers on 127.0.0.1 (two ports, so two origins): a redirecting app (origin A, which
also records what it received) and the shared FaultApp (origin B). httpx alone drops only
``Authorization``; these tests check every way this library sets a credential.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from httpx_resilience import (
    APIKeyAuth,
    AsyncAPIClient,
    BearerAuth,
    ResilientTransport,
    api_key_auth,
    bearer_token_auth,
)
from httpx_resilience._auth import mark_credentials, strip_foreign_credentials
from httpx_resilience._demo.asgi import Receive, Scope, Send, request_body, respond
from tests.support.server import ServerThread

pytestmark = pytest.mark.anyio

KEY = "k3y-0f-origin-A-7f1c2a"
TOKEN = "t0ken-of-origin-A-9be4"


class RedirectApp:
    """``/redirect?to=URL`` answers 302 to URL (to itself without ``to``); ``/record/{key}``
    answers 200. Both record the headers they received under the key (``redirect`` for the
    first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: dict[str, list[dict[str, str]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await request_body(scope, receive, send) is None:
            return
        headers = {bytes(n).decode().lower(): bytes(v).decode() for n, v in scope["headers"]}
        parts = scope["path"].split("/")
        key = parts[2] if parts[1] == "record" and len(parts) == 3 else parts[1]
        with self._lock:
            self.received.setdefault(key, []).append(headers)
        if parts[1] == "redirect":
            query = parse_qs(scope["query_string"].decode())
            location = query.get("to", ["/redirect"])[0].encode()  # no target: a loop
            await respond(send, 302, b"moved\n", headers=[(b"location", location)])
        else:
            await respond(send, 200, b"recorded\n")


@pytest.fixture(scope="module")
def origin_a() -> Iterator[ServerThread]:
    server = ServerThread(RedirectApp())
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _app(server: ServerThread) -> RedirectApp:
    app = server.app
    assert isinstance(app, RedirectApp)
    return app


def _secrets_in(headers: dict[str, str]) -> list[str]:
    return [name for name, value in headers.items() if KEY in value or TOKEN in value]


# Every way of setting a credential through this library, with the header it lands in.
CREDENTIALS: list[Any] = [
    pytest.param({"auth": api_key_auth(KEY)}, "x-api-key", id="api_key_auth-dict"),
    pytest.param({"auth": APIKeyAuth(KEY)}, "x-api-key", id="APIKeyAuth"),
    pytest.param(
        {"auth": APIKeyAuth(KEY, header_name="X-Tenant")}, "x-tenant", id="APIKeyAuth-any-name"
    ),
    pytest.param(
        {"auth_headers": api_key_auth(KEY, header_name="Api-Id")}, "api-id", id="any-name"
    ),
    pytest.param({"auth_headers": {"X-API-Key": KEY}}, "x-api-key", id="auth_headers"),
    pytest.param({"headers": {"X-API-Key": KEY}}, "x-api-key", id="headers-secret-name"),
    pytest.param({"auth_token": TOKEN}, "authorization", id="auth_token"),
    pytest.param({"auth": bearer_token_auth(TOKEN)}, "authorization", id="bearer_token_auth"),
    pytest.param({"auth": BearerAuth(TOKEN)}, "authorization", id="BearerAuth"),
]


@pytest.mark.parametrize(("credential", "header"), CREDENTIALS)
async def test_the_facade_drops_credentials_on_a_cross_origin_redirect(
    origin_a: ServerThread,
    h1_server: ServerThread,
    key: str,
    credential: dict[str, Any],
    header: str,
) -> None:
    target = f"{h1_server.url}/ok/{key}"
    async with AsyncAPIClient(origin_a.url, follow_redirects=True, **credential) as api:
        result = await api.get("/redirect", params={"to": target})
    assert result.status_code == 200
    assert [r.status_code for r in result.response.history] == [302]
    sent_to_a = _app(origin_a).received["redirect"][-1]
    assert _secrets_in(sent_to_a) == [header]  # the credential did go to its own origin
    (at_b,) = h1_server.app.received[key]  # type: ignore[attr-defined]
    assert _secrets_in(at_b.headers) == []
    assert header not in at_b.headers


@pytest.mark.parametrize(("credential", "header"), CREDENTIALS)
async def test_the_facade_keeps_credentials_on_a_same_origin_redirect(
    origin_a: ServerThread, key: str, credential: dict[str, Any], header: str
) -> None:
    # The control: the same request redirected within origin A keeps its credential, so the
    # test above sees a stripped header, not a header that was never sent.
    target = f"{origin_a.url}/record/{key}"
    async with AsyncAPIClient(origin_a.url, follow_redirects=True, **credential) as api:
        await api.get("/redirect", params={"to": target})
    (at_a,) = _app(origin_a).received[key]
    assert _secrets_in(at_a) == [header]


async def test_a_given_plain_client_is_protected_too(
    origin_a: ServerThread, h1_server: ServerThread, key: str
) -> None:
    # client= with httpx's own transport: the facade follows the redirects itself.
    async with httpx.AsyncClient() as client:
        api = AsyncAPIClient(origin_a.url, client=client, follow_redirects=True,
                             auth=APIKeyAuth(KEY))  # fmt: skip
        await api.get("/redirect", params={"to": f"{h1_server.url}/ok/{key}"})
    (at_b,) = h1_server.app.received[key]  # type: ignore[attr-defined]
    assert _secrets_in(at_b.headers) == []


@pytest.mark.parametrize("auth", [APIKeyAuth(KEY), BearerAuth(TOKEN)], ids=repr)
async def test_the_transport_drops_auth_helper_credentials_under_a_plain_httpx_client(
    origin_a: ServerThread, h1_server: ServerThread, key: str, auth: httpx.Auth
) -> None:
    # httpx follows the redirect; ResilientTransport sees the hop and drops the key.
    async with httpx.AsyncClient(transport=ResilientTransport(), follow_redirects=True) as client:
        response = await client.get(
            f"{origin_a.url}/redirect", params={"to": f"{h1_server.url}/ok/{key}"}, auth=auth
        )
    assert response.status_code == 200
    assert _secrets_in(_app(origin_a).received["redirect"][-1])
    (at_b,) = h1_server.app.received[key]  # type: ignore[attr-defined]
    assert _secrets_in(at_b.headers) == []


async def test_too_many_redirects_is_mapped(origin_a: ServerThread) -> None:
    from httpx_resilience import APIClientError

    loop = f"{origin_a.url}/redirect?to={origin_a.url}/redirect"
    async with httpx.AsyncClient(max_redirects=2) as client:
        api = AsyncAPIClient(client=client, follow_redirects=True, auth_token=TOKEN)
        with pytest.raises(APIClientError, match="TooManyRedirects") as caught:
            await api.get(loop)
    assert TOKEN not in str(caught.value)


def _request(url: str, **headers: str) -> httpx.Request:
    return httpx.Request("GET", url, headers=headers)


@pytest.mark.parametrize(
    ("first", "then", "kept"),
    [
        ("http://a.test/x", "http://a.test:80/y", True),
        ("http://a.test/x", "https://a.test/y", True),  # httpx keeps Authorization here too
        ("https://a.test/x", "http://a.test/y", False),
        ("http://a.test/x", "http://a.test:8080/y", False),
        ("http://a.test/x", "http://b.test/x", False),
        ("http://a.test:8080/x", "https://a.test/y", False),
    ],
)
def test_which_hops_keep_the_credentials(first: str, then: str, kept: bool) -> None:
    request = _request(
        first,
        **{"X-Tenant": KEY, "X-Session-Token": TOKEN, "Accept": "a/b", "Idempotency-Key": "i1"},
    )
    mark_credentials(request, ["X-Tenant"])
    hop = httpx.Request("GET", then, headers=request.headers, extensions=request.extensions)
    strip_foreign_credentials(hop)
    assert ("x-tenant" in hop.headers) is kept
    assert ("x-session-token" in hop.headers) is kept  # secret-looking: dropped with them
    assert hop.headers["accept"] == "a/b"
    assert hop.headers["idempotency-key"] == "i1"  # "key" in its name, but not a credential


def test_an_unmarked_request_is_left_alone() -> None:
    request = _request("http://b.test/", **{"X-API-Key": KEY})
    strip_foreign_credentials(request)
    assert request.headers["x-api-key"] == KEY


def test_marking_never_changes_the_callers_extensions() -> None:
    extensions: dict[str, Any] = {"x": 1}
    request = httpx.Request("GET", "http://a.test/", extensions=extensions)
    mark_credentials(request, ["X-API-Key"])
    assert extensions == {"x": 1}


def test_ordinary_headers_among_auth_headers_are_not_made_secret() -> None:
    from httpx_resilience._redact import is_secret_name

    AsyncAPIClient(auth_headers={"Accept": "application/json", "X-Client-Ref-Test": "r"})
    assert not is_secret_name("Accept")
    assert is_secret_name("X-Client-Ref-Test")  # an unknown name given as auth: a credential
