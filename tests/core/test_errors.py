"""The package's errors survive pickling and deep copies (process pools, dataclasses.asdict)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from milvus_rerank import FallbackReranker, Reranker
from milvus_rerank.core.errors import (
    AllRerankersFailedError,
    AuthenticationError,
    ConfigurationError,
    InvalidInputError,
    InvalidResponseError,
    MissingDependencyError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    RerankError,
)

MEMBER = ProviderUnavailableError("down", provider="vllm", status_code=503, request_id="r1")

ERRORS: list[RerankError] = [
    RerankError("base"),
    ConfigurationError("bad option"),
    MissingDependencyError("LangChain", "langchain", "langchain-core"),
    InvalidInputError("bad query"),
    ProviderError("failed", provider="cohere", status_code=400, request_id="abc"),
    AuthenticationError("refused", provider="cohere", status_code=401),
    RateLimitError("slow down", provider="jina", request_id="x", retry_after=2.5),
    MEMBER,
    InvalidResponseError("garbage", provider="tei", status_code=200),
    AllRerankersFailedError(("vllm", "kw"), (MEMBER, TimeoutError("late"))),
]


def _same(a: BaseException, b: BaseException) -> None:
    assert type(a) is type(b)
    assert str(a) == str(b)
    assert a.args == b.args
    assert set(vars(a)) == set(vars(b))
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, tuple) and value and isinstance(value[0], BaseException):
            assert len(value) == len(other)
            for x, y in zip(value, other, strict=True):
                _same(x, y)
        else:
            assert other == value, name


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_message_and_attributes(error: RerankError) -> None:
    _same(error, pickle.loads(pickle.dumps(error)))  # noqa: S301 - our own bytes


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_deep_copies(error: RerankError) -> None:
    copied = copy.deepcopy(error)
    _same(error, copied)
    assert copied is not error


def test_a_rate_limit_keeps_its_retry_after() -> None:
    error = pickle.loads(pickle.dumps(ERRORS[6]))  # noqa: S301 - our own bytes
    assert isinstance(error, RateLimitError)
    assert (error.provider, error.status_code, error.retry_after) == ("jina", 429, 2.5)


class _Down(Reranker):
    def _score(self, query: str, documents: list[str]) -> list[float]:
        raise MEMBER


def test_a_failed_open_response_goes_through_asdict() -> None:
    response = FallbackReranker([_Down()], fail_open=True).rerank_response("q", ["a", "b"])
    as_dict = dataclasses.asdict(response)
    _same(as_dict["failures"][0], MEMBER)


def _fail() -> None:
    raise AllRerankersFailedError(("vllm",), (MEMBER,))


def test_an_error_crosses_a_process_pool() -> None:
    with ProcessPoolExecutor(1) as pool, pytest.raises(AllRerankersFailedError) as caught:
        pool.submit(_fail).result()
    _same(caught.value.failures[0], MEMBER)
