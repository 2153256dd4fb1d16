"""RetryConfig: validated at construction, immutable, normalised."""

from __future__ import annotations

import dataclasses
import math

import pytest

from httpx_resilience import DEFAULT_RETRY_METHODS, DEFAULT_RETRY_STATUSES, RetryConfig


def test_defaults() -> None:
    config = RetryConfig()
    assert config.max_retries == 3
    assert config.jitter == 1.0
    assert config.retry_on_status == frozenset({429, 500, 502, 503, 504}) == DEFAULT_RETRY_STATUSES
    assert (
        config.retry_methods
        == frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
        == DEFAULT_RETRY_METHODS
    )
    assert config.respect_retry_after is True
    assert config.total_timeout is None
    assert config.budget_ratio == 0.2


def test_immutable() -> None:
    config = RetryConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_retries = 5  # type: ignore[misc]


@pytest.mark.parametrize(("jitter", "expected"), [(True, 1.0), (False, 0.0), (0.5, 0.5), (1, 1.0)])
def test_jitter_accepts_bools_and_fractions(jitter: float | bool, expected: float) -> None:
    assert RetryConfig(jitter=jitter).jitter == expected


def test_collections_are_normalised() -> None:
    config = RetryConfig(retry_on_status=[503, 503, 429], retry_methods=["get", "Post"])
    assert config.retry_on_status == frozenset({503, 429})
    assert config.retry_methods == frozenset({"GET", "POST"})
    assert hash(config) == hash(
        RetryConfig(retry_on_status={429, 503}, retry_methods={"GET", "POST"})
    )


def test_replace_validates() -> None:
    config = RetryConfig().replace(max_retries=7)
    assert config.max_retries == 7
    with pytest.raises(ValueError, match="max_retries"):
        RetryConfig().replace(max_retries=-1)


@pytest.mark.parametrize(
    ("kwargs", "field", "error"),
    [
        ({"max_retries": -1}, "max_retries must be >= 0", ValueError),
        ({"max_retries": 1.5}, "max_retries must be an int", TypeError),
        ({"max_retries": True}, "max_retries must be an int", TypeError),
        ({"base_delay": -0.1}, "base_delay must be >= 0", ValueError),
        ({"base_delay": math.nan}, "base_delay must be a finite number", ValueError),
        ({"base_delay": math.inf}, "base_delay must be a finite number", ValueError),
        ({"base_delay": "1"}, "base_delay must be a number", TypeError),
        ({"backoff_factor": 0.5}, "backoff_factor must be >= 1.0", ValueError),
        ({"max_delay": -1.0}, "max_delay must be >= 0", ValueError),
        ({"base_delay": 5.0, "max_delay": 1.0}, "max_delay must be >= base_delay", ValueError),
        ({"jitter": 1.5}, r"jitter must be >= 0.0 and <= 1.0", ValueError),
        ({"jitter": -0.1}, "jitter must be >= 0.0", ValueError),
        ({"retry_after_cap": -1}, "retry_after_cap must be >= 0", ValueError),
        ({"total_timeout": 0}, "total_timeout must be > 0 or None", ValueError),
        ({"total_timeout": -3}, "total_timeout must be >= 0", ValueError),
        ({"total_timeout": math.nan}, "total_timeout must be a finite number", ValueError),
        ({"budget_ratio": -0.2}, "budget_ratio must be >= 0", ValueError),
        ({"budget_min_per_second": -1}, "budget_min_per_second must be >= 0", ValueError),
        ({"budget_window": 0}, "budget_window must be >= 0.001", ValueError),
        ({"retry_on_status": [99]}, "retry_on_status must hold status codes 100-599", ValueError),
        ({"retry_on_status": ["503"]}, "retry_on_status must hold status codes", ValueError),
        ({"retry_on_status": 503}, "retry_on_status must be a collection", TypeError),
        ({"retry_methods": "GET"}, "retry_methods must be a collection", TypeError),
        ({"retry_methods": ["GE T"]}, "retry_methods must hold method names", ValueError),
        ({"respect_retry_after": "yes"}, "respect_retry_after must be a bool", TypeError),
    ],
)
def test_invalid_values_name_the_field(
    kwargs: dict[str, object], field: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=f"^RetryConfig.{field}"):
        RetryConfig(**kwargs)  # type: ignore[arg-type]


def test_retries_can_be_turned_off() -> None:
    assert RetryConfig(max_retries=0).max_retries == 0
    assert RetryConfig(budget_ratio=None).budget_ratio is None
