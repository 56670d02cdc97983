"""Faults under load, thread safety and memory: exact rankings or typed errors, nothing lost."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from milvus_rerank import (
    BGEReranker,
    CrossEncoderReranker,
    ProviderError,
    Reranker,
    RetryPolicy,
    VLLMReranker,
)
from tests.fakes import FaultPlan, FaultServer, fake_score

QUERIES = 200
DEADLINE = 8.0

#: Outside the unit tier: loopback servers, faults or load.
pytestmark = pytest.mark.slow


def _sockets_to(port: int) -> int:
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def test_200_concurrent_queries_under_injected_faults(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    """20% 503, 10% 429 with Retry-After, 5% resets, 5% slow answers, on every request."""
    plan = fault_plan
    plan.weights = {"503": 0.20, "429": 0.10, "reset": 0.05, "slow": 0.05}
    plan.retry_after = "0.05"
    plan.slow_seconds = 1.5
    plan.latency = 0.005
    plan.reseed(7)
    docs_of = {
        q: [f"query {q} doc {i} " + "milvus " * ((i * 7 + q) % 5) for i in range(24)]
        for q in range(QUERIES)
    }
    tasks_before = len(asyncio.all_tasks())
    sockets_before = _sockets_to(fault_server.port)  # other tests' rerankers may keep some
    reranker = VLLMReranker(
        base_url=fault_server.url,
        max_batch=8,
        timeout=1.0,  # an answer slowed by a loaded machine is not a fault
        retry=RetryPolicy(max_retries=6, backoff_base=0.02, deadline=DEADLINE),
    )

    async def one(q: int) -> tuple[int, object, float]:
        started = time.monotonic()
        try:
            result: object = await reranker.arerank(f"milvus {q}", docs_of[q])
        except ProviderError as exc:
            result = exc
        return q, result, time.monotonic() - started

    started = time.monotonic()
    outcomes = await asyncio.gather(*(one(q) for q in range(QUERIES)))
    elapsed = time.monotonic() - started
    await reranker.aclose()
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) == tasks_before  # no task left behind
    assert _sockets_to(fault_server.port) <= sockets_before  # no connection left open

    exact = errors = lost = duplicated = 0
    for q, result, took in outcomes:
        assert took <= DEADLINE + 1.0  # every query ends within its deadline
        if isinstance(result, ProviderError):
            errors += 1
            continue
        assert isinstance(result, list)
        indices = Counter(r.index for r in result)
        lost += len(set(range(24)) - set(indices))
        duplicated += sum(c - 1 for c in indices.values())
        docs = docs_of[q]
        want = sorted(range(24), key=lambda i: (-fake_score(f"milvus {q}", docs[i]), i))
        assert [r.index for r in result] == want
        exact += 1
    faults = sum(n for name, n in plan.counts.items() if name != "ok")
    print(
        f"\nload: {QUERIES} queries, {sum(plan.counts.values())} requests, {faults} faults "
        f"injected {dict(plan.counts)}; {exact} exact, {errors} typed errors, {lost} lost, "
        f"{duplicated} duplicated, {elapsed:.1f}s"
    )
    assert lost == 0 and duplicated == 0
    assert exact + errors == QUERIES
    assert faults >= 100 and exact >= QUERIES * 0.9


@pytest.mark.parametrize("kind", ["ce", "bge"])
def test_one_local_reranker_shared_by_8_threads(tiny_models: dict[str, Path], kind: str) -> None:
    cls = CrossEncoderReranker if kind == "ce" else BGEReranker
    reranker: Reranker = cls(str(tiny_models[kind]))
    queries = [f"query {i} about milvus and paris" for i in range(16)]
    docs = [f"document {j} " + "milvus paris " * (j % 4) for j in range(12)]
    serial = {q: reranker.rerank(q, docs) for q in queries}
    seen: dict[tuple[int, str], object] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for q in queries:
                seen[(t, q)] = reranker.rerank(q, docs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (_, q), results in seen.items():
        assert [r.index for r in results] == [r.index for r in serial[q]]  # type: ignore[attr-defined]
        assert [r.score for r in results] == pytest.approx([r.score for r in serial[q]], abs=1e-5)  # type: ignore[attr-defined]


def test_10000_sequential_calls_keep_memory_flat(make_reranker: Callable[..., Reranker]) -> None:
    """RSS after 10,000 more calls stays within 32 MiB of where it was after a warm-up."""
    reranker = make_reranker("cross-encoder")
    docs = ["milvus is a vector database", "paris is in france"]
    for _ in range(500):
        reranker.rerank("what is milvus", docs)
    gc.collect()
    before = psutil.Process().memory_info().rss
    for i in range(10_000):
        reranker.rerank(f"what is milvus {i % 7}", docs)
    gc.collect()
    grown = (psutil.Process().memory_info().rss - before) / 2**20
    print(f"\nrss growth over 10,000 calls: {grown:.1f} MiB")
    assert grown < 32
