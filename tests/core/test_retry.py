"""RetryPolicy: validated at construction, and one pure decision for every retry."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from milvus_rerank import (
    ConfigurationError,
    ProviderUnavailableError,
    RateLimitError,
    RetryPolicy,
)
from milvus_rerank.core.retry import DEFAULT_RETRY_STATUSES, FailedAttempt


def failure(status: int | None = 503, **fields: Any) -> FailedAttempt:
    error = RateLimitError if status == 429 else ProviderUnavailableError
    return FailedAttempt(error, f"HTTP {status}", "fake", status_code=status, **fields)


def test_defaults_retry_408_409_429_and_5xx_only() -> None:
    policy = RetryPolicy()
    assert {408, 409, 429, 500, 503, 599} <= policy.retry_statuses == DEFAULT_RETRY_STATUSES
    assert not {400, 401, 403, 404, 422} & policy.retry_statuses
    assert policy.retries(failure(None, transport="connect"))
    assert policy.retries(failure(None, transport="timeout"))
    assert not policy.retries(failure(400))


def test_it_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().max_retries = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"backoff_base": -0.1}, "backoff_base"),
        ({"backoff_base": 2.0, "backoff_max": 1.0}, "backoff_max"),
        ({"jitter": 1.5}, "jitter"),
        ({"retry_statuses": {503, 700}}, "retry_statuses"),
        ({"retry_statuses": "503"}, "retry_statuses"),
        ({"retry_timeouts": "yes"}, "retry_timeouts"),
        ({"max_retry_after": float("nan")}, "max_retry_after"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": float("inf")}, "deadline"),
    ],
)
def test_bad_values_are_named(fields: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError, match=f"RetryPolicy: {name} must be") as info:
        RetryPolicy(**fields)
    bad = fields[name]
    shown = 700 if name == "retry_statuses" and isinstance(bad, set) else bad  # the one element
    assert f"got {shown!r}" in str(info.value)


def test_backoff_grows_caps_and_jitters_down_only() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=5.0, jitter=0.5)
    assert [policy.backoff(n, rand=lambda: 0.0) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.backoff(1, rand=lambda: 1.0) == 1.0  # half of 2.0 at most jitter
    assert RetryPolicy(jitter=0.0).backoff(0, rand=lambda: 0.99) == 0.5


def test_decide_waits_then_gives_up_with_the_error_built_once() -> None:
    policy = RetryPolicy(max_retries=2, backoff_base=0.1, backoff_max=1.0, jitter=0.0)
    assert policy.decide(failure(), 0, 0.0) == pytest.approx(0.1)
    assert policy.decide(failure(), 1, 0.0) == pytest.approx(0.2)
    error = policy.decide(failure(), 2, 0.0)
    assert isinstance(error, ProviderUnavailableError)
    assert str(error) == "HTTP 503" and error.status_code == 503 and error.provider == "fake"


def test_not_retried_kinds_give_up_at_once() -> None:
    no_connect = RetryPolicy(retry_connection_errors=False)
    assert isinstance(no_connect.decide(failure(None, transport="connect"), 0, 0.0), Exception)
    assert isinstance(no_connect.decide(failure(None, transport="timeout"), 0, 0.0), float)
    assert isinstance(RetryPolicy(retry_statuses=frozenset()).decide(failure(), 0, 0.0), Exception)


def test_retry_after_is_honoured_capped_or_ignored() -> None:
    asked = failure(429, retry_after=30.0)
    assert RetryPolicy().decide(asked, 0, 0.0) == 30.0
    assert RetryPolicy(max_retry_after=2.0).decide(asked, 0, 0.0) == 2.0
    ignored = RetryPolicy(honour_retry_after=False, backoff_base=0.1, jitter=0.0)
    assert ignored.decide(asked, 0, 0.0) == pytest.approx(0.1)


def test_a_wait_past_the_deadline_gives_up_with_the_final_message() -> None:
    error = RetryPolicy(deadline=10.0).decide(failure(429, retry_after=30.0), 0, 1.0)
    assert isinstance(error, RateLimitError)
    assert str(error) == "HTTP 429 (gave up: the 10s deadline is near)"
    assert error.retry_after == 30.0 and error.status_code == 429


@pytest.mark.parametrize("status", [100, 200, 204, 301, 399])
def test_statuses_that_are_not_failures_are_refused(status: int) -> None:
    with pytest.raises(ConfigurationError, match=f"from 400 to 599, got {status}"):
        RetryPolicy(retry_statuses=[status])


def test_repr_shows_status_ranges_compactly() -> None:
    text = repr(RetryPolicy())
    assert "retry_statuses={408, 409, 429, 500-599}" in text
    assert len(text) < 260
    assert "retry_statuses={}" in repr(RetryPolicy(retry_statuses=()))
    assert "{429, 500, 501, 503}" in repr(RetryPolicy(retry_statuses=[503, 429, 500, 501]))
