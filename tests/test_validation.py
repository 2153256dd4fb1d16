"""Every constructor argument of every public class is checked at construction: type, range,
finiteness (``10**400`` included), hashability, callability, URL shape. The error is a
`ValueError` or `TypeError` whose message starts with ``Class.field`` and says what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from httpx_resilience import (
    APIKeyAuth,
    APIResponse,
    AsyncAPIClient,
    CircuitBreaker,
    Origin,
    ResilientTransport,
    RetryConfig,
    api_key_auth,
)

HUGE = 10**400


def _raises(
    make: Callable[[], object], error: type[Exception], message: str
) -> pytest.ExceptionInfo[Exception]:
    with pytest.raises(error, match=f"^{message}") as caught:
        make()
    assert "<huge int>" in str(caught.value) or str(HUGE) not in str(caught.value)
    return caught


def test_integer_fields_state_integer_bounds() -> None:
    with pytest.raises(ValueError, match="max_retries") as caught:
        RetryConfig(max_retries=-1)
    assert str(caught.value) == "RetryConfig.max_retries must be >= 0, got -1"
    with pytest.raises(ValueError, match="failure_threshold") as caught:
        CircuitBreaker(failure_threshold=0)
    assert str(caught.value) == "CircuitBreaker.failure_threshold must be >= 1, got 0"
    with pytest.raises(ValueError, match="max_connections") as caught:
        AsyncAPIClient(max_connections=0)
    assert str(caught.value) == "AsyncAPIClient.max_connections must be >= 1, got 0"


# --- RetryConfig ------------------------------------------------------------------------------

RETRY_FLOATS = [
    "base_delay",
    "backoff_factor",
    "max_delay",
    "jitter",
    "retry_after_cap",
    "total_timeout",
    "budget_ratio",
    "budget_min_per_second",
    "budget_window",
]


@pytest.mark.parametrize("field", RETRY_FLOATS)
def test_retry_config_huge_floats_are_value_errors(field: str) -> None:
    # float(10**400) overflows: the field is named instead of an OverflowError escaping.
    extra = {"max_delay": HUGE} if field == "base_delay" else {}
    message = rf"RetryConfig\.{field} must be (a finite number|>= [\d.]+ and <= [\d.e+]+)"
    kwargs: dict[str, Any] = {field: HUGE, **extra}
    _raises(lambda: RetryConfig(**kwargs), ValueError, message)


@pytest.mark.parametrize("field", ["max_retries", "max_unprocessed_retries"])
def test_retry_config_huge_ints_are_exact(field: str) -> None:
    # An int is exact however large: "retry (almost) forever" is allowed, and never overflows.
    kwargs: dict[str, Any] = {field: HUGE}
    assert getattr(RetryConfig(**kwargs), field) == HUGE


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"retry_on_status": [[500]]}, TypeError,
         r"RetryConfig\.retry_on_status must hold status codes 100-599, got unhashable list"),
        ({"retry_methods": [["GET"]]}, TypeError,
         r"RetryConfig\.retry_methods must hold method names such as 'GET', got unhashable"),
        ({"retry_methods": [{"GET": 1}]}, TypeError, r"RetryConfig\.retry_methods must hold"),
        ({"retry_methods": [1]}, ValueError, r"RetryConfig\.retry_methods must hold method"),
        ({"max_retries": "3"}, TypeError, r"RetryConfig\.max_retries must be an int"),
        ({"jitter": math.inf}, ValueError, r"RetryConfig\.jitter must be a finite number"),
        ({"total_timeout": "5"}, TypeError, r"RetryConfig\.total_timeout must be a number or None"),
    ],
)  # fmt: skip
def test_retry_config_collections_and_types(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    _raises(lambda: RetryConfig(**kwargs), error, message)


# --- CircuitBreaker ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"recovery_time": HUGE}, ValueError,
         r"CircuitBreaker\.recovery_time must be >= 0\.0 and <= 1000000000\.0"),
        ({"window": HUGE}, ValueError, r"CircuitBreaker\.window must be >= 0\.001 and <= "),
        ({"failure_rate_threshold": HUGE}, ValueError,
         r"CircuitBreaker\.failure_rate_threshold must be >= 0\.0 and <= 1\.0"),
        ({"failure_statuses": [[500]]}, TypeError,
         r"CircuitBreaker\.failure_statuses must hold status codes 100-599, got unhashable"),
        ({"failure_statuses": 500}, TypeError, r"CircuitBreaker\.failure_statuses must be a "),
        ({"on_state_change": "log"}, TypeError,
         r"CircuitBreaker\.on_state_change must be callable or None, got 'log'"),
        ({"clock": 5.0}, TypeError, r"CircuitBreaker\.clock must be callable, got 5\.0"),
        ({"name": 3}, TypeError, r"CircuitBreaker\.name must be a str or None"),
        ({"minimum_calls": 1.5}, TypeError, r"CircuitBreaker\.minimum_calls must be an int"),
    ],
)  # fmt: skip
def test_circuit_breaker_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    _raises(lambda: CircuitBreaker(**kwargs), error, message)


@pytest.mark.parametrize(
    "field", ["failure_threshold", "minimum_calls", "half_open_max_calls", "max_origins"]
)
def test_circuit_breaker_huge_ints_are_exact(field: str) -> None:
    kwargs: dict[str, Any] = {field: HUGE}
    assert getattr(CircuitBreaker(**kwargs), field) == HUGE


# --- AsyncAPIClient ---------------------------------------------------------------------------

URL_ALLOWED = re.escape("must be an absolute http:// or https:// URL such as")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"base_url": "not a url ::"}, ValueError, rf"AsyncAPIClient\.base_url {URL_ALLOWED}"),
        ({"base_url": "::"}, ValueError, rf"AsyncAPIClient\.base_url {URL_ALLOWED}"),
        ({"base_url": "ftp://files.test"}, ValueError, rf"AsyncAPIClient\.base_url {URL_ALLOWED}"),
        ({"base_url": "/v1"}, ValueError, rf"AsyncAPIClient\.base_url {URL_ALLOWED}"),
        ({"base_url": 5}, TypeError, rf"AsyncAPIClient\.base_url {URL_ALLOWED}"),
        ({"max_connections": 0}, ValueError, r"AsyncAPIClient\.max_connections must be >= 1"),
        ({"max_connections": -1}, ValueError, r"AsyncAPIClient\.max_connections must be >= 1"),
        ({"max_connections": 2.0}, TypeError, r"AsyncAPIClient\.max_connections must be an int"),
        ({"max_keepalive_connections": -1}, ValueError,
         r"AsyncAPIClient\.max_keepalive_connections must be >= 0, got -1"),
        ({"timeout": "x"}, TypeError, r"AsyncAPIClient\.timeout must be a number or None"),
        ({"timeout": -1}, ValueError, r"AsyncAPIClient\.timeout must be >= 0\.0, got -1"),
        ({"timeout": math.nan}, ValueError, r"AsyncAPIClient\.timeout must be a finite number"),
        ({"timeout": HUGE}, ValueError, r"AsyncAPIClient\.timeout must be a finite number"),
        ({"timeout": httpx.Timeout(5.0, read=-1)}, ValueError,
         r"AsyncAPIClient\.timeout\.read must be >= 0\.0"),
        ({"max_retries": -1}, ValueError, r"AsyncAPIClient\.max_retries must be >= 0, got -1"),
        ({"max_retries": "3"}, TypeError,
         r"AsyncAPIClient\.max_retries must be an int or None"),
        ({"retry_delay": -0.5}, ValueError, r"AsyncAPIClient\.retry_delay must be >= 0\.0"),
        ({"retry_delay": HUGE}, ValueError, r"AsyncAPIClient\.retry_delay must be a finite"),
        ({"http2": "yes"}, TypeError, r"AsyncAPIClient\.http2 must be a bool"),
        ({"follow_redirects": 1}, TypeError, r"AsyncAPIClient\.follow_redirects must be a bool"),
        ({"verify": 5}, TypeError,
         r"AsyncAPIClient\.verify must be True, False, a CA bundle path or an ssl\.SSLContext"),
        ({"verify_ssl": 5}, TypeError, r"AsyncAPIClient\.verify_ssl must be True, False"),
        ({"client": "c"}, TypeError, r"AsyncAPIClient\.client must be an httpx\.AsyncClient"),
        ({"circuit_breaker": "cb"}, TypeError,
         r"AsyncAPIClient\.circuit_breaker must be a CircuitBreaker or None"),
        ({"retry_config": {"max_retries": 2}}, TypeError,
         r"AsyncAPIClient\.retry(_config)? must be a RetryConfig or None"),
        ({"headers": ["X-A"]}, TypeError, r"AsyncAPIClient\.headers must hold \(name, value\)"),
        ({"headers": 5}, TypeError, r"AsyncAPIClient\.headers must be a dict of header names"),
        ({"headers": {"X A": "v"}}, ValueError,
         r"AsyncAPIClient\.headers: 'X A' is not a valid header name"),
        ({"auth_token": ""}, ValueError, r"AsyncAPIClient\.auth_token must be a non-empty"),
    ],
)  # fmt: skip
def test_api_client_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    _raises(lambda: AsyncAPIClient(**kwargs), error, message)


def test_api_client_url_errors_do_not_echo_a_password() -> None:
    with pytest.raises(ValueError, match="base_url") as caught:
        AsyncAPIClient("ftp://user:pa55word@files.test/x?token=t0k")
    assert "pa55word" not in str(caught.value)
    assert "t0k" not in str(caught.value)


# --- ResilientTransport -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"transport": "t"}, TypeError,
         r"ResilientTransport\.transport must be an httpx\.AsyncBaseTransport or None"),
        ({"verify": 5}, TypeError, r"ResilientTransport\.verify must be True, False, a CA"),
        ({"cert": 5}, TypeError, r"ResilientTransport\.cert must be a certificate file path"),
        ({"proxy": 8080}, TypeError, r"ResilientTransport\.proxy must be a proxy URL"),
        ({"http1": "yes"}, TypeError, r"ResilientTransport\.http1 must be a bool"),
        ({"http2": None}, TypeError, r"ResilientTransport\.http2 must be a bool"),
        ({"trust_env": 0}, TypeError, r"ResilientTransport\.trust_env must be a bool"),
        ({"http1": False, "http2": False}, ValueError,
         r"ResilientTransport: http1 and http2 cannot both be False"),
        ({"limits": {"max_connections": 5}}, TypeError,
         r"ResilientTransport\.limits must be an httpx\.Limits"),
        ({"limits": httpx.Limits(max_connections=0)}, ValueError,
         r"ResilientTransport\.limits\.max_connections must be >= 1, got 0"),
        ({"limits": httpx.Limits(max_keepalive_connections=-2)}, ValueError,
         r"ResilientTransport\.limits\.max_keepalive_connections must be >= 0"),
        ({"limits": httpx.Limits(keepalive_expiry=math.inf)}, ValueError,
         r"ResilientTransport\.limits\.keepalive_expiry must be a finite number"),
        ({"retries": -1}, ValueError, r"ResilientTransport\.retries must be >= 0, got -1"),
        ({"uds": 5}, TypeError, r"ResilientTransport\.uds must be a str or None"),
        ({"local_address": b"x"}, TypeError, r"ResilientTransport\.local_address must be a str"),
        ({"socket_options": "x"}, TypeError, r"ResilientTransport\.socket_options must be a list"),
        ({"clock": 5}, TypeError, r"ResilientTransport\.clock must be callable"),
        ({"sleep": None}, TypeError, r"ResilientTransport\.sleep must be callable"),
        ({"random": 0.5}, TypeError, r"ResilientTransport\.random must be callable"),
        ({"retry": {"max_retries": 1}}, TypeError, r"ResilientTransport\.retry must be a Retry"),
        ({"circuit_breaker": 1}, TypeError, r"ResilientTransport\.circuit_breaker must be a"),
    ],
)  # fmt: skip
def test_transport_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    _raises(lambda: ResilientTransport(**kwargs), error, message)


# --- auth helpers and the rest ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: APIKeyAuth("k", header_name="X Key"), ValueError,
         r"APIKeyAuth\.header_name: 'X Key' is not a valid header name"),
        (lambda: APIKeyAuth("k", header_name=""), ValueError,
         r"APIKeyAuth\.header_name must be a non-empty string"),
        (lambda: APIKeyAuth(5),  # type: ignore[arg-type]
         TypeError, r"APIKeyAuth\.api_key must be a str, got int"),
        (lambda: api_key_auth("k", header_name="X:Key"), ValueError,
         r"api_key_auth\.header_name: 'X:Key' is not a valid header name"),
        (lambda: Origin("https", "h.test", 70000), ValueError,
         r"Origin\.port must be >= 0 and <= 65535, got 70000"),
        (lambda: Origin("https", "h.test", "443"),  # type: ignore[arg-type]
         TypeError, r"Origin\.port must be an int"),
        (lambda: Origin("", "h.test", 443), ValueError, r"Origin\.scheme must be a non-empty"),
        (lambda: Origin("https", None, 443),  # type: ignore[arg-type]
         TypeError, r"Origin\.host must be a str"),
        (lambda: APIResponse("not a response"),  # type: ignore[arg-type]
         TypeError,
         r"APIResponse\.response must be an httpx\.Response"),
    ],
)  # fmt: skip
def test_other_public_classes(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    _raises(make, error, message)


def test_origins_still_behave_as_tuples() -> None:
    origin = Origin("https", "h.test", 443)
    assert origin == ("https", "h.test", 443)
    assert origin._replace(port=8443) == Origin(scheme="https", host="h.test", port=8443)
    assert CircuitBreaker().state(origin).value == "closed"
