"""The shared checks of ``milvus_rerank.core.checks``: one home, one rule each."""

from __future__ import annotations

import pytest

from milvus_rerank import ConfigurationError
from milvus_rerank.core.checks import (
    clip,
    int_at_least,
    is_loopback,
    json_containers,
    json_value_bound,
    positive_number,
)


@pytest.mark.parametrize("value", [1, 0.5, 10**400, 2.0])
def test_positive_numbers_pass(value: object) -> None:
    positive_number("limit", value)


def test_a_huge_int_is_a_positive_int() -> None:
    positive_number("limit", 10**400, kind=int)


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), True, "3", None, -(10**400)])
def test_non_positive_numbers_are_named(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"limit must be a positive float, got"):
        positive_number("limit", value)


def test_an_int_check_refuses_floats_and_names_the_owner() -> None:
    with pytest.raises(
        ConfigurationError, match=r"^serve: workers must be a positive int, got 2.5"
    ):
        positive_number("workers", 2.5, owner="serve", kind=int)
    with pytest.raises(ConfigurationError, match=r"max_retries must be an int >= 0, got -1"):
        int_at_least("max_retries", -1, 0)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("api.localhost", True),
        ("127.0.0.2", True),
        ("[::1]", True),
        ("ip6-loopback", True),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_clip() -> None:
    assert clip("abc", 5) == "abc"
    assert clip("abcdefgh", 5) == "ab..."
    assert clip("a \n b   c", 20, one_line=True) == "a b c"


def test_json_bounds_count_only_outside_strings_past_the_bound() -> None:
    body = b'{"a": ["[[[", {"b": 1}]}'
    assert json_value_bound(body) >= 3
    assert json_containers(body, 100) == body.count(b"[") + body.count(b"{")  # cheap count
    assert json_containers(body, 1) == 3  # exact: brackets inside strings are not containers
