"""Failure paths against a real HTTP server on 127.0.0.1 (uvicorn) that injects faults."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from milvus_rerank import (
    HTTPReranker,
    InvalidResponseError,
    ProviderUnavailableError,
    RateLimitError,
)
from milvus_rerank.serve import BackgroundServer
from tests.fakes import CORRUPTIONS, FaultPlan, fake_score, make_app
from tests.providers.specs import SPECS

QUERY = "milvus vector database search"
DOCS = [
    f"document {i} about " + ("milvus vector search" if i % 5 == 0 else "cooking")
    for i in range(40)
]


def expected(docs: list[str], top_n: int | None = None) -> list[int]:
    order = sorted(range(len(docs)), key=lambda i: (-fake_score(QUERY, docs[i]), i))
    return order if top_n is None else order[:top_n]


@pytest.fixture
def plan() -> FaultPlan:
    return FaultPlan()


@pytest.fixture
def server(plan: FaultPlan) -> Iterator[BackgroundServer]:
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # injected resets log tracebacks
    with BackgroundServer(make_app(plan)) as running:
        yield running


def reranker(provider: str, server: BackgroundServer, **kwargs: Any) -> HTTPReranker:
    spec = SPECS[provider]
    path_root = {"cohere": "/v2", "voyage": "/v1", "jina": "/v1"}.get(provider, "")
    options = {**spec.kwargs, "api_key": "test-key", "base_url": server.url + path_root, **kwargs}
    instance = spec.cls(**options)
    instance.backoff_base = 0.01
    return instance


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
    provider: str, script: list[str], plan: FaultPlan, server: BackgroundServer
) -> None:
    plan.script = list(script)
    with reranker(provider, server, max_batch=16, timeout=5.0) as r:
        results = r.rerank(QUERY, DOCS, top_n=10)
    assert [x.index for x in results] == expected(DOCS, 10)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_async_transient_faults_are_retried(
    provider: str, plan: FaultPlan, server: BackgroundServer
) -> None:
    plan.script = ["503", "reset", "429", "502"]
    async with reranker(provider, server, max_batch=8) as r:
        results = await r.arerank(QUERY, DOCS)
    assert [x.index for x in results] == expected(DOCS)
    assert sorted(x.index for x in results) == list(range(len(DOCS)))  # nothing lost or doubled


def test_slow_responses_time_out_and_are_retried(plan: FaultPlan, server: BackgroundServer) -> None:
    plan.script = ["slow"]
    plan.slow_seconds = 1.0
    with reranker("jina", server, timeout=0.3) as r:
        started = time.monotonic()
        results = r.rerank(QUERY, DOCS[:5])
    assert [x.index for x in results] == expected(DOCS[:5])
    assert time.monotonic() - started < 1.0
    assert plan.counts["slow"] == 1 and plan.counts["ok"] == 1


def test_retries_stop_at_the_deadline(plan: FaultPlan, server: BackgroundServer) -> None:
    plan.script = ["slow"] * 20
    plan.slow_seconds = 0.5
    with reranker("vllm", server, timeout=0.25, deadline=1.0, max_retries=50) as r:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError):
            r.rerank(QUERY, DOCS[:5])
    assert time.monotonic() - started < 1.6


def test_rate_limit_with_retry_after_is_waited_out(
    plan: FaultPlan, server: BackgroundServer
) -> None:
    plan.script = ["429"]
    plan.retry_after = "1"
    with reranker("cohere", server) as r:
        started = time.monotonic()
        assert [x.index for x in r.rerank(QUERY, DOCS[:6])] == expected(DOCS[:6])
    assert time.monotonic() - started >= 1.0


def test_persistent_rate_limit_is_a_rate_limit_error(
    plan: FaultPlan, server: BackgroundServer
) -> None:
    plan.script = ["429"] * 10
    with reranker("voyage", server, max_retries=2) as r:
        with pytest.raises(RateLimitError) as info:
            r.rerank(QUERY, DOCS[:3])
    assert info.value.request_id == "req-fault-1"
    assert plan.counts["429"] == 3


@pytest.mark.parametrize(
    "fault",
    ["html", "gzip_garbage", "truncated", *CORRUPTIONS],
)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_lying_answers_from_a_real_server_never_rank(
    provider: str, fault: str, plan: FaultPlan, server: BackgroundServer
) -> None:
    plan.script = [fault]
    with reranker(provider, server) as r:
        with pytest.raises(InvalidResponseError):
            r.rerank(QUERY, DOCS[:6])
    assert plan.counts[fault] == 1 and sum(plan.counts.values()) == 1  # never retried


async def test_chunks_and_queries_run_concurrently(
    plan: FaultPlan, server: BackgroundServer
) -> None:
    plan.latency = 0.2
    async with reranker("vllm", server, max_batch=4) as r:
        started = time.monotonic()
        results = await asyncio.gather(*(r.arerank(QUERY, DOCS[:16]) for _ in range(8)))
        elapsed = time.monotonic() - started
    assert all([x.index for x in res] == expected(DOCS[:16]) for res in results)
    assert len(plan.requests) == 32
    assert plan.max_in_flight >= 16
    assert elapsed < 32 * 0.2 / 4  # far from sequential


def test_no_document_is_lost_or_doubled_across_chunks(
    plan: FaultPlan, server: BackgroundServer
) -> None:
    docs = [f"doc {i} " + "milvus " * (i % 4) for i in range(257)]
    plan.script = ["503", "reset", "ok", "429", "ok", "500"]
    with reranker("tei", server, max_client_batch_size=32) as r:
        results = r.rerank(QUERY, docs)
    assert sorted(x.index for x in results) == list(range(257))
    assert [x.index for x in results] == expected(docs)
    sent = [d for body in plan.requests for d in body["texts"]]
    assert sorted(set(sent)) == sorted(set(docs))


async def test_cancelling_a_query_cancels_its_requests(
    plan: FaultPlan, server: BackgroundServer
) -> None:
    plan.latency = 2.0
    async with reranker("jina", server, max_batch=5) as r:
        task = asyncio.create_task(r.arerank(QUERY, DOCS[:20]))
        await asyncio.sleep(0.3)
        assert plan.in_flight == 4
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - cancelled_at < 0.5
        for _ in range(50):
            if plan.in_flight == 0:
                break
            await asyncio.sleep(0.02)
    assert plan.in_flight == 0  # the server saw every chunk request go away
    assert plan.disconnects == 4
