"""HTTP concurrency against a loopback server that answers after 100 ms.

1,000 documents through a provider limited to 100 per request, and 32 concurrent queries,
against one request's latency. The peers (langchain-cohere, llama-index's Cohere reranker)
send chunks and queries one after another; that behaviour is measured beside ours by the same
client with ``max_concurrency=1``, pointed at the same server.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tests.fakes import FaultPlan, make_app

from benchmarks.common import Row
from milvus_rerank import VLLMReranker
from milvus_rerank.app.serve.testing import BackgroundServer

LATENCY = 0.1


def _docs(n: int) -> list[str]:
    return [f"document {i} about milvus" if i % 9 == 0 else f"document {i}" for i in range(n)]


async def _measure(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    async with VLLMReranker(base_url=url, max_batch=100) as ours:
        await ours.arerank("milvus", _docs(10))  # connect once
        started = time.perf_counter()
        await ours.arerank("milvus", _docs(100))
        out["one"] = time.perf_counter() - started
        started = time.perf_counter()
        await ours.arerank("milvus", _docs(1000))
        out["chunked"] = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(ours.arerank(f"milvus {i}", _docs(100)) for i in range(32)))
        out["queries"] = time.perf_counter() - started
    async with VLLMReranker(base_url=url, max_batch=100, max_concurrency=1) as sequential:
        await sequential.arerank("milvus", _docs(10))
        started = time.perf_counter()
        await sequential.arerank("milvus", _docs(1000))
        out["chunked_seq"] = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(sequential.arerank(f"milvus {i}", _docs(100)) for i in range(32)))
        out["queries_seq"] = time.perf_counter() - started
    return out


def run() -> list[Row]:
    """The HTTP rows."""
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    with BackgroundServer(make_app(FaultPlan(latency=LATENCY))) as server:
        t = asyncio.run(_measure(server.url))
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    return [
        Row.at_most(
            "1,000 docs, 100 per request (10 chunks) vs one request",
            ms(t["chunked"]),
            ms(t["one"]),
            t["chunked"] / t["one"],
            2,
        ),
        Row.report(
            "  same, sequential chunks (the peers' behaviour)",
            ms(t["chunked_seq"]),
            ms(t["one"]),
            t["chunked_seq"] / t["one"],
        ),
        Row.at_most(
            "32 concurrent arerank queries vs one query",
            ms(t["queries"]),
            ms(t["one"]),
            t["queries"] / t["one"],
            2,
        ),
        Row.report(
            "  same, one request at a time (the peers' behaviour)",
            ms(t["queries_seq"]),
            ms(t["one"]),
            t["queries_seq"] / t["one"],
        ),
    ]
