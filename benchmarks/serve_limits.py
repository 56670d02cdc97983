"""``milvus-rerank serve`` under abuse: a 25 MB request beside a small one, and 600 aborts.

The server runs in this process (``BackgroundServer`` on 127.0.0.1) over the MiniLM-shaped
cross-encoder (random weights) on the CPU, with the body and document limits raised for the
large request. RSS is this process's (server and client together), so it overstates the
server's share. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.common import Row
from milvus_rerank import CrossEncoderReranker
from milvus_rerank.serve import BackgroundServer, create_app

MIB = 1024 * 1024
SMALL = {"query": "what is milvus", "documents": ["milvus is a vector database", "cat", "paris"]}
#: (workload name, documents, characters each): 25 MB of text either way.
LARGE = (("one 25 MB document", 1, 25 * 10**6), ("1,000 documents of 25 KB", 1000, 25_000))
ABORTS = 600


class _PeakRSS:
    """Samples this process's RSS every 20 ms in a thread while in the ``with`` block."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, process.memory_info().rss)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


async def _beside_large(url: str, count: int, chars: int) -> tuple[float, float, float]:
    """(small request latency while the large one runs, the large one's time, its size)."""
    text = ("milvus vector database rerank " * (chars // 30 + 1))[:chars]
    large_body = {"query": "what is milvus", "documents": [text] * count}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        started = time.perf_counter()
        large = asyncio.ensure_future(client.post("/v1/rerank", json=large_body))
        await asyncio.sleep(0.3)  # the large body is on its way or being scored
        small_started = time.perf_counter()
        small = await client.post("/v2/rerank", json=SMALL)
        small_took = time.perf_counter() - small_started
        small.raise_for_status()
        if large.done():
            raise RuntimeError("the large request ended before the small one: nothing measured")
        answer = await large
        answer.raise_for_status()
        return small_took, time.perf_counter() - started, len(text) * count / 10**6


async def _after_aborts(url: str) -> tuple[float, int]:
    """(next request's latency after ``ABORTS`` clients gave up, how many did time out)."""
    timed_out = 0
    limits = httpx.Limits(max_connections=ABORTS + 10)
    docs = [f"document {i} about milvus " * 20 for i in range(32)]
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:

        async def leave(i: int) -> None:
            nonlocal timed_out
            try:
                await client.post(
                    "/v1/rerank", json={"query": f"query {i}", "documents": docs}, timeout=0.5
                )
            except httpx.TimeoutException:
                timed_out += 1

        await asyncio.gather(*(leave(i) for i in range(ABORTS)))
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        (await client.post("/v2/rerank", json=SMALL, timeout=60)).raise_for_status()
        return time.perf_counter() - started, timed_out


def run() -> list[Row]:
    """The serve-limits rows."""
    from benchmarks.local import MINILM_SHAPE
    from milvus_rerank.tiny import build_tiny_cross_encoder

    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    path = build_tiny_cross_encoder(Path(tempfile.mkdtemp()) / "ce", **MINILM_SHAPE)
    reranker = CrossEncoderReranker(str(path), device="cpu").load()
    app = create_app(reranker, max_body_bytes=30 * 10**6, max_batch_tokens=2048)
    rows = []
    with BackgroundServer(app) as server:
        httpx.post(server.url + "/v2/rerank", json=SMALL, timeout=60).raise_for_status()
        for name, count, chars in LARGE:
            idle = psutil.Process().memory_info().rss
            with _PeakRSS() as rss:
                small, large, mb = asyncio.run(_beside_large(server.url, count, chars))
            grew = (rss.peak - idle) / MIB
            rows.append(
                Row.at_most(
                    f"serve: small request beside a {mb:.0f} MB request ({name})",
                    f"{small * 1000:.0f} ms (large one {large:.1f} s)",
                    "1 s",
                    small,
                    1.0,
                )
            )
            rows.append(
                Row.at_most(
                    f"serve: peak RSS growth over idle, {name} (server and client)",
                    f"{grew:.0f} MiB",
                    "300 MiB",
                    grew / 300,
                    1.0,
                )
            )
        took, timed_out = asyncio.run(_after_aborts(server.url))
    rows.append(
        Row.at_most(
            f"serve: next request after {ABORTS} aborted clients ({timed_out} timed out)",
            f"{took * 1000:.0f} ms",
            "1 s",
            took,
            1.0,
        )
    )
    return rows


if __name__ == "__main__":
    from benchmarks.common import table

    print(table(run()))
