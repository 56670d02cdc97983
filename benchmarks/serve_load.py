"""``milvus-rerank serve`` under load: 1, 8 and 32 concurrent clients, batched or one by one.

Two workloads on the MiniLM-shaped cross-encoder: short passages (4 of about 20 words a
request, where a forward pass's fixed cost dominates and batching pays most on a CPU) and long
ones (8 of about 50 words, where the CPU is busy with the tokens themselves). Then the cost
of ``/metrics``: pairs/s with Prometheus scraping every second against none, rounds interleaved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import Row
from benchmarks.local import MINILM_SHAPE, documents
from milvus_rerank import CrossEncoderReranker
from milvus_rerank.app.serve import create_app
from milvus_rerank.app.serve.testing import BackgroundServer

REQUESTS_PER_CLIENT = 8
MIN_REQUESTS = 32  # per measurement, so one client's p99 is not one stray request
#: (name, documents a request, characters a document)
WORKLOADS = (("short passages", 4, 120), ("long passages", 8, 300))
#: The /metrics overhead: rounds of each mode (interleaved), clients, a scrape's interval.
SCRAPE_ROUNDS, SCRAPE_CLIENTS, SCRAPE_EVERY = 3, 8, 1.0


async def _load(url: str, clients: int, count: int, chars: int) -> tuple[float, float, float]:
    docs = [d[:chars] for d in documents(count, seed=3)]
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await client.post("/v1/rerank", json={"query": "warm up", "documents": docs})

        async def worker(w: int) -> None:
            for i in range(max(REQUESTS_PER_CLIENT, -(-MIN_REQUESTS // clients))):
                started = time.perf_counter()
                answer = await client.post(
                    "/v1/rerank", json={"query": f"query {w} {i} intelligence", "documents": docs}
                )
                answer.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return len(latencies) / elapsed, statistics.median(latencies), p99


def run() -> list[Row]:
    """The serve rows."""
    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    path = build_tiny_cross_encoder(Path(tempfile.mkdtemp()) / "ce", **MINILM_SHAPE)
    reranker = CrossEncoderReranker(str(path), device="cpu").load()
    rows = []
    for name, count, chars in WORKLOADS:
        rows += _rows(reranker, name, count, chars)
    rows.append(_scrape_row(reranker))
    return rows


async def _scraped_load(url: str, scrape: bool, count: int, chars: int) -> float:
    """Pairs/s of ``_load`` while a scraper reads ``/metrics`` every second (or none)."""

    async def scraper() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while True:
                (await client.get("/metrics")).raise_for_status()
                await asyncio.sleep(SCRAPE_EVERY)

    task = asyncio.ensure_future(scraper()) if scrape else None
    try:
        rps, _, _ = await _load(url, SCRAPE_CLIENTS, count, chars)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return rps * count


def _scrape_row(reranker: CrossEncoderReranker) -> Row:
    """``/metrics`` scraped every second vs never: pairs/s, medians of interleaved rounds."""
    _, count, chars = WORKLOADS[1]
    found: dict[bool, list[float]] = {True: [], False: []}
    with BackgroundServer(create_app(reranker)) as server:
        for _ in range(SCRAPE_ROUNDS):
            for scrape in (False, True):
                found[scrape].append(asyncio.run(_scraped_load(server.url, scrape, count, chars)))
    scraped, bare = statistics.median(found[True]), statistics.median(found[False])
    return Row.at_least(
        f"serve, long passages, {SCRAPE_CLIENTS} clients: /metrics scraped every second vs never",
        f"{scraped:.0f} pairs/s",
        f"{bare:.0f} pairs/s",
        scraped / bare,
        0.95,
    )


def _rows(reranker: CrossEncoderReranker, name: str, count: int, chars: int) -> list[Row]:
    rows = []
    for clients in (1, 8, 32):
        results = {}
        for mode, app in (
            ("batched", create_app(reranker, max_wait_ms=2.0, max_batch_pairs=256)),
            (
                "one at a time",
                create_app(reranker, max_wait_ms=0.0, max_batch_pairs=1, batch_workers=1),
            ),
        ):
            with BackgroundServer(app) as server:
                results[mode] = asyncio.run(_load(server.url, clients, count, chars))
        (rps, p50, p99), (rps1, p501, p991) = results["batched"], results["one at a time"]
        rows.append(
            Row(
                f"serve, {name}, {clients} clients: batched vs one request at a time",
                f"{rps:.1f} req/s (p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms)",
                f"{rps1:.1f} req/s (p50 {p501 * 1000:.0f} ms, p99 {p991 * 1000:.0f} ms)",
                rps / rps1,
                "> 1x at 8+ clients" if clients > 1 else "report",
                rps > rps1 if clients > 1 else True,
            )
        )
    return rows
