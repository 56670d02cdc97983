"""FallbackReranker over real HTTP rerankers and the loopback fault server (tests/fakes.py)."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import pytest

from milvus_rerank import (
    AllRerankersFailedError,
    AuthenticationError,
    FallbackReranker,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    Usage,
)
from tests.fakes import FaultPlan, FaultServer, api_reranker, fake_score, fast_retry

QUERY = "milvus vector database search"
DOCS = [f"doc {i} about " + ("milvus vector search" if i % 3 == 0 else "bread") for i in range(9)]
KEY = "sk-live-" + "Zx7Yw6Vu" * 4


def expected(docs: list[str]) -> list[int]:
    return sorted(range(len(docs)), key=lambda i: (-fake_score(QUERY, docs[i]), i))


def chain(server: FaultServer, **options: object) -> FallbackReranker:
    """vLLM first (one retry), then Jina, each keyed; both on the fault server."""
    primary = api_reranker(
        "vllm", server.url, api_key=KEY, retry=fast_retry(max_retries=1), timeout=0.3
    )
    secondary = api_reranker("jina", server.url, api_key=KEY, retry=fast_retry(max_retries=0))
    return FallbackReranker([primary, secondary], **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("script", "error"),
    [
        (["503", "503"], ProviderUnavailableError),
        (["429", "429"], RateLimitError),
        (["reset", "reset"], ProviderUnavailableError),
        (["slow", "slow"], ProviderUnavailableError),  # past the 0.3 s timeout, twice
        (["nan_score"], ProviderError),  # InvalidResponseError: never retried
    ],
)
def test_the_secondary_answers_when_the_primary_fails(
    script: list[str],
    error: type[Exception],
    fault_plan: FaultPlan,
    fault_server: FaultServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fault_plan.script = list(script)
    fault_plan.slow_seconds = 1.0
    with chain(fault_server) as fallback, caplog.at_level(logging.WARNING):
        response = fallback.rerank_response(QUERY, DOCS)
    assert [r.index for r in response.results] == expected(DOCS)
    assert response.answered_by == "jina:jina-reranker-v2-base-multilingual"
    assert response.reranker is fallback.rerankers[1]
    (failure,) = response.failures
    assert isinstance(failure, error) and failure.provider == "vllm"
    assert response.usage == Usage(tokens=10, requests=1)  # the secondary's usage only
    assert "rerankers[1] jina:jina-reranker-v2-base-multilingual answered after" in caplog.text
    assert KEY not in caplog.text
    assert len(fault_plan.requests) == len(script) + 1


def test_retry_after_is_waited_out_before_falling_through(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.script = ["429", "429"]
    fault_plan.retry_after = "0.3"
    with chain(fault_server) as fallback:
        started = time.monotonic()
        response = fallback.rerank_response(QUERY, DOCS)
    assert time.monotonic() - started >= 0.3  # the primary's one retry waited as asked
    (failure,) = response.failures
    assert isinstance(failure, RateLimitError) and failure.retry_after == 0.3


async def test_async_falls_through_too(fault_plan: FaultPlan, fault_server: FaultServer) -> None:
    fault_plan.script = ["502", "500"]
    async with chain(fault_server) as fallback:
        response = await fallback.arerank_response(QUERY, DOCS, top_n=3)
    assert [r.index for r in response.results] == expected(DOCS)[:3]
    assert response.answered_by.startswith("jina:")
    assert [e.status_code for e in response.failures] == [500]  # type: ignore[attr-defined]


def test_a_wrong_key_is_not_a_fallback(fault_plan: FaultPlan, fault_server: FaultServer) -> None:
    fault_plan.script = ["401"]
    with chain(fault_server) as fallback, pytest.raises(AuthenticationError) as info:
        fallback.rerank(QUERY, DOCS)
    assert len(fault_plan.requests) == 1 and KEY not in str(info.value)
    fault_plan.script = ["401"]
    with chain(fault_server, fall_through_on=AuthenticationError) as fallback:
        assert fallback.rerank_response(QUERY, DOCS).answered_by.startswith("jina:")


def test_all_failing_names_each_reranker_and_no_key(
    fault_plan: FaultPlan, fault_server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    fault_plan.script = ["503", "503", "429"]
    with chain(fault_server) as fallback, caplog.at_level(logging.DEBUG):
        with pytest.raises(AllRerankersFailedError) as info:
            fallback.rerank(QUERY, DOCS)
    assert str(info.value) == (
        "every reranker failed: rerankers[0] vllm:tiny-ce: ProviderUnavailableError (HTTP 503); "
        "rerankers[1] jina:jina-reranker-v2-base-multilingual: RateLimitError (HTTP 429)"
    )
    assert [type(e) for e in info.value.failures] == [ProviderUnavailableError, RateLimitError]
    for text in (str(info.value), repr(info.value), caplog.text, repr(fallback)):
        assert KEY not in text


async def test_fail_open_over_real_http(
    fault_plan: FaultPlan, fault_server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    fault_plan.script = ["503", "503", "503"]
    async with chain(fault_server, fail_open=True) as fallback:
        with caplog.at_level(logging.WARNING, logger="milvus_rerank.fallback"):
            response = await fallback.arerank_response(QUERY, DOCS, top_n=4)
    assert not response.reranked and response.reranker is fallback
    assert [r.index for r in response.results] == [0, 1, 2, 3]
    assert all(math.isnan(r.score) for r in response.results)
    assert len(response.failures) == 2 and "fail_open" in caplog.text


async def test_cancelling_stops_the_chain_and_its_requests(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.latency = 2.0
    async with chain(fault_server) as fallback:
        fallback.rerankers[0].timeout = 10.0  # type: ignore[attr-defined]
        task = asyncio.create_task(fallback.arerank(QUERY, DOCS))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            if fault_plan.in_flight == 0:
                break
            await asyncio.sleep(0.02)
    assert len(fault_plan.requests) == 1  # the secondary was never asked
    assert fault_plan.in_flight == 0 and fault_plan.disconnects == 1
