"""What a newcomer meets first (issue 13): the same names on the transport and the facade,
errors that name this library's classes, `get_retry_history` on whatever the facade hands back,
a sync client refused at once, and a library logger that stays quiet until configured."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import httpx
import pytest

from httpx_resilience import (
    APIConnectionError,
    AsyncAPIClient,
    ResilientTransport,
    RetryConfig,
    ServerError,
    get_retry_history,
    set_testing,
)
from tests.support.server import FaultProxy, ServerThread

SYNC_CLIENT = (
    "ResilientTransport is an async transport: give it to httpx.AsyncClient, not httpx.Client "
    "(there is no sync ResilientTransport yet)"
)


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


# --- retry= on the facade -----------------------------------------------------------------


@pytest.mark.anyio
async def test_the_facade_takes_retry_like_the_transport(h1_server: ServerThread, key: str) -> None:
    async with AsyncAPIClient(h1_server.url, retry=RetryConfig(max_retries=1)) as api:
        with pytest.raises(ServerError):
            await api.get(f"/status/{key}?code=503")
        assert api.client._transport.retry.max_retries == 1  # type: ignore[attr-defined]
    assert h1_server.app.hits(key) == 2  # type: ignore[attr-defined]


def test_retry_and_its_alias() -> None:
    config = RetryConfig(max_retries=2)
    same = AsyncAPIClient(retry=config, retry_config=config)  # the same object: no conflict
    assert same.client._transport.retry is config  # type: ignore[attr-defined]
    alias = AsyncAPIClient(retry_config=config)
    assert alias.client._transport.retry is config  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="give retry or its alias retry_config, not both"):
        AsyncAPIClient(retry=config, retry_config=RetryConfig())
    with pytest.raises(ValueError, match="give retry/retry_config or max_retries/retry_delay"):
        AsyncAPIClient(retry=config, max_retries=1)
    with pytest.raises(TypeError, match=r"AsyncAPIClient\.retry must be a RetryConfig or None"):
        AsyncAPIClient(retry=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry cannot be combined with client="):
        AsyncAPIClient(client=httpx.AsyncClient(), retry=config)


# --- unknown keywords ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "message"),
    [
        ("retri", "AsyncAPIClient() got an unexpected keyword argument 'retri'; "
                  "did you mean 'retry'?"),
        ("base_delay", "AsyncAPIClient() got an unexpected keyword argument 'base_delay'; "
                       "did you mean 'retry_delay'?"),
        ("frobnicate", "AsyncAPIClient() got an unexpected keyword argument 'frobnicate'"),
        ("circuitbreaker", "AsyncAPIClient() got an unexpected keyword argument "
                           "'circuitbreaker'; did you mean 'circuit_breaker'?"),
    ],
)  # fmt: skip
def test_an_unknown_keyword_names_the_facade(keyword: str, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        AsyncAPIClient(**{keyword: 1})  # type: ignore[arg-type]
    assert str(caught.value) == message
    assert "AsyncClient.__init__" not in str(caught.value)


def test_httpx_keywords_still_reach_httpx() -> None:
    def hook(request: httpx.Request) -> None:
        pass

    api = AsyncAPIClient(
        event_hooks={"request": [hook]}, max_redirects=3, params={"a": "1"}, trust_env=False
    )
    assert api.client.event_hooks["request"] == [hook]
    assert api.client.max_redirects == 3
    assert api.client.params["a"] == "1"


# --- get_retry_history on what the facade returns and raises ------------------------------


@pytest.mark.anyio
async def test_history_of_an_api_response_and_a_server_error(
    h1_server: ServerThread, key: str
) -> None:
    async with AsyncAPIClient(h1_server.url, retry=RetryConfig(max_retries=2)) as api:
        result = await api.get(f"/flaky/{key}?fail=1")
        with pytest.raises(ServerError) as caught:
            await api.get(f"/status/{key}-down?code=503")
    assert [a.status for a in get_retry_history(result)] == [503, 200]
    assert get_retry_history(result) == get_retry_history(result.response)
    history = get_retry_history(caught.value)
    assert [a.status for a in history] == [503, 503, 503]
    assert history[-1].reason == "retries exhausted"


@pytest.mark.anyio
async def test_history_of_an_api_connection_error(
    make_fault_proxy: Callable[..., FaultProxy], key: str
) -> None:
    proxy = make_fault_proxy(listening=False)
    async with AsyncAPIClient(proxy.url, retry=RetryConfig(max_retries=2)) as api:
        with pytest.raises(APIConnectionError) as caught:
            await api.get(f"/ok/{key}")
    history = get_retry_history(caught.value)
    assert len(history) == 3
    assert all(isinstance(a.error, httpx.ConnectError) for a in history)
    assert history == get_retry_history(caught.value.__cause__)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_history_of_raise_for_status(h1_server: ServerThread, key: str) -> None:
    transport = ResilientTransport(retry=RetryConfig(max_retries=1))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"{h1_server.url}/status/{key}?code=503")
    with pytest.raises(httpx.HTTPStatusError) as caught:
        response.raise_for_status()
    assert [a.status for a in get_retry_history(caught.value)] == [503, 503]


def test_history_of_what_never_went_through_the_transport() -> None:
    assert get_retry_history(httpx.Response(200)) == ()
    assert get_retry_history(ValueError("x")) == ()
    with pytest.raises(TypeError, match=r"takes an httpx\.Response, an APIResponse or an exc"):
        get_retry_history("a response")  # type: ignore[arg-type]


# --- the sync client ----------------------------------------------------------------------


def test_a_sync_client_is_refused_at_its_first_use(h1_server: ServerThread) -> None:
    # mypy already refuses this; the check is for code that is not type-checked.
    client = httpx.Client(transport=ResilientTransport())  # type: ignore[arg-type]
    with pytest.raises(TypeError) as caught:
        client.get(f"{h1_server.url}/ok/sync")
    assert str(caught.value) == SYNC_CLIENT
    with pytest.raises(TypeError, match=r"give it to httpx\.AsyncClient, not httpx\.Client"):
        client.close()
    with pytest.raises(TypeError, match=r"give it to httpx\.AsyncClient, not httpx\.Client"):  # noqa: SIM117
        with httpx.Client(transport=ResilientTransport()):  # type: ignore[arg-type]
            pass
    mounted = httpx.Client(mounts={"all://": ResilientTransport()})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"give it to httpx\.AsyncClient"):
        mounted.get(f"{h1_server.url}/ok/sync")


# --- logging --------------------------------------------------------------------------------


def run_opening_a_circuit(setup: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter that opens a circuit (a WARNING from the library) after ``setup``."""
    code = textwrap.dedent(
        f"""
        {setup}
        from httpx_resilience import CircuitBreaker
        from httpx_resilience._breaker import origin_of

        breaker = CircuitBreaker(failure_threshold=1, name="local")
        breaker.record_failure(breaker.admit(origin_of("http", "127.0.0.1", 80)))
        assert str(breaker.state("http://127.0.0.1")) == "CircuitState.OPEN"
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_an_unconfigured_app_prints_no_library_warnings() -> None:
    quiet = run_opening_a_circuit("")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    # The same warning does reach an application that configures logging.
    heard = run_opening_a_circuit("import logging; logging.basicConfig()")
    assert heard.returncode == 0, heard.stderr
    assert "WARNING:httpx_resilience:Circuit 'local' opened" in heard.stderr
