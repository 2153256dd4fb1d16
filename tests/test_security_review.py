"""Adversarial review: credential paths the other security tests do not cover."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import httpx
import pytest

from httpx_resilience import AsyncAPIClient, ResilientTransport
from tests.support.server import ServerThread
from tests.test_security_redirects import KEY, RedirectApp, _secrets_in

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def origin_a() -> Iterator[ServerThread]:
    server = ServerThread(RedirectApp())
    try:
        server.start()
        yield server
    finally:
        server.stop()


class _CustomKeyAuth(httpx.Auth):
    """An auth flow of the caller's own (not one of this library's helpers)."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["X-API-Key"] = KEY
        yield request


async def test_the_facade_drops_a_given_clients_own_api_key_on_a_cross_origin_redirect(
    origin_a: ServerThread, h1_server: ServerThread, key: str
) -> None:
    async with httpx.AsyncClient(headers={"X-API-Key": KEY}) as client:
        api = AsyncAPIClient(origin_a.url, client=client, follow_redirects=True)
        await api.get("/redirect", params={"to": f"{h1_server.url}/ok/{key}"})
    assert origin_a.app.received["redirect"][-1]["x-api-key"] == KEY  # type: ignore[attr-defined]
    (at_b,) = h1_server.app.received[key]  # type: ignore[attr-defined]
    assert _secrets_in(at_b.headers) == []


async def test_the_facade_drops_a_custom_auth_flows_api_key_on_a_cross_origin_redirect(
    origin_a: ServerThread, h1_server: ServerThread, key: str
) -> None:
    async with AsyncAPIClient(origin_a.url, auth=_CustomKeyAuth(), follow_redirects=True) as api:
        await api.get("/redirect", params={"to": f"{h1_server.url}/ok/{key}"})
    assert origin_a.app.received["redirect"][-1]["x-api-key"] == KEY  # type: ignore[attr-defined]
    (at_b,) = h1_server.app.received[key]  # type: ignore[attr-defined]
    assert _secrets_in(at_b.headers) == []


CERT_PASSWORD = "k3y-passw0rd-5e1f"


@pytest.mark.parametrize("owner", [ResilientTransport, AsyncAPIClient], ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"cert": ["client.pem", "client.key", CERT_PASSWORD]}, id="cert-list"),
        pytest.param(
            {"proxy": {"url": f"http://user:{CERT_PASSWORD}@proxy.test:3128"}}, id="proxy-dict"
        ),
    ],
)
def test_a_mistyped_cert_or_proxy_is_refused_without_quoting_its_password(
    owner: type[Any], options: dict[str, Any]
) -> None:
    with pytest.raises(TypeError, match=r"\.(cert|proxy) must be .*got (list|dict)") as caught:
        owner(**options)
    assert CERT_PASSWORD not in str(caught.value)
    assert CERT_PASSWORD not in repr(caught.value.args)
