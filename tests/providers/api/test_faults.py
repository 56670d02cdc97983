"""Failure paths against a real HTTP server on 127.0.0.1 (uvicorn) that injects faults."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time

import pytest

from milvus_rerank import (
    InvalidResponseError,
    ProviderUnavailableError,
    RateLimitError,
    RetryPolicy,
    VLLMReranker,
)
from tests.fakes import (
    CORRUPTIONS,
    FaultPlan,
    FaultServer,
    api_reranker,
    fake_score,
    fast_retry,
)
from tests.providers.api.specs import SPECS

QUERY = "milvus vector database search"
DOCS = [
    f"document {i} about " + ("milvus vector search" if i % 5 == 0 else "cooking")
    for i in range(40)
]


def expected(docs: list[str], top_n: int | None = None) -> list[int]:
    order = sorted(range(len(docs)), key=lambda i: (-fake_score(QUERY, docs[i]), i))
    return order if top_n is None else order[:top_n]


PROVIDERS = sorted(SPECS)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    "script",
    [
        ["503", "503"],
        ["429", "500"],
        ["502", "ok"],
        ["408", "409"],
        ["reset"],
        ["slow"],
        ["reset", "reset"],
    ],
)
def test_transient_faults_are_retried_to_the_exact_ranking(
    provider: str, script: list[str], fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.script = list(script)
    with api_reranker(provider, fault_server.url, max_batch=16, timeout=5.0) as r:
        results = r.rerank(QUERY, DOCS, top_n=10)
    assert [x.index for x in results] == expected(DOCS, 10)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_async_transient_faults_are_retried(
    provider: str, fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.script = ["503", "reset", "429", "502"]
    async with api_reranker(provider, fault_server.url, max_batch=8) as r:
        results = await r.arerank(QUERY, DOCS)
    assert [x.index for x in results] == expected(DOCS)
    assert sorted(x.index for x in results) == list(range(len(DOCS)))  # nothing lost or doubled


def test_slow_responses_time_out_and_are_retried(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.script = ["slow"]
    fault_plan.slow_seconds = 1.0
    with api_reranker("jina", fault_server.url, timeout=0.3) as r:
        started = time.monotonic()
        results = r.rerank(QUERY, DOCS[:5])
    assert [x.index for x in results] == expected(DOCS[:5])
    assert time.monotonic() - started < 1.0
    assert fault_plan.counts["slow"] == 1 and fault_plan.counts["ok"] == 1


def test_retries_stop_at_the_deadline(fault_plan: FaultPlan, fault_server: FaultServer) -> None:
    fault_plan.script = ["slow"] * 20
    fault_plan.slow_seconds = 0.5
    with api_reranker(
        "vllm", fault_server.url, timeout=0.25, retry=fast_retry(deadline=1.0, max_retries=50)
    ) as r:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError):
            r.rerank(QUERY, DOCS[:5])
    assert time.monotonic() - started < 1.6


def test_rate_limit_with_retry_after_is_waited_out(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.script = ["429"]
    fault_plan.retry_after = "1"
    with api_reranker("cohere", fault_server.url) as r:
        started = time.monotonic()
        assert [x.index for x in r.rerank(QUERY, DOCS[:6])] == expected(DOCS[:6])
    assert time.monotonic() - started >= 1.0


def test_persistent_rate_limit_is_a_rate_limit_error(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.script = ["429"] * 10
    with api_reranker("voyage", fault_server.url, retry=fast_retry(max_retries=2)) as r:
        with pytest.raises(RateLimitError) as info:
            r.rerank(QUERY, DOCS[:3])
    assert info.value.request_id == "req-fault-1"
    assert fault_plan.counts["429"] == 3


@pytest.mark.parametrize(
    "fault",
    ["html", "gzip_garbage", "truncated", *CORRUPTIONS],
)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_lying_answers_from_a_real_server_never_rank(
    provider: str, fault: str, fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.script = [fault]
    with api_reranker(provider, fault_server.url) as r:
        with pytest.raises(InvalidResponseError):
            r.rerank(QUERY, DOCS[:6])
    assert fault_plan.counts[fault] == 1 and sum(fault_plan.counts.values()) == 1  # never retried


async def test_chunks_and_queries_run_concurrently(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.latency = 0.2
    async with api_reranker("vllm", fault_server.url, max_batch=4) as r:
        started = time.monotonic()
        results = await asyncio.gather(*(r.arerank(QUERY, DOCS[:16]) for _ in range(8)))
        elapsed = time.monotonic() - started
    assert all([x.index for x in res] == expected(DOCS[:16]) for res in results)
    assert len(fault_plan.requests) == 32
    assert fault_plan.max_in_flight >= 16
    assert elapsed < 32 * 0.2 / 4  # far from sequential


def test_no_document_is_lost_or_doubled_across_chunks(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    docs = [f"doc {i} " + "milvus " * (i % 4) for i in range(257)]
    fault_plan.script = ["503", "reset", "ok", "429", "ok", "500"]
    with api_reranker("tei", fault_server.url, max_client_batch_size=32) as r:
        results = r.rerank(QUERY, docs)
    assert sorted(x.index for x in results) == list(range(257))
    assert [x.index for x in results] == expected(docs)
    sent = [d for body in fault_plan.requests for d in body["texts"]]
    assert sorted(set(sent)) == sorted(set(docs))


async def test_cancelling_a_query_cancels_its_requests(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.latency = 2.0
    async with api_reranker("jina", fault_server.url, max_batch=5) as r:
        task = asyncio.create_task(r.arerank(QUERY, DOCS[:20]))
        await asyncio.sleep(0.3)
        assert fault_plan.in_flight == 4
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - cancelled_at < 0.5
        for _ in range(50):
            if fault_plan.in_flight == 0:
                break
            await asyncio.sleep(0.02)
    assert fault_plan.in_flight == 0  # the server saw every chunk request go away
    assert fault_plan.disconnects == 4


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_chunks_failing_together_leave_no_unretrieved_task_exception(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every chunk's failure is retrieved: asyncio logs no "never retrieved" traceback."""
    with socket.socket() as probe:  # a port with nothing listening: the upstream is down
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}"
    reranker = VLLMReranker(base_url=down, max_batch=5, retry=RetryPolicy(max_retries=0))
    docs = [f"document {i}" for i in range(20)]
    caplog.set_level(logging.ERROR, logger="asyncio")
    for _ in range(3):
        with pytest.raises(ProviderUnavailableError, match="could not be reached"):
            if mode == "async":
                await reranker.arerank(QUERY, docs)
            else:
                await asyncio.to_thread(reranker.rerank, QUERY, docs)
    await reranker.aclose()
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.05)  # the private loop runs its exception handler, if any
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert unretrieved == []
